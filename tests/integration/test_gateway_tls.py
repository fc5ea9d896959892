"""`appliance gateway` over HTTPS with the profile's certificate and key (TLS is optional)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.doubles import local_engine_double
from tests.support.gateway_process import create_key, running_gateway, write_profile
from tests.support.tls import self_signed


def test_the_gateway_serves_https_and_still_wants_a_key(tmp_path: Path) -> None:
    self_signed(tmp_path)
    with local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine:
        profile, port = write_profile(tmp_path, engine, tls=True)
        key = create_key(profile)
        base = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        with (
            running_gateway(profile, base, trust),
            httpx.Client(verify=trust, timeout=5) as client,
        ):
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
