"""Small files that must never be seen half-written: atomic replace, private modes, a lock.

A reader (the running gateway) sees either the old file or the new one, never a torn write,
and a crash leaves one of the two on disk: write a temporary file beside the target, fsync it,
rename it over the target, fsync the directory.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import fileio
from appliance.errors import EnvironmentNotReadyError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """`appliance.fileio.atomic_write`, with a failure told as the box not being ready."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fileio.atomic_write(path, data, mode=mode)
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot write {path}: {error.strerror or error}",
            hint=f"check that {path.parent} exists and is writable by this user",
        ) from error


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` so two writers do not lose each other's change."""
    lock_path = path.with_name(f".{path.name}.lock")
    with fileio.exclusive_lock(
        lock_path, hint=f"check that {path.parent} is writable by this user"
    ):
        yield


@dataclass(frozen=True)
class FileSignature:
    """What changes when a file is replaced or rewritten; cheap to compare once a second."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileSignature | None:
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return cls(info.st_ino, info.st_size, info.st_mtime_ns)


def read_private_secret(path: Path, what: str) -> str:
    """Read a secret from a file that only its owner may read (like ssh does for its keys)."""
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EnvironmentNotReadyError(
                f"{what} file {path} is readable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):o})",
                hint=f"chmod 600 {path}",
            )
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot read {what} file {path}: {error.strerror or error}",
            hint="create it with the secret on one line, mode 600",
        ) from error
    if not secret:
        raise EnvironmentNotReadyError(f"{what} file {path} is empty", hint="put the secret in it")
    return secret
