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


def test_apply_waits_for_a_tls_gateway_to_take_up_a_model_update(tmp_path: Path) -> None:
    """The handover apply makes in a blue/green update reads the gateway's /health over HTTPS,
    trusting the gateway's own (here self-signed) certificate, and sees the rollout taken up."""
    from appliance.profile import load_profile
    from appliance.runtime.apply import ApplyEvent, GatewayHandover

    self_signed(tmp_path)
    with (
        local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine,
        local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as new,
    ):
        path, port = write_profile(tmp_path, engine, tls=True)
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        with running_gateway(path, f"https://127.0.0.1:{port}", trust):
            handover = GatewayHandover.of(load_profile(path))
            report = handover.status()
            assert report is not None
            assert report["rollout"]["chat_upstream"] == f"{engine}/v1"
            events: list[ApplyEvent] = []
            assert handover.tell(f"{new}/v1", updating=False, progress=events.append)
            taken_up = handover.wait(
                lambda r: r.get("chat_upstream") == f"{new}/v1" and not r.get("retired_in_flight"),
                None,
                left="retired_in_flight",
                progress=events.append,
            )
            assert taken_up, events
