"""Test doubles of the GPU engines (vLLM, SGLang, TEI), as images for the private Docker engine
and as local processes for HTTP tests that need no container. See `engine_double.py` for what
they do.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker  # noqa: TID251 - test setup builds images on the private engine directly
import httpx
import prometheus_client

from tests.support.images import build_image

DOUBLE = Path(__file__).with_name("engine_double.py")

# Fault images: the same double with a failure baked in, for health-wait and rollback tests.
VLLM_FAULTS: Mapping[str, Mapping[str, str]] = {
    "ok": {},
    "exit-on-start": {"DOUBLE_FAIL": "exit-on-start"},
    "never-healthy": {"DOUBLE_FAIL": "never-healthy"},
    "die-after-healthy": {"DOUBLE_FAIL": "die-after-healthy"},
    "slow-start": {"DOUBLE_STARTUP_DELAY_S": "3"},
    # `appliance tune`'s tests: speed that varies with --max-num-seqs (see engine_double.py).
    "batching": {
        "DOUBLE_TOKEN_DELAY_S": "0.02",
        "DOUBLE_BATCH_STEP_S": "0.05",
        "DOUBLE_REFUSE_SEQS_ABOVE": "16",
    },
}


@dataclass(frozen=True)
class EngineDoubleImages:
    vllm: Mapping[str, str]  # fault name -> image tag
    tei: str
    sglang: str  # SGLang's double: no entrypoint; `python3 -m sglang.launch_server ...` runs it


def build_engine_doubles(
    client: docker.DockerClient, base_image: str, workdir: Path
) -> EngineDoubleImages:
    """Build the vLLM and TEI double images on `client` (offline, from the Python base)."""
    context = workdir / "engine-double"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy(DOUBLE, context / "engine_double.py")
    shutil.copytree(
        Path(prometheus_client.__file__).parent,
        context / "lib" / "prometheus_client",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    common = (
        f"FROM {base_image}\n"
        "COPY lib /srv/lib\n"
        "COPY engine_double.py /srv/engine_double.py\n"
        "ENV PYTHONPATH=/srv/lib PYTHONUNBUFFERED=1\n"
    )
    vllm: dict[str, str] = {}
    for fault, env in VLLM_FAULTS.items():
        lines = "".join(f"ENV {key}={value}\n" for key, value in env.items())
        (context / "Dockerfile").write_text(
            common + lines + 'ENTRYPOINT ["/usr/bin/python3", "/srv/engine_double.py", '
            '"--role", "vllm"]\n'
        )
        vllm[fault] = build_image(client, f"appliance-test/vllm-double:{fault}", context)
    (context / "Dockerfile").write_text(
        common + 'ENTRYPOINT ["/usr/bin/python3", "/srv/engine_double.py", "--role", "tei"]\n'
    )
    tei = build_image(client, "appliance-test/tei-double:ok", context)
    # SGLang's image starts no server by itself: the appliance's command is the whole
    # `python3 -m sglang.launch_server ...`, so the double provides that module.
    shim = context / "lib" / "sglang"
    shim.mkdir(exist_ok=True)
    (shim / "__init__.py").write_text('"""TEST DOUBLE: SGLang\'s package name only."""\n')
    (shim / "launch_server.py").write_text(_SGLANG_SHIM)
    (context / "Dockerfile").write_text(common)
    sglang = build_image(client, "appliance-test/sglang-double:ok", context)
    return EngineDoubleImages(vllm=vllm, tei=tei, sglang=sglang)


_SGLANG_SHIM = """\
\"\"\"TEST DOUBLE: `python3 -m sglang.launch_server ARGS` runs the engine double as SGLang.\"\"\"
import runpy
import sys

sys.argv = ["/srv/engine_double.py", "--role", "sglang", *sys.argv[1:]]
runpy.run_path("/srv/engine_double.py", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL when it has not exited within `timeout_s`; reaped either way, so
    a double or a front that hangs on shutdown never outlives the test or bench that ran it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def local_engine_double(
    role: str, *args: str, env: Mapping[str, str] | None = None, ready_timeout_s: float = 15.0
) -> Iterator[str]:
    """Run a double as a local process on a free 127.0.0.1 port; yield its base URL."""
    port = free_port()
    argv = [sys.executable, str(DOUBLE), "--role", role, "--host", "127.0.0.1"]
    argv += ["--port", str(port), *args]
    process = subprocess.Popen(
        argv, env={**dict(env or {}), "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                httpx.get(f"{url}/metrics", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    msg = f"{role} double did not start (exit {process.poll()})"
                    raise RuntimeError(msg) from None
                time.sleep(0.05)
        yield url
    finally:
        stop_process(process)


@contextmanager
def threaded_engine_double(*args: str, role: str = "vllm") -> Iterator[Any]:
    """Run a double inside this process on a free 127.0.0.1 port, serving from a thread; yield
    its `EngineServer` (base URL in `.url`), so a test can read the double's own counters.
    Sleep-mode routes need VLLM_SERVER_DEV_MODE=1 in the environment when it starts."""
    from tests.doubles import engine_double

    _, namespace = engine_double.parse_args(["--role", role, *args])
    server = engine_double.EngineServer(("127.0.0.1", 0), role, namespace)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
