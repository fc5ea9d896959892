"""`appliance gateway` over HTTPS with the profile's certificate and key (TLS is optional)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.clock import ManualClock
from appliance.errors import ExitCode
from appliance.monitor.samplers import GpuReadings
from tests.doubles import local_engine_double
from tests.support.gateway_process import (
    appliance,
    running_gateway,
    tls_gateway,
    write_profile,
)
from tests.support.tls import self_signed


def test_the_gateway_serves_https_and_still_wants_a_key(tmp_path: Path) -> None:
    with tls_gateway(tmp_path) as gateway, httpx.Client(verify=gateway.trust, timeout=5) as client:
        base = gateway.base_url
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post(f"{base}/v1/chat/completions", json=body).status_code == 401
        reply = client.post(
            f"{base}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {gateway.key}"},
        )
        assert reply.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base.replace('https:', 'http:')}/health", timeout=2)  # no plain HTTP


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


# ------------------------------------------- the commands that watch or load their own gateway


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A profile whose gateway serves HTTPS with a self-signed certificate, running, after one
    chat request through it; the profile and a key it accepts."""
    with tls_gateway(tmp_path_factory.mktemp("tls")) as gateway:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {gateway.key}"},
            verify=gateway.trust,
            timeout=5,
        )
        assert answer.status_code == 200, answer.text
        yield gateway.profile, gateway.key


def _gateway_up_with_figures(gateway: dict[str, Any]) -> None:
    assert gateway["url"].startswith("https://127.0.0.1:"), gateway
    assert gateway["healthy"] is True, gateway["health_error"]
    assert gateway["health_error"] is None, gateway
    assert gateway["metrics_error"] is None, gateway
    assert gateway["requests_per_s"] is not None, gateway  # its counters were read


def test_status_shows_a_tls_gateway_up_with_its_figures(tls_stack: tuple[Path, str]) -> None:
    """`status --json` asks the gateway over HTTPS trusting its own self-signed certificate."""
    profile, _ = tls_stack
    done = appliance("status", str(profile), "--json")
    assert done.returncode == ExitCode.OK, done.stderr
    assert "Traceback" not in done.stderr
    services = {service["name"]: service for service in json.loads(done.stdout)["services"]}
    _gateway_up_with_figures(services["gateway"])
    assert services["vllm"]["healthy"] is True  # plain HTTP beside it still works


def test_the_monitor_samples_a_tls_gateway(tls_stack: tuple[Path, str]) -> None:
    """The samplers the TUI's Monitor and `status` share (`profile_samplers`), ticked in this
    process: the gateway is up over HTTPS."""
    from appliance.monitor.monitor import Monitor
    from appliance.operations.status import profile_samplers
    from appliance.profile import load_profile

    profile = load_profile(tls_stack[0])

    clock = ManualClock(0.0, 1_800_000_000.0)

    async def two_ticks() -> Any:
        samplers = profile_samplers(profile, gpus=NoGpus())
        async with Monitor(samplers, clock=clock) as monitor:
            await monitor.tick()
            clock.advance(1.0)  # rates need two scrapes some time apart
            return await monitor.tick()

    snapshot = asyncio.run(two_ticks())
    gateway = snapshot.service("gateway")
    assert gateway is not None
    _gateway_up_with_figures(gateway.model_dump())


class NoGpus:
    """A box without GPUs, so the test does not depend on this machine's driver."""

    def read(self) -> GpuReadings:
        return GpuReadings()

    def close(self) -> None:
        pass
