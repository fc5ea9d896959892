"""A private Docker engine for the test session: real dockerd, own socket, own data root.

The appliance drives containers through docker-py for real in the tests; this daemon is what it
drives. It never touches the host's default daemon (`/var/run/docker.sock`), so a developer's own
containers are safe, and it is stopped by PID at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker  # noqa: TID251 - the tests drive the real engine directly to set up and inspect

from appliance.fileio import exclusive_lock

# Every private dockerd on this machine sets up and tears down the same host-wide iptables
# chains and docker0 bridge. Two test sessions at once (a developer's and a helper's) once raced
# there: one daemon's shutdown removed the DOCKER chain while another's start was adding a rule
# to it ("iptables: No chain/target/match by that name"). Starts and stops take turns.
_NETWORK_SETUP_LOCK = Path("/tmp/appliance-dockerd-network.lock")
_LOCK_HINT = "the private dockerd needs a writable /tmp"


class DockerdUnavailableError(RuntimeError):
    """The private daemon could not be started; the message says why and how to fix it."""


@dataclass
class PrivateDockerd:
    """One dockerd process on a unix socket under `root`."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    # Containers keep running while the daemon restarts, as on a production box; False gives
    # the other kind of box, where the daemon's restart stops them and restart policies apply.
    live_restore: bool = True

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def start(self, timeout_s: float = 30.0) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            msg = (
                "dockerd is not installed: the integration tests need a real Docker engine.\n"
                "  → run ./install.sh --dev (it installs Debian's docker.io), "
                "or apt-get install -y docker.io"
            )
            raise DockerdUnavailableError(msg)
        if os.geteuid() != 0:
            msg = "dockerd must run as root for the integration tests; run the tests as root"
            raise DockerdUnavailableError(msg)
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            dockerd,
            "--host",
            self.base_url,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "docker.pid"),
        ]
        if self.live_restore:
            argv.append("--live-restore")
        with exclusive_lock(_NETWORK_SETUP_LOCK, hint=_LOCK_HINT):
            self._start(argv, timeout_s)

    def _start(self, argv: list[str], timeout_s: float) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"dockerd exited with {self.process.returncode}:\n{self._log_tail()}"
                raise DockerdUnavailableError(msg)
            if self.socket.exists():
                with contextlib.suppress(docker.errors.DockerException):
                    client = docker.DockerClient(base_url=self.base_url, timeout=5)
                    try:
                        if client.ping():
                            return
                    finally:
                        client.close()
            time.sleep(0.1)
        self._terminate()  # the lock is held here already
        msg = (
            f"dockerd did not answer on {self.socket} within {timeout_s:.0f} s:\n{self._log_tail()}"
        )
        raise DockerdUnavailableError(msg)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the daemon by PID: SIGTERM, then SIGKILL of its whole process group."""
        if self.process is None or self.process.poll() is not None:
            return
        with exclusive_lock(_NETWORK_SETUP_LOCK, hint=_LOCK_HINT):
            self._terminate(timeout_s)

    def _terminate(self, timeout_s: float = 20.0) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """Kill the daemon hard (containers survive with --live-restore); for restart tests."""
        containerd = self._containerd_pid()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        (self.root / "docker.pid").unlink(missing_ok=True)
        # dockerd's own containerd dies with it, but stays a zombie until init reaps it (about
        # 1.5 s here). dockerd counts a zombie as alive: started before the reaping, it adopts
        # the dead containerd and times out waiting for its socket. So wait until it is gone.
        deadline = time.monotonic() + 30
        while containerd is not None and time.monotonic() < deadline:
            try:
                os.kill(containerd, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)

    def _containerd_pid(self) -> int | None:
        try:
            return int((self.root / "exec" / "containerd" / "containerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.base_url, timeout=60)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no dockerd log)"
        return "\n".join(text.splitlines()[-lines:])
