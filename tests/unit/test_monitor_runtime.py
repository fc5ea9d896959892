"""The Docker runtime source both faces' monitors use: an engine that does not answer is
"unknown this tick", never an error that stops the monitor, and it is asked again next tick."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.clock import ManualClock
from appliance.errors import EnvironmentNotReadyError
from appliance.monitor.monitor import Monitor
from appliance.monitor.samplers import Endpoint, SamplerSet
from appliance.monitor.simulated import StoppedServiceSampler
from appliance.operations.status import DockerRuntime


def test_no_engine_is_unknown_each_tick_and_the_monitor_keeps_ticking(tmp_path: Path) -> None:
    runtime = DockerRuntime("box", f"unix://{tmp_path / 'no-docker.sock'}")
    for _ in range(2):  # it tries again on every read
        with pytest.raises(EnvironmentNotReadyError, match=r"no-docker\.sock"):
            runtime.read()
    vllm = StoppedServiceSampler(Endpoint("vllm", "vllm", "http://127.0.0.1:9"), "stopped")
    samplers = SamplerSet(services=(vllm,), runtime=runtime)

    async def two_ticks() -> list[str | None]:
        states = []
        async with Monitor(samplers, clock=ManualClock()) as monitor:
            async for snapshot in monitor.run(2):
                service = snapshot.service("vllm")
                assert service is not None
                states.append(service.container_state)
        return states

    assert asyncio.run(two_ticks()) == [None, None]
