"""One apply at a time per box: an exclusive `flock` on a file in the state directory.

The kernel drops the lock when the holder exits, however it exits, so a crashed apply never
leaves the box locked. The file keeps who holds it (pid, host, since) so the second apply can say
so; the file itself is never deleted (deleting a lock file races with the next locker).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import EnvironmentNotReadyError, RefusedError

__all__ = ["LockHolder", "apply_lock", "lock_path"]


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    since: str  # ISO 8601, UTC
    what: str

    def render(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}, since {self.since})"


def lock_path(state_dir: Path) -> Path:
    return state_dir / "apply.lock"


def _read_holder(handle: int) -> LockHolder | None:
    try:
        os.lseek(handle, 0, os.SEEK_SET)
        data = json.loads(os.read(handle, 4096).decode() or "null")
        return LockHolder(
            pid=int(data["pid"]), host=str(data["host"]), since=str(data["since"]),
            what=str(data.get("what", "apply")),
        )  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def apply_lock(path: Path, what: str = "appliance apply") -> Iterator[LockHolder]:
    """Hold the box's apply lock for the `with` block, or refuse at once saying who holds it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot open the lock file {path}: {error.strerror}",
            hint="run as root, or set spec.storage.state_dir to a directory you can write",
        ) from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            who = holder.render() if holder else "another process"
            raise RefusedError(
                f"another apply is running on this box: {who}",
                hint="wait for it to finish; the lock is released when that process exits "
                f"(lock file {path})",
            ) from None
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            what=what,
        )
        os.ftruncate(handle, 0)
        os.lseek(handle, 0, os.SEEK_SET)
        os.write(handle, json.dumps(holder.__dict__).encode())
        try:
            yield holder
        finally:
            os.ftruncate(handle, 0)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
