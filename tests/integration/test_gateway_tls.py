"""`appliance gateway` over HTTPS with the profile's certificate and key (TLS is optional)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.errors import ExitCode
from tests.doubles import free_port, local_engine_double

APPLIANCE = str(Path(sys.executable).parent / "appliance")

PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: tls-test
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
    tls:
      cert_file: {root}/cert.pem
      key_file: {root}/key.pem
  storage:
    models_dir: {root}/models
    state_dir: {root}/state
"""


def _self_signed(root: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (Debian package openssl)")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (root / "key.pem").chmod(0o600)


def test_the_gateway_serves_https_and_still_wants_a_key(tmp_path: Path) -> None:
    _self_signed(tmp_path)
    with local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine:
        port = free_port()
        profile = tmp_path / "tls.yaml"
        profile.write_text(
            PROFILE.format(
                vllm=httpx.URL(engine).port, tei=free_port(), gateway=port, root=tmp_path
            )
        )
        created = subprocess.run(
            [APPLIANCE, "keys", "create", "ci", "--json", "--profile", str(profile)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert created.returncode == ExitCode.OK, created.stderr
        key = json.loads(created.stdout)["key"]
        gateway = subprocess.Popen(
            [APPLIANCE, "gateway", "--profile", str(profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        client = httpx.Client(verify=trust, timeout=5)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get(f"{base}/health")
                    break
                except httpx.TransportError:
                    assert gateway.poll() is None, "the gateway exited"
                    assert time.monotonic() < deadline, "the gateway did not come up"
                    time.sleep(0.1)
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            assert client.post(f"{base}/v1/chat/completions", json=body).status_code == 401
            reply = client.post(
                f"{base}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
            )
            assert reply.status_code == 200
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # no plain HTTP
        finally:
            client.close()
            gateway.terminate()
            gateway.wait(timeout=30)
