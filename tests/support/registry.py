"""A private image registry on 127.0.0.1 (Debian's docker-registry), for real image pulls.

No public registry is reachable here, so pull paths are tested against this one: the tests push
a double's image into it, delete the local copy, and let the appliance pull it back. Docker
trusts registries on 127.0.0.0/8 over plain HTTP without any daemon setting.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.doubles import free_port

CONFIG = """\
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@contextmanager
def private_registry(root: Path) -> Iterator[str]:
    """Run a registry storing under `root`; yield its address (`127.0.0.1:PORT`)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        msg = (
            "docker-registry is not installed: ./install.sh --dev installs it (apt docker-registry)"
        )
        raise RuntimeError(msg)
    port = free_port()
    config = root / "config.yml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG.format(root=root / "data", port=port))
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode() if process.stderr else ""
                msg = f"docker-registry did not start: {stderr}"
                raise RuntimeError(msg)
            time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
