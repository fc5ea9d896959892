"""Small files written so that a crash or a power cut never leaves a half-written one.

Fallback mode, API key hashes, weights manifests and revision refs are all read back as the
truth after a restart, so each is written to a unique temporary name beside it, synced, and
renamed over the old one (then the directory is synced, so the rename itself survives).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from appliance.errors import BadInputError, EnvironmentNotReadyError

# A write that fails for these is the box's state, not the name the operator gave.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably; the file has `mode` from birth.

    Raises `OSError`; the caller says what the file was for.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        try:
            os.fchmod(descriptor, mode)  # mkstemp makes 0600; the caller may want wider
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        Path(temporary).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temporary).unlink()
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


@contextlib.contextmanager
def exclusive_lock(
    path: Path, *, wait: bool = True, hint: str, mode: int = 0o600
) -> Iterator[int | None]:
    """Hold an exclusive `flock` on `path` for the `with` block; yields its descriptor.

    With `wait=False` it yields None at once when another process holds the lock, so the caller
    can say who. The lock file is never deleted (deleting races with the next locker) and the
    kernel drops the lock when the holder exits, even on kill -9. A lock file that cannot be
    opened raises `EnvironmentNotReadyError` with the caller's `hint`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot open the lock file {path}: {error.strerror or error}", hint=hint
        ) from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield descriptor
    finally:
        os.close(descriptor)  # closing releases the lock


def write_output(output: Path, text: str) -> None:
    """Write a file the operator named (`-o FILE`); an OS error becomes one line naming it.

    A full, read-only or failing disk is the environment (exit 3); anything else (a directory,
    a missing parent, no rights) is the name given (exit 2).
    """
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in _DISK_ERRNOS:
            raise EnvironmentNotReadyError(
                f"cannot write {output}: {reason}", hint="free space or pick another disk"
            ) from None
        raise BadInputError(
            f"cannot write {output}: {reason}",
            hint="name a file in a directory that exists and that you may write",
        ) from None
