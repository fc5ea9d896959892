"""API keys: created once, shown once, stored only as salted hashes in a 0600 file.

A key looks like `sk-appl-<id>-<secret>`: the 12-hex-digit id finds the record without trying
every hash, and the record holds `sha256(salt || key)` with a random per-key salt. The key is
random (256 bits), so a fast hash is enough; a slow KDF would only add latency to every request.
Verification compares digests with `hmac.compare_digest`, so timing says nothing about how much
of a guessed key was right.

Scopes keep the admin key separate: an `api` key calls `/v1/*`; an `admin` key calls `/admin/*`
and nothing else.

The file is rewritten atomically under a lock by `create_key` / `revoke_key` (the CLI) while the
gateway may be running; the gateway looks at the file's signature (inode, size, mtime) before
each key check and swaps in a new `KeyRing` when it changed, so a revoked key is refused on the
very next request.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.gateway.files import atomic_write, locked

KEY_PREFIX = "sk-appl-"
_ID_HEX = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
FILE_VERSION = 1


class Scope(enum.StrEnum):
    API = "api"
    ADMIN = "admin"


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a stored key: never the key, never its hash."""

    name: str
    key_id: str
    scope: Scope
    created_at: str
    rate_limit_per_minute: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.key_id,
            "scope": self.scope.value,
            "created_at": self.created_at,
            "rate_limit_per_minute": self.rate_limit_per_minute,
        }


@dataclass(frozen=True)
class CreatedKey:
    """A key just made. `key` exists only here: it is not stored and cannot be shown again."""

    info: KeyInfo
    key: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {**self.info.to_json(), "key": self.key}


@dataclass(frozen=True)
class _Record:
    info: KeyInfo
    salt: bytes
    digest: bytes

    def to_json(self) -> dict[str, Any]:
        return {**self.info.to_json(), "salt": self.salt.hex(), "sha256": self.digest.hex()}


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def _key_id(key: str) -> str | None:
    """The id part of a well-formed key, else None (cheap: no hashing for garbage)."""
    if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + _ID_HEX + 2:
        return None
    key_id = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _ID_HEX]
    if key[len(KEY_PREFIX) + _ID_HEX] != "-":
        return None
    return key_id


@dataclass(frozen=True)
class KeyRing:
    """An immutable view of the keys file, swapped whole when the file changes."""

    records: Mapping[str, _Record] = field(default_factory=dict)

    def verify(self, key: str, scope: Scope) -> KeyInfo | None:
        """The key's info if `key` is a stored key of `scope`, else None."""
        key_id = _key_id(key)
        record = self.records.get(key_id) if key_id else None
        if record is None:
            # Same work as a hit, so a miss is not faster than a wrong secret for a real id.
            hmac.compare_digest(_digest(b"\0" * 16, key), b"\0" * 32)
            return None
        if not hmac.compare_digest(_digest(record.salt, key), record.digest):
            return None
        return record.info if record.info.scope is scope else None

    def infos(self) -> list[KeyInfo]:
        return sorted((r.info for r in self.records.values()), key=lambda i: i.name)

    def __len__(self) -> int:
        return len(self.records)


def _rate_limit(item: Mapping[str, Any]) -> int | None:
    """A record's requests-per-minute limit: a positive whole number, or absent (no limit)."""
    value = item.get("rate_limit_per_minute")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        name = item.get("name")
        msg = f"rate_limit_per_minute of key {name!r} is {value!r}, not a whole number above 0"
        raise ValueError(msg)
    return value


def load_keyring(path: Path) -> KeyRing:
    """Read the keys file; a missing file is an empty ring (auth then refuses everyone)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return KeyRing()
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot read keys file {path}: {error.strerror or error}",
            hint="run the gateway as the user that owns the keys file",
        ) from error
    try:
        document = json.loads(raw)
        records: dict[str, _Record] = {}
        for item in document["keys"]:
            info = KeyInfo(
                name=str(item["name"]),
                key_id=str(item["id"]),
                scope=Scope(item.get("scope", "api")),
                created_at=str(item["created_at"]),
                rate_limit_per_minute=_rate_limit(item),
            )
            records[info.key_id] = _Record(
                info, bytes.fromhex(item["salt"]), bytes.fromhex(item["sha256"])
            )
    except (ValueError, KeyError, TypeError) as error:
        raise BadInputError(
            f"keys file {path} is damaged ({type(error).__name__}: {error})",
            hint="restore it from a backup, or move it away and create the keys again",
        ) from error
    return KeyRing(records)


def _save(path: Path, ring: KeyRing) -> None:
    document = {
        "version": FILE_VERSION,
        "keys": [ring.records[i.key_id].to_json() for i in ring.infos()],
    }
    atomic_write(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)


def create_key(
    keys_file: Path,
    name: str,
    *,
    admin: bool = False,
    rate_limit_per_minute: int | None = None,
) -> CreatedKey:
    """Make a new key called `name`, store its hash, and return it (the only time it is seen).

    Raises `BadInputError` for a bad or already used name, or a non-positive rate limit.
    """
    if not _NAME.match(name):
        raise BadInputError(
            f"bad key name {name!r}",
            hint="use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
        )
    if rate_limit_per_minute is not None and rate_limit_per_minute <= 0:
        raise BadInputError(
            f"rate limit must be a positive number of requests per minute, not "
            f"{rate_limit_per_minute}",
            hint="leave it out for no limit",
        )
    with locked(keys_file):
        ring = load_keyring(keys_file)
        if any(info.name == name for info in ring.infos()):
            raise BadInputError(
                f"a key named {name!r} already exists",
                hint=f"revoke it first (`appliance keys revoke {name}`) or choose another name",
            )
        key_id = secrets.token_hex(_ID_HEX // 2)
        while key_id in ring.records:  # pragma: no cover - 48 random bits
            key_id = secrets.token_hex(_ID_HEX // 2)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        salt = secrets.token_bytes(16)
        info = KeyInfo(
            name=name,
            key_id=key_id,
            scope=Scope.ADMIN if admin else Scope.API,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            rate_limit_per_minute=rate_limit_per_minute,
        )
        records = dict(ring.records)
        records[key_id] = _Record(info, salt, _digest(salt, key))
        _save(keys_file, KeyRing(records))
    return CreatedKey(info, key)


def list_keys(keys_file: Path) -> list[KeyInfo]:
    """Every stored key's name, id, scope, creation time and limit, sorted by name."""
    return load_keyring(keys_file).infos()


def revoke_key(keys_file: Path, name: str) -> KeyInfo:
    """Delete the key called `name`; a running gateway refuses it from its next request on.

    Raises `BadInputError` when there is no such key.
    """
    with locked(keys_file):
        ring = load_keyring(keys_file)
        found = [info for info in ring.infos() if info.name == name]
        if not found:
            names = ", ".join(info.name for info in ring.infos()) or "none"
            raise BadInputError(f"no key named {name!r}", hint=f"existing keys: {names}")
        records = {k: v for k, v in ring.records.items() if k != found[0].key_id}
        _save(keys_file, KeyRing(records))
    return found[0]


@dataclass(frozen=True)
class StaticAdminKey:
    """The admin key named by the profile (env var or 0600 file), held only as a digest."""

    digest: bytes = field(repr=False)

    @classmethod
    def of(cls, key: str) -> StaticAdminKey:
        return cls(hashlib.sha256(key.encode()).digest())

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self.digest)
