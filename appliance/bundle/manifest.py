"""The bundle manifest: pure data and checks, no IO.

A bundle is a tar stream whose members are written first and whose manifest (JSON) is written last,
so every member is hashed while it streams in. The manifest carries one digest over all member
entries (`entries_sha256`): `create` prints it, `load` prints it again and can compare it with
`--expect-sha256`, so a changed manifest is caught even when its entries were rewritten to match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from appliance.errors import BadInputError, RefusedError

MANIFEST_NAME = "MANIFEST.json"
FORMAT_VERSION = 1
Kind = Literal["profile", "image", "weights", "wheel"]
KINDS: tuple[str, ...] = ("profile", "image", "weights", "wheel")


@dataclass(frozen=True)
class Member:
    path: str
    kind: Kind
    size: int
    sha256: str
    version: str = ""  # image tag/digest, model repo@revision, wheel version


@dataclass(frozen=True)
class Target:
    driver: str  # "nvidia" or "cpu"
    compute_capability: str  # "8.9", "" for CPU
    python: str  # "3.12"
    platform: str  # "manylinux_2_28_x86_64"


@dataclass(frozen=True)
class Manifest:
    appliance_version: str
    target: Target
    members: tuple[Member, ...] = field(default_factory=tuple)
    format_version: int = FORMAT_VERSION

    @property
    def entries_sha256(self) -> str:
        return entries_digest(self.members, self.target, self.appliance_version)

    def to_json(self) -> str:
        data = asdict(self)
        data["entries_sha256"] = self.entries_sha256
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def entries_digest(members: tuple[Member, ...], target: Target, version: str) -> str:
    """One SHA-256 over the canonical JSON of every entry, the target and the version."""
    canon = json.dumps(
        {"v": version, "t": asdict(target), "m": [asdict(m) for m in members]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def parse_manifest(text: str) -> Manifest:
    """Parse and check a manifest; any problem is one BadInputError line."""
    try:
        data = json.loads(text)
        target = Target(**data["target"])
        members = tuple(Member(**m) for m in data["members"])
        manifest = Manifest(
            appliance_version=str(data["appliance_version"]),
            target=target,
            members=members,
            format_version=int(data["format_version"]),
        )
        recorded = str(data["entries_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"bundle manifest is not valid: {exc}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise BadInputError(
            f"bundle format {manifest.format_version} is not supported "
            f"(this appliance reads {FORMAT_VERSION})"
        )
    for m in members:
        if m.kind not in KINDS:
            raise BadInputError(f"bundle member {m.path}: unknown kind {m.kind!r}")
        if m.path.startswith("/") or ".." in m.path.split("/") or m.path == MANIFEST_NAME:
            raise BadInputError(f"bundle member {m.path}: unsafe path")
    if recorded != manifest.entries_sha256:
        raise BadInputError(
            "bundle manifest was changed: its entries do not match its recorded digest"
        )
    return manifest


def check_expected(manifest: Manifest, expect_sha256: str | None) -> None:
    if expect_sha256 is not None and expect_sha256.lower() != manifest.entries_sha256:
        raise RefusedError(
            f"bundle digest {manifest.entries_sha256} differs from the expected {expect_sha256}",
            hint="compare with the digest `appliance bundle create` printed",
        )


def check_member(member: Member, size: int, sha256: str) -> None:
    """Refuse a member whose bytes differ from its manifest entry, naming it."""
    if size != member.size:
        raise RefusedError(
            f"bundle member {member.path} is truncated or padded: "
            f"{size} bytes, manifest says {member.size}"
        )
    if sha256 != member.sha256:
        raise RefusedError(
            f"bundle member {member.path} was altered: SHA-256 {sha256} != manifest {member.sha256}"
        )


def check_target(bundle: Target, local: Target) -> None:
    """Refuse a bundle made for another driver or compute capability, naming both."""
    if (bundle.driver, bundle.compute_capability) != (local.driver, local.compute_capability):
        raise RefusedError(
            f"bundle was made for {bundle.driver} "
            f"compute capability {bundle.compute_capability or '-'}, "
            f"this box is {local.driver} compute capability {local.compute_capability or '-'}",
            hint="create the bundle with --simulate for this box",
        )
