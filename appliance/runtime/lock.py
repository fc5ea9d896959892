"""One apply at a time per Docker engine: an exclusive `flock` on a file named after the engine.

The lock is per engine, not per profile or state directory: two profiles with their own state
directories on one engine share the GPU, the container names' namespace and the set-aside
containers, so they must never apply at once.

Where the file lives: `/run/llm-appliance/` (root, the normal case: `apply` runs as root to
reach the Docker socket and write systemd units; /run is cleared at boot, which suits a lock).
Where that cannot be written (a user in the docker group), the parent of the profile's models
directory, which every profile on a box shares in practice. The name carries the endpoint
(`DOCKER_HOST`, else the default socket), a unix socket resolved to its real path, so
`/var/run/docker.sock` and `/run/docker.sock` are one engine.

The kernel drops the lock when the holder exits, however it exits, so a crashed apply never
leaves the box locked. The file keeps who holds it (pid, host, since) so the second apply can say
so; the file itself is never deleted (deleting a lock file races with the next locker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from appliance import fileio
from appliance.errors import RefusedError

__all__ = [
    "DEFAULT_DOCKER_ENDPOINT",
    "LOCK_DIR",
    "LockHolder",
    "apply_lock",
    "engine_endpoint",
    "engine_lock_path",
    "shared_lock_dir_usable",
]

LOCK_DIR: Final = Path("/run/llm-appliance")
# docker-py's default when DOCKER_HOST is unset (docker.constants.DEFAULT_UNIX_SOCKET).
DEFAULT_DOCKER_ENDPOINT: Final = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    since: str  # ISO 8601, UTC
    what: str

    def render(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}, since {self.since})"


def engine_endpoint(base_url: str | None, environ: dict[str, str] | None = None) -> str:
    """The Docker engine a client with `base_url` talks to, one spelling per engine."""
    env = os.environ if environ is None else environ
    url = base_url or env.get("DOCKER_HOST") or DEFAULT_DOCKER_ENDPOINT
    for prefix in ("unix://", "http+unix://"):
        if url.startswith(prefix):
            return "unix://" + os.path.realpath(url.removeprefix(prefix))
    if url.startswith("/"):
        return "unix://" + os.path.realpath(url)
    return url.rstrip("/")


def shared_lock_dir_usable(directory: Path = LOCK_DIR) -> bool:
    """True when this user can keep lock files in `directory` (creating it if need be)."""
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def engine_lock_path(endpoint: str, fallback_dir: Path, lock_dir: Path = LOCK_DIR) -> Path:
    """The lock file of the engine at `endpoint`: in `lock_dir`, else in `fallback_dir`."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", endpoint).strip("-")[-60:]
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:12]
    directory = lock_dir if shared_lock_dir_usable(lock_dir) else fallback_dir
    return directory / f"apply-{slug}-{digest}.lock"


def _read_holder(path: Path) -> LockHolder | None:
    try:
        with path.open("rb") as lock_file:
            data = json.loads(lock_file.read(4096).decode() or "null")
        return LockHolder(
            pid=int(data["pid"]), host=str(data["host"]), since=str(data["since"]),
            what=str(data.get("what", "apply")),
        )  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def apply_lock(
    path: Path, what: str = "appliance apply", *, endpoint: str | None = None
) -> Iterator[LockHolder]:
    """Hold the apply lock for the `with` block, or refuse at once saying who holds it.

    `endpoint` (the engine the lock is for) is only named in the refusal."""
    with fileio.exclusive_lock(
        path,
        wait=False,
        mode=0o644,
        hint="run as root, or set spec.storage.state_dir to a directory you can write",
    ) as handle:
        if handle is None:
            holder = _read_holder(path)
            who = holder.render() if holder else "another process"
            where = f"on the Docker engine at {endpoint}" if endpoint else "on this box"
            raise RefusedError(
                f"another apply is running {where}: {who}",
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
