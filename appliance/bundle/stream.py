"""Bundle tar IO: write members while hashing them, then the manifest last; read back by
stream-verifying every member into a staging dir before anything uses it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from appliance.bundle.manifest import (
    MANIFEST_NAME,
    Kind,
    Manifest,
    Member,
    Target,
    check_member,
    parse_manifest,
)
from appliance.errors import BadInputError, RefusedError

CHUNK = 1 << 20
Progress = Callable[[int], None]


class _Hashing(io.RawIOBase):
    """A read-through wrapper that hashes and counts what tarfile copies."""

    def __init__(self, src: BinaryIO, progress: Progress | None) -> None:
        self._src, self._progress = src, progress
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self.sha.update(data)
        self.count += len(data)
        if self._progress is not None:
            self._progress(len(data))
        return data


class BundleWriter:
    """Stream files into the bundle without a second copy on disk."""

    def __init__(self, out: BinaryIO, progress: Progress | None = None) -> None:
        self._tar = tarfile.open(fileobj=out, mode="w|")  # noqa: SIM115 - closed in finish()
        self._progress = progress
        self.members: list[Member] = []

    def add_file(self, path: str, kind: Kind, src: Path, version: str = "") -> Member:
        size = src.stat().st_size
        info = tarfile.TarInfo(path)
        info.size, info.mode = size, 0o644
        with src.open("rb") as f:
            h = _Hashing(f, self._progress)
            self._tar.addfile(info, h)
        if h.count != size:
            raise BadInputError(f"{src} changed size while it was being bundled")
        member = Member(path=path, kind=kind, size=size, sha256=h.sha.hexdigest(), version=version)
        self.members.append(member)
        return member

    def finish(self, appliance_version: str, target: Target) -> Manifest:
        manifest = Manifest(appliance_version, target, tuple(self.members))
        data = manifest.to_json().encode()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode = len(data), 0o644
        self._tar.addfile(info, io.BytesIO(data))
        self._tar.close()
        return manifest


def read_manifest(bundle: Path) -> Manifest:
    """The manifest (the last member) without extracting anything else."""
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            names = tar.getnames()
            if not names or names[-1] != MANIFEST_NAME:
                raise RefusedError(f"{bundle}: no manifest at the end (truncated bundle?)")
            f = tar.extractfile(MANIFEST_NAME)
            assert f is not None
            return parse_manifest(f.read().decode())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RefusedError(f"{bundle}: not a readable bundle ({exc})") from None


def verify_into(bundle: Path, staging: Path, progress: Progress | None = None) -> Manifest:
    """Stream-verify every member into `staging`; a member verified before (recorded in
    staging/.verified) is skipped. Nothing outside `staging` is touched."""
    manifest = read_manifest(bundle)
    by_path = {m.path: m for m in manifest.members}
    staging.mkdir(parents=True, exist_ok=True)
    record = staging / ".verified"
    done: set[str] = set(json.loads(record.read_text())) if record.exists() else set()
    seen: set[str] = set()
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for info in tar:
                if info.name == MANIFEST_NAME:
                    continue
                member = by_path.get(info.name)
                if member is None or not info.isfile():
                    raise RefusedError(f"bundle member {info.name} is not in the manifest")
                seen.add(member.path)
                target = staging / member.path
                if member.path in done and target.is_file():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                sha, count = hashlib.sha256(), 0
                src = tar.extractfile(info)
                assert src is not None
                with part.open("wb") as out:
                    while chunk := src.read(CHUNK):
                        sha.update(chunk)
                        count += len(chunk)
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                try:
                    check_member(member, count, sha.hexdigest())
                except RefusedError:
                    part.unlink()
                    raise
                part.replace(target)
                done.add(member.path)
                record.write_text(json.dumps(sorted(done)))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RefusedError(f"{bundle}: truncated or unreadable ({exc})") from None
    missing = sorted(set(by_path) - seen)
    if missing:
        raise RefusedError(f"bundle member {missing[0]} is missing from the bundle")
    return manifest
