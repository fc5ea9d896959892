"""`appliance gateway` as its own process on loopback, for tests that need the real thing."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance.errors import ExitCode
from tests.doubles import free_port, local_engine_double
from tests.support.tls import self_signed

APPLIANCE = str(Path(sys.executable).parent / "appliance")

_PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: gateway-test
spec:
  model:
    repo: acme/tiny-chat
    quantization: bf16
    served_model_name: tiny
  embeddings:
    enabled: false
  ports:
    vllm: {vllm}
    tei: {tei}
    gateway: {gateway}
  gateway:
    host: 127.0.0.1
{tls}  storage:
    models_dir: {root}/models
    state_dir: {root}/state
"""


def appliance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPLIANCE, *args], capture_output=True, text=True, check=False, timeout=120
    )


def write_profile(root: Path, engine_url: str, *, tls: bool = False) -> tuple[Path, int]:
    """A profile whose chat engine is the double at `engine_url`; returns it, the gateway port."""
    gateway_port = free_port()
    tls_block = (
        f"    tls:\n      cert_file: {root}/cert.pem\n      key_file: {root}/key.pem\n"
        if tls
        else ""
    )
    path = root / "gateway-test.yaml"
    path.write_text(
        _PROFILE.format(
            vllm=httpx.URL(engine_url).port,
            tei=free_port(),
            gateway=gateway_port,
            root=root,
            tls=tls_block,
        )
    )
    return path, gateway_port


def create_key(profile: Path) -> str:
    created = appliance("keys", "create", "test", "--json", "--profile", str(profile))
    assert created.returncode == ExitCode.OK, created.stderr
    key: str = json.loads(created.stdout)["key"]
    return key


@contextmanager
def running_gateway(
    profile: Path, base_url: str, verify: ssl.SSLContext | bool = True, *, log: Path | None = None
) -> Iterator[None]:
    """Run `appliance gateway --profile`, wait for `base_url/health`, then stop it (SIGTERM).

    With `log`, its stderr (the gateway's log) is written there instead of kept in a pipe.
    """
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("w")) if log is not None else subprocess.PIPE
        gateway = subprocess.Popen(
            [APPLIANCE, "gateway", "--profile", str(profile)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30  # a bound against hanging, not a timing assertion
        while True:
            try:
                httpx.get(f"{base_url}/health", timeout=1, verify=verify)
                break
            except httpx.TransportError:
                assert gateway.poll() is None, gateway.stderr.read() if gateway.stderr else ""
                assert time.monotonic() < deadline, "the gateway did not come up"
                time.sleep(0.1)
        yield
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


@dataclass(frozen=True)
class TlsGateway:
    """A running gateway over HTTPS: its profile, base URL, a key it accepts, and a client trust
    that holds only its self-signed certificate."""

    profile: Path
    base_url: str
    key: str
    trust: ssl.SSLContext


@contextmanager
def tls_gateway(root: Path) -> Iterator[TlsGateway]:
    """`appliance gateway` serving HTTPS with a self-signed certificate (written into `root`)
    in front of a vLLM double serving `tiny`."""
    self_signed(root)
    with local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine:
        profile, port = write_profile(root, engine, tls=True)
        key = create_key(profile)
        base = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(root / "cert.pem"))
        with running_gateway(profile, base, trust):
            yield TlsGateway(profile, base, key, trust)
