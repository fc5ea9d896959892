"""The monitor loop over scripted endpoints (httpx MockTransport), recorded NVML and fake clocks.

Time is a fake clock: ticks are one fake second apart whatever the machine does, so every rate
below is computed by hand. Only per-sampler timeouts use real time, and nothing asserts on it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.clock import ManualClock
from appliance.errors import BadInputError, ExitCode
from appliance.gateway.app import _SwitchingCollector
from appliance.gateway.switcher import ModelSwitcher
from appliance.gateway.switching import SwitchRules
from appliance.gateway.upstream import Upstream
from appliance.hardware.nvml import NvmlDevice, NvmlSystem, NvmlUnavailable, RecordedNvml
from appliance.monitor.alerts import AlertThresholds
from appliance.monitor.monitor import EngineLoadSignal, Monitor, MonitorConfig
from appliance.monitor.render import render_status, sparkline
from appliance.monitor.samplers import (
    ContainersRuntimeSource,
    ContainerStatus,
    Endpoint,
    EndpointReading,
    GpuReadings,
    NvmlGpuSampler,
    SamplerSet,
    gpu_stats,
    http_samplers,
    throttle_reason_names,
)
from appliance.monitor.snapshot import GpuStats, Snapshot
from appliance.operations.status import (
    AlertsActiveError,
    check_status,
    parse_url,
    profile_endpoints,
    sample_status,
    simulated,
    url_samplers,
    watch_status,
)
from appliance.profile import Profile, load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[2]
NVML_FIXTURES = sorted((ROOT / "tests" / "fixtures" / "nvml").glob("*.json"))


def clock_at(start: float = 1000.0) -> ManualClock:
    """The monitor's manual clock, its wall time 1_800_000_000 s ahead of its monotonic one."""
    return ManualClock(start, 1_800_000_000.0 + start)


def vllm_text(
    *,
    prompt: float = 0,
    generation: float = 0,
    ok: float = 0,
    errors: float = 0,
    ttft: tuple[float, float, float, float] = (0, 0, 0, 0),
    waiting: float = 0,
    kv: float = 0.0,
    hits: float = 0,
    queries: float = 0,
) -> str:
    """A vLLM page with the real names; TTFT bounds 0.1, 0.5, 1, +Inf (cumulative counts)."""
    buckets = "".join(
        f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="m"}} {count}\n'
        for le, count in zip(("0.1", "0.5", "1.0", "+Inf"), ttft, strict=True)
    )
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 2\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{model_name="m"}} {kv}\n'
        "# TYPE vllm:prompt_tokens_total counter\n"
        f'vllm:prompt_tokens_total{{model_name="m"}} {prompt}\n'
        "# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{model_name="m"}} {generation}\n'
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        f'vllm:prefix_cache_queries_total{{model_name="m"}} {queries}\n'
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        f'vllm:prefix_cache_hits_total{{model_name="m"}} {hits}\n'
        "# TYPE vllm:request_success_total counter\n"
        f'vllm:request_success_total{{finished_reason="stop",model_name="m"}} {ok}\n'
        f'vllm:request_success_total{{finished_reason="error",model_name="m"}} {errors}\n'
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        f"{buckets}"
        f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {ttft[-1]}\n'
        f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} 1.0\n'
    )


class Engines:
    """Scripted engines behind a MockTransport: `pages[host]` is served as /metrics."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.health: dict[str, int] = {}
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        host = request.url.host
        if request.url.path == "/health":
            return httpx.Response(self.health.get(host, 200))
        if request.url.path == "/metrics" and host in self.pages:
            return httpx.Response(200, text=self.pages[host])
        return httpx.Response(404)

    def samplers(self, *endpoints: Endpoint, **kwargs: object) -> SamplerSet:
        transport = httpx.MockTransport(self.handler)
        return http_samplers(endpoints, transport=transport, **kwargs)


VLLM = Endpoint("vllm", "vllm", "http://vllm.test")
TEI = Endpoint("tei", "tei", "http://tei.test")


def ticks(monitor: Monitor, clock: ManualClock, pages: list[Callable[[], None]]) -> list[Snapshot]:
    """One tick per step, one fake second apart; each step first changes the pages."""

    async def go() -> list[Snapshot]:
        taken = []
        async with monitor:
            for step in pages:
                step()
                taken.append(await monitor.tick())
                clock.advance(1.0)
        return taken

    return asyncio.run(go())


def test_rates_across_ticks_and_a_counter_reset() -> None:
    engines, clock = Engines(), clock_at()
    monitor = Monitor(engines.samplers(VLLM), clock=clock)

    def page(**values: float) -> Callable[[], None]:
        return lambda: engines.pages.__setitem__("vllm.test", vllm_text(**values))

    first, second, third = ticks(
        monitor,
        clock,
        [
            page(prompt=1000, generation=5000, ok=10),
            page(prompt=1050, generation=5400, ok=12),
            page(prompt=20, generation=100, ok=1),  # the engine restarted
        ],
    )
    vllm = first.service("vllm")
    assert vllm is not None
    assert vllm.healthy
    assert vllm.generation_tokens_per_s is None  # one scrape says nothing about a rate
    vllm = second.service("vllm")
    assert vllm is not None
    assert vllm.prompt_tokens_per_s == 50.0
    assert vllm.generation_tokens_per_s == 400.0
    assert vllm.requests_per_s == 2.0
    vllm = third.service("vllm")
    assert vllm is not None
    # Over the 2 s window: +400 then the restart's 100 counted from zero.
    assert vllm.generation_tokens_per_s == 250.0
    assert vllm.prompt_tokens_per_s == (50 + 20) / 2
    assert vllm.requests_per_s == (2 + 1) / 2


def test_a_series_that_appears_after_the_first_scrape_counted_from_zero() -> None:
    engines, clock = Engines(), clock_at()
    monitor = Monitor(engines.samplers(VLLM), clock=clock)
    gauges_only = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n"
    _, second = ticks(
        monitor,
        clock,
        [
            lambda: engines.pages.__setitem__("vllm.test", gauges_only),
            # prometheus_client creates a labelled counter on its first increment
            lambda: engines.pages.__setitem__(
                "vllm.test", vllm_text(generation=40, ttft=(0, 2, 2, 2))
            ),
        ],
    )
    vllm = second.service("vllm")
    assert vllm is not None
    assert vllm.generation_tokens_per_s == 40.0
    assert vllm.ttft_p50_s == pytest.approx(0.3)  # rank 1 of 2 in (0.1, 0.5]


def test_quantiles_error_rate_and_prefix_hits_over_the_window() -> None:
    engines, clock = Engines(), clock_at()
    monitor = Monitor(engines.samplers(VLLM), clock=clock)
    pages = [
        vllm_text(ok=100, errors=0, ttft=(100, 100, 100, 100), queries=1000, hits=0),
        # In this second: 10 first tokens ≤ 0.1 s and 10 in (0.5, 1]; 95 ok and 5 failed;
        # 400 prompt tokens looked up in the prefix cache, 100 found.
        vllm_text(ok=195, errors=5, ttft=(110, 110, 120, 120), queries=1400, hits=100),
    ]
    _, snapshot = ticks(
        monitor, clock, [lambda p=p: engines.pages.__setitem__("vllm.test", p) for p in pages]
    )
    vllm = snapshot.service("vllm")
    assert vllm is not None
    assert vllm.ttft_p50_s == pytest.approx(0.1)  # rank 10: the top of (0, 0.1]
    assert vllm.ttft_p95_s == pytest.approx(0.95)  # rank 19: 9 into the 10 of (0.5, 1]
    assert vllm.error_rate_pct == pytest.approx(5.0)
    assert vllm.prefix_cache_hit_rate_pct == pytest.approx(25.0)
    assert vllm.itl_p95_s is None  # this engine exposes no ITL histogram


def gateway_text(*, local: float, remote: float, refused: float = 0) -> str:
    """The gateway's requests counter as prometheus_client writes it."""
    name = "appliance_gateway_requests_total"
    return (
        f"# TYPE {name} counter\n"
        f'{name}{{destination="local",outcome="ok",route="/v1/chat/completions"}} {local}\n'
        f'{name}{{destination="remote",outcome="ok",route="/v1/chat/completions"}} {remote}\n'
        f'{name}{{destination="none",outcome="unauthorized",route="/v1/models"}} {refused}\n'
    )


GATEWAY = Endpoint("gateway", "gateway", "http://gateway.test")


def test_gateway_requests_by_destination_across_ticks_and_a_restart() -> None:
    engines, clock = Engines(), clock_at()
    monitor = Monitor(engines.samplers(GATEWAY), clock=clock)

    def page(**values: float) -> Callable[[], None]:
        return lambda: engines.pages.__setitem__("gateway.test", gateway_text(**values))

    first, second, third = ticks(
        monitor,
        clock,
        [
            page(local=100, remote=0, refused=5),
            page(local=106, remote=2, refused=9),
            page(local=1, remote=1),  # the gateway restarted: counted from zero
        ],
    )
    gateway = first.service("gateway")
    assert gateway is not None
    assert gateway.kind == "gateway"
    assert not gateway.is_engine
    assert gateway.local_requests_per_s is None  # one scrape says nothing about a rate
    assert gateway.remote_share_pct is None
    gateway = second.service("gateway")
    assert gateway is not None
    assert gateway.local_requests_per_s == 6.0
    assert gateway.remote_requests_per_s == 2.0
    assert gateway.requests_per_s == 12.0  # the 4 refused count here, not by destination
    assert gateway.remote_share_pct == pytest.approx(25.0)  # 2 of 8 routed
    gateway = third.service("gateway")
    assert gateway is not None
    # Over the 2 s window: local +6 then +1 after the restart, remote +2 then +1.
    assert gateway.local_requests_per_s == (6 + 1) / 2
    assert gateway.remote_requests_per_s == (2 + 1) / 2
    assert gateway.remote_share_pct == pytest.approx(100 * 3 / 10)
    assert monitor.history.values("gateway.remote_requests_per_s")[-1] == 1.5
    text = render_status(third, monitor.history)
    assert "requests/s local 3.50" in text
    assert "remote 1.50" in text
    assert "sent remote 30.0 %" in text


def test_a_quiet_gateway_has_zero_rates_and_no_share() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["gateway.test"] = gateway_text(local=10, remote=0)
    (_, snapshot) = ticks(
        Monitor(engines.samplers(GATEWAY), clock=clock), clock, [lambda: None] * 2
    )
    gateway = snapshot.service("gateway")
    assert gateway is not None
    assert gateway.local_requests_per_s == 0.0
    assert gateway.remote_requests_per_s == 0.0
    assert gateway.remote_share_pct is None  # nothing routed: no share to speak of


def test_a_gateway_without_metrics_is_still_watched_for_health() -> None:
    engines, clock = Engines(), clock_at()  # no page: /metrics answers 404
    (snapshot,) = ticks(Monitor(engines.samplers(GATEWAY), clock=clock), clock, [lambda: None])
    gateway = snapshot.service("gateway")
    assert gateway is not None
    assert gateway.healthy
    assert gateway.metrics_error == "http://gateway.test/metrics answered 404"
    assert gateway.local_requests_per_s is None
    assert "requests/s local -   remote -   sent remote -" in render_status(snapshot)


def test_gauges_health_and_a_503() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text(waiting=7, kv=0.93)
    engines.health["vllm.test"] = 503
    (snapshot,) = ticks(Monitor(engines.samplers(VLLM), clock=clock), clock, [lambda: None])
    vllm = snapshot.service("vllm")
    assert vllm is not None
    assert not vllm.healthy
    assert vllm.health_error == "http://vllm.test/health answered 503"
    assert vllm.waiting_requests == 7
    assert vllm.running_requests == 2
    assert vllm.kv_cache_usage_pct == pytest.approx(93.0)
    assert vllm.model_names == ("m",)


def test_metrics_that_are_not_an_engines_are_reported_not_raised() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = "<html>oops</html>"
    (snapshot,) = ticks(Monitor(engines.samplers(VLLM), clock=clock), clock, [lambda: None])
    vllm = snapshot.service("vllm")
    assert vllm is not None
    assert vllm.healthy
    assert vllm.metrics_error is not None
    assert "no vLLM" in vllm.metrics_error
    assert vllm.generation_tokens_per_s is None


class _StuckSampler:
    """An endpoint that never answers (a hung engine)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def sample(self) -> EndpointReading:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_one_stuck_endpoint_does_not_stall_the_others() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text(waiting=3)
    samplers = engines.samplers(VLLM)
    samplers.services = (*samplers.services, _StuckSampler(TEI))
    monitor = Monitor(samplers, config=MonitorConfig(timeout_s=0.05), clock=clock)
    (snapshot,) = ticks(monitor, clock, [lambda: None])
    vllm, tei = snapshot.service("vllm"), snapshot.service("tei")
    assert vllm is not None
    assert tei is not None
    assert vllm.healthy
    assert vllm.waiting_requests == 3
    assert not tei.healthy
    assert tei.health_error == "no answer from http://tei.test within 0.1 s"


class _HangingGpus:
    """NVML that hangs on its first read until released, like a GPU falling off the bus."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def read(self) -> GpuReadings:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(10)
        return GpuReadings(gpus=(GpuStats(index=0, temperature_c=50),))

    def close(self) -> None:
        self.release.set()


def test_hung_nvml_is_reported_and_never_called_twice_at_once() -> None:
    gpus = _HangingGpus()
    clock = clock_at()
    monitor = Monitor(SamplerSet(gpus=gpus), config=MonitorConfig(timeout_s=0.05), clock=clock)

    async def go() -> tuple[Snapshot, Snapshot, Snapshot]:
        async with monitor:
            first = await monitor.tick()
            clock.advance(1)
            second = await monitor.tick()  # the first read still hangs: not started again
            gpus.release.set()
            clock.advance(1)
            third = await monitor.tick()
            return first, second, third

    first, second, third = asyncio.run(go())
    assert first.gpus == ()
    assert first.gpu_error == "NVML has not answered for 0.0 s"
    assert second.gpu_error == "NVML has not answered for 1.0 s"
    assert gpus.calls == 1
    assert third.gpu_error is None
    assert [gpu.temperature_c for gpu in third.gpus] == [50]


class _Runtime:
    def __init__(self) -> None:
        self.restarts = 0

    def read(self) -> Mapping[str, ContainerStatus]:
        return {"vllm": ContainerStatus("running", self.restarts)}


def test_a_container_restart_raises_an_alert_at_once() -> None:
    engines, clock, runtime = Engines(), clock_at(), _Runtime()
    engines.pages["vllm.test"] = vllm_text()
    samplers = engines.samplers(VLLM, runtime=runtime)
    monitor = Monitor(samplers, clock=clock)

    def restart() -> None:
        runtime.restarts += 1

    first, second, third = ticks(monitor, clock, [lambda: None, restart, lambda: None])
    assert first.alerts == ()
    vllm = second.service("vllm")
    assert vllm is not None
    assert vllm.restart_count == 1
    assert vllm.container_state == "running"
    assert [alert.code for alert in second.alerts] == ["container-restarts"]
    assert [alert.code for alert in third.alerts] == ["container-restarts"]


def test_unhealthy_engine_alerts_after_unhealthy_seconds_and_clears() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text()
    config = MonitorConfig(thresholds=AlertThresholds(unhealthy_seconds=2))
    monitor = Monitor(engines.samplers(VLLM), config=config, clock=clock)

    def status(code: int) -> Callable[[], None]:
        return lambda: engines.health.__setitem__("vllm.test", code)

    steps = [status(503), status(503), status(503), status(200), status(200), status(200)]
    raised = [bool(s.alerts) for s in ticks(monitor, clock, steps)]
    assert raised == [False, False, True, True, True, False]


@pytest.mark.parametrize("fixture", NVML_FIXTURES, ids=lambda path: path.stem)
def test_recorded_nvml_readings_are_replayed(fixture: Path) -> None:
    source = RecordedNvml.from_file(fixture)
    opened = []
    original_open = source.open

    def counting_open() -> NvmlSystem | NvmlUnavailable:
        opened.append(True)
        return original_open()

    source.open = counting_open
    clock = clock_at()
    monitor = Monitor(SamplerSet(gpus=NvmlGpuSampler(source)), clock=clock)
    snapshots = ticks(monitor, clock, [lambda: None, lambda: None])
    assert len(opened) == 1  # the NVML session stays open between ticks
    devices = source.recording.devices
    gpus = snapshots[-1].gpus
    assert [gpu.index for gpu in gpus] == [device.index for device in devices]
    for gpu, device in zip(gpus, devices, strict=True):
        assert gpu.name == device.name
        assert gpu.temperature_c == device.temperature_c
        assert gpu.memory_used_bytes == device.memory_used_bytes
        expected_w = None if device.power_usage_mw is None else device.power_usage_mw / 1000
        assert gpu.power_draw_w == expected_w


def test_nvml_unavailable_is_a_message_not_an_exception() -> None:
    from appliance.hardware.nvml import NvmlRecording

    recording = NvmlRecording(
        unavailable=NvmlUnavailable(kind="no-driver", message="NVML Shared Library Not Found")
    )
    readings = NvmlGpuSampler(RecordedNvml(recording)).read()
    assert readings.gpus == ()
    assert readings.error == "NVML unavailable (no-driver): NVML Shared Library Not Found"


def test_a_lost_gpu_is_reported_per_gpu() -> None:
    stats = gpu_stats(NvmlDevice(index=3, error="GPU is lost"))
    assert stats == GpuStats(index=3, error="GPU is lost")


def test_throttle_reason_bits() -> None:
    assert throttle_reason_names(0x4 | 0x40) == ("sw_power_cap", "hw_thermal")
    assert throttle_reason_names(0) == ()


class _Container:
    def __init__(self, service: str, state: str, restart_count: int, *, role: str = "") -> None:
        self.name = f"llm-appliance-rtx4090-chat-{service}"
        self.role = role or service.split("-", 1)[0]
        self.state, self.restart_count = state, restart_count


class _Lister:
    def __init__(self, *containers: _Container) -> None:
        self.containers = containers
        self.asked: list[str | None] = []

    def managed_containers(self, profile: str | None = None) -> list[_Container]:
        self.asked.append(profile)
        return list(self.containers)


def test_container_status_comes_from_the_runtime_adapter_by_service() -> None:
    lister = _Lister(
        _Container("vllm", "running", 2),
        _Container("vllm-previous-0123456789ab", "running", 7),  # set aside by an update
        _Container("vllm-2", "running", 0, role="vllm"),  # a further switched model's engine
        _Container("tei", "restarting", 5),
    )
    source = ContainersRuntimeSource(lister, "rtx4090-chat")
    assert source.read() == {
        "vllm": ContainerStatus("running", 7),  # of one service's two, the one restarted most
        "vllm-2": ContainerStatus("running", 0),
        "tei": ContainerStatus("restarting", 5),
    }
    assert lister.asked == ["rtx4090-chat"]
    # Without a profile (containers of any), by role as before.
    assert ContainersRuntimeSource(lister).read()["vllm"] == ContainerStatus("running", 7)


def test_history_stays_bounded() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text()
    monitor = Monitor(engines.samplers(VLLM), config=MonitorConfig(history_points=5), clock=clock)
    ticks(monitor, clock, [lambda: None] * 20)
    values = monitor.history.values("vllm.waiting_requests")
    assert values == (0.0,) * 5
    assert len(monitor.history.values("vllm.healthy")) == 5


def test_run_keeps_a_fixed_cadence_and_skips_missed_ticks() -> None:
    clock = clock_at(start=0.0)

    class SlowOnce:
        def __init__(self) -> None:
            self.calls = 0

        def read(self) -> GpuReadings:
            self.calls += 1
            if self.calls == 2:
                clock.advance(2.5)  # this tick took 2.5 s: the ticks due at 2 and 3 are missed
            return GpuReadings()

        def close(self) -> None:
            return None

    monitor = Monitor(SamplerSet(gpus=SlowOnce()), clock=clock)

    async def go() -> list[float]:
        async with monitor:
            return [s.taken_at.monotonic async for s in monitor.run(4)]

    assert asyncio.run(go()) == [0.0, 1.0, 4.0, 5.0]


def test_snapshot_round_trips_through_json() -> None:
    clock = clock_at()
    samplers, _ = simulated("2x4090", clock=clock)
    snapshots = ticks(Monitor(samplers, clock=clock), clock, [lambda: None] * 3)
    last = snapshots[-1]
    text = last.model_dump_json()
    assert Snapshot.model_validate_json(text) == last
    document = json.loads(text)
    assert document["taken_at"] == {"monotonic": 1002.0, "wall": 1_800_001_002.0}
    assert {service["name"] for service in document["services"]} == {"vllm", "tei", "gateway"}


def test_engine_load_signal_is_what_the_gateway_reads() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text(waiting=9)
    monitor = Monitor(engines.samplers(VLLM), clock=clock)
    signal = EngineLoadSignal.of(monitor)
    assert signal.waiting_requests() is None
    assert signal.healthy() is None
    assert signal.age_seconds is None
    ticks(monitor, clock, [lambda: None])  # taken at 1000, clock now 1001
    assert signal.waiting_requests() == 9
    assert signal.healthy() is True
    assert signal.age_seconds == 1.0
    assert monitor.latest is not None
    assert monitor.latest.is_fresh(clock.monotonic(), max_age_s=5)
    assert not monitor.latest.is_fresh(clock.monotonic() + 10, max_age_s=5)
    assert EngineLoadSignal.of(monitor, "tei").waiting_requests() is None


def test_simulated_appliance_moves_plausibly_and_deterministically() -> None:
    def run(seed: int) -> list[Snapshot]:
        clock = clock_at(start=0.0)
        samplers, _ = simulated("l40s", clock=clock, seed=seed)
        return ticks(Monitor(samplers, clock=clock), clock, [lambda: None] * 15)

    first, again = run(7), run(7)
    assert [s.model_dump() for s in first] == [s.model_dump() for s in again]
    last = first[-1]
    assert last.simulated
    vllm, tei = last.service("vllm"), last.service("tei")
    assert vllm is not None
    assert tei is not None
    assert vllm.generation_tokens_per_s is not None
    assert vllm.generation_tokens_per_s > 0
    assert vllm.ttft_p95_s is not None
    assert vllm.kv_cache_usage_pct is not None
    assert 0 <= vllm.kv_cache_usage_pct <= 100
    assert tei.requests_per_s is not None
    assert tei.requests_per_s > 0
    gateway = last.service("gateway")
    assert gateway is not None
    assert gateway.kind == "gateway"
    assert gateway.local_requests_per_s is not None
    assert gateway.local_requests_per_s > 0
    assert gateway.remote_requests_per_s is not None
    assert gateway.remote_share_pct is not None
    assert 0 <= gateway.remote_share_pct <= 100
    (gpu,) = last.gpus
    assert gpu.name == "NVIDIA L40S"
    assert gpu.temperature_c is not None
    assert 30 <= gpu.temperature_c <= 90
    assert gpu.power_draw_w is not None
    assert gpu.power_limit_w is not None
    assert gpu.power_draw_w <= gpu.power_limit_w


def test_simulated_unknown_box_is_bad_input() -> None:
    with pytest.raises(BadInputError):
        simulated("rtx9999")


# ---------------------------------------------------------------------------------- CLI faces


def test_sample_status_takes_two_ticks_for_rates() -> None:
    clock = clock_at()
    samplers, _ = simulated(clock=clock)
    snapshot = sample_status(samplers, clock=clock)
    assert snapshot.tick == 2
    vllm = snapshot.service("vllm")
    assert vllm is not None
    assert vllm.generation_tokens_per_s is not None


def test_check_status_raises_with_the_alerts_judged_at_once() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text(kv=0.97)
    with pytest.raises(AlertsActiveError) as caught:
        check_status(engines.samplers(VLLM), clock=clock)
    error = caught.value
    assert error.exit_code == ExitCode.FAILED
    assert [alert.code for alert in error.snapshot.alerts] == ["kv-cache-full"]
    assert "vllm KV cache is 97 % full" in error.render()
    assert "max_num_seqs" in error.render()


def test_status_and_status_check_read_the_same_alerts() -> None:
    # #15: `status PROFILE` showed "Alerts (0)" while `status --check` on the same state reported
    # them: the one-shot view waited for the sustain delay that a two-tick sample never reaches.
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text(kv=0.97)
    shown = sample_status(engines.samplers(VLLM), clock=clock)
    with pytest.raises(AlertsActiveError) as caught:
        check_status(engines.samplers(VLLM), clock=clock_at())
    assert [a.code for a in shown.alerts] == [a.code for a in caught.value.snapshot.alerts]
    assert [a.code for a in shown.alerts] == ["kv-cache-full"]


def test_check_status_passes_a_quiet_box() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text()
    assert check_status(engines.samplers(VLLM), clock=clock).alerts == ()


def test_watch_status_calls_back_every_tick_with_the_history() -> None:
    clock = clock_at()
    samplers, _ = simulated(clock=clock)
    seen: list[tuple[int, int]] = []
    last = watch_status(
        samplers,
        lambda snapshot, history: seen.append(
            (snapshot.tick, len(history.values("gpu0.temperature_c")))
        ),
        count=3,
        clock=clock,
    )
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert last is not None
    assert last.tick == 3


@pytest.mark.parametrize(
    ("url", "name", "base"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("127.0.0.1:8001/", "127.0.0.1:8001", "http://127.0.0.1:8001"),
        ("http://box:9000/metrics", "box:9000", "http://box:9000"),
        ("https://gpu.lan/vllm/metrics", "gpu.lan/vllm", "https://gpu.lan/vllm"),
    ],
)
def test_scrape_urls(url: str, name: str, base: str) -> None:
    assert parse_url(url) == Endpoint(name, "auto", base)


@pytest.mark.parametrize("urls", [[], ["ftp://x"], ["http://a:1", "a:1"], ["http://"]])
def test_bad_scrape_urls_are_bad_input(urls: list[str]) -> None:
    with pytest.raises(BadInputError):
        url_samplers(urls)


def test_profile_endpoints() -> None:
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    ports = profile.spec.ports
    endpoints = profile_endpoints(profile)
    assert [(e.name, e.kind, e.base_url, e.metrics_path) for e in endpoints] == [
        ("vllm", "vllm", f"http://127.0.0.1:{ports.vllm}", "/metrics"),
        ("tei", "tei", f"http://127.0.0.1:{ports.tei}", "/metrics"),
        ("gateway", "gateway", f"http://127.0.0.1:{ports.gateway}", "/metrics"),
    ]
    config = MonitorConfig.from_profile(profile)
    assert config.interval_s == profile.spec.monitoring.interval_seconds
    assert config.thresholds == AlertThresholds.from_profile(profile)


def _switching(tmp_path: Path) -> Profile:
    text = (ROOT / "profiles" / "rtx4090-chat.yaml").read_text()
    text = text.replace(
        "spec:\n",
        "spec:\n  switching:\n    models:\n"
        "      - {repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ, quantization: awq,\n"
        "         served_model_name: coder, port: 8010, max_model_len: 4096}\n",
        1,
    )
    text = text.replace("spec:\n", f"spec:\n  storage: {{state_dir: {tmp_path}}}\n", 1)
    return parse_profile(text, "switching.yaml")


def test_each_switched_models_engine_is_watched_where_it_runs(tmp_path: Path) -> None:
    """spec.switching: every chat engine is a service of its own (the awake one serves while
    spec.model's sleeps), on the port a blue/green update moved it to."""
    from appliance.gateway.config import gateway_state_dir
    from appliance.gateway.rollout import ROLLOUT_FILE, Rollout, write_rollout

    profile = _switching(tmp_path)
    ports = profile.spec.ports
    assert [(e.name, e.kind, e.base_url) for e in profile_endpoints(profile)[:2]] == [
        ("vllm", "vllm", f"http://127.0.0.1:{ports.vllm}"),
        ("vllm-2", "vllm", "http://127.0.0.1:8010"),
    ]
    chat = profile.spec.model.served_name
    state = gateway_state_dir(profile)
    state.mkdir(parents=True, exist_ok=True)
    # The coder's engine updated blue/green: it now answers on spec.ports.vllm_update (a URL
    # written without the path reads the same); a port neither its own nor the spare is not
    # believed.
    for coder_url, chat_url, expected in (
        (f"http://127.0.0.1:{ports.vllm_update}", f"http://127.0.0.1:{ports.vllm}/v1",
         (ports.vllm, ports.vllm_update)),
        ("http://127.0.0.1:8010/v1", f"http://127.0.0.1:{ports.vllm_update}/v1",
         (ports.vllm_update, 8010)),
        ("http://127.0.0.1:9999/v1", "not a url", (ports.vllm, 8010)),
    ):  # fmt: skip
        write_rollout(state / ROLLOUT_FILE, Rollout(upstreams={"coder": coder_url, chat: chat_url}))
        got = tuple(httpx.URL(e.base_url).port for e in profile_endpoints(profile)[:2])
        assert got == expected, coder_url


def test_gateway_endpoint_follows_its_address_and_tls() -> None:
    from appliance.profile import TlsSpec

    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    gateway = profile.spec.gateway.model_copy(
        update={
            "host": "10.0.0.5",
            "tls": TlsSpec.model_construct(
                cert_file=Path("/etc/cert.pem"), key_file=Path("/etc/key.pem")
            ),
        }
    )
    spec = profile.spec.model_copy(update={"gateway": gateway})
    endpoint = profile_endpoints(profile.model_copy(update={"spec": spec}))[-1]
    assert endpoint.base_url == f"https://10.0.0.5:{profile.spec.ports.gateway}"


def test_render_shows_what_is_down_and_what_to_do() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["vllm.test"] = vllm_text(kv=0.99)
    config = MonitorConfig(thresholds=AlertThresholds().immediate())
    samplers = engines.samplers(VLLM, TEI)
    monitor = Monitor(samplers, config=config, clock=clock)
    (snapshot,) = ticks(monitor, clock, [lambda: None])
    text = render_status(snapshot, monitor.history)
    assert "vllm     ● healthy   m   http://vllm.test" in text
    assert "KV cache 99 %" in text
    assert "tei      ● healthy" in text
    assert "metrics: http://tei.test/metrics answered 404" in text
    assert "[warning] vllm KV cache is 99 % full" in text
    assert "→ lower spec.engine.max_num_seqs" in text
    assert "GPUs\n  none" in text


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1, None, 1]) == "▅ ▅"
    assert sparkline([None, None]) == ""
    assert sparkline(list(range(100)), width=4) == "▁▃▆█"


def test_clocks_throttling_and_ecc_are_taken_when_the_probe_reads_them() -> None:
    """The probe's reading may carry these fields; the adapter maps them by these names."""

    class RicherDevice(NvmlDevice):
        sm_clock_mhz: int | None = None
        memory_clock_mhz: int | None = None
        clocks_event_reasons: int | None = None
        ecc_errors_corrected: int | None = None
        ecc_errors_uncorrected: int | None = None

    device = RicherDevice(
        index=0,
        name="NVIDIA L40S",
        sm_clock_mhz=2520,
        memory_clock_mhz=9001,
        clocks_event_reasons=0x4 | 0x20,
        ecc_errors_corrected=3,
        ecc_errors_uncorrected=0,
    )
    stats = gpu_stats(device)
    assert (stats.sm_clock_mhz, stats.memory_clock_mhz) == (2520, 9001)
    assert stats.throttle_reasons == ("sw_power_cap", "sw_thermal")
    assert (stats.ecc_errors_corrected, stats.ecc_errors_uncorrected) == (3, 0)
    plain = gpu_stats(NvmlDevice(index=0, name="NVIDIA L40S"))
    assert plain.sm_clock_mhz is None
    assert plain.throttle_reasons is None


@pytest.mark.parametrize("mode", ["off", "always"])
def test_the_simulated_gateway_routes_by_the_fallback_mode(mode: str) -> None:
    clock = clock_at(start=0.0)
    samplers, _ = simulated("l40s", clock=clock, seed=3, fallback_mode=lambda: mode)
    last = ticks(Monitor(samplers, clock=clock), clock, [lambda: None] * 5)[-1]
    gateway = last.service("gateway")
    assert gateway is not None
    routed = gateway.remote_requests_per_s if mode == "off" else gateway.local_requests_per_s
    assert routed == 0.0
    assert gateway.remote_share_pct == (0.0 if mode == "off" else 100.0)


def test_a_failing_fallback_reader_leaves_the_simulated_gateway_on_auto() -> None:
    def broken() -> str:
        raise OSError("state file unreadable")

    clock = clock_at(start=0.0)
    samplers, _ = simulated("l40s", clock=clock, seed=3, fallback_mode=broken)
    last = ticks(Monitor(samplers, clock=clock), clock, [lambda: None] * 5)[-1]
    gateway = last.service("gateway")
    assert gateway is not None
    assert gateway.healthy
    assert gateway.local_requests_per_s is not None
    assert gateway.local_requests_per_s > 0


def _switching_page(switcher: ModelSwitcher) -> str:
    """The real gateway collector's page for this switcher, beside its request counter."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_SwitchingCollector(SimpleNamespace(switcher=switcher)))  # type: ignore[arg-type]
    return gateway_text(local=1, remote=0) + generate_latest(registry).decode()


def test_switched_models_show_state_wake_time_switches_per_hour_and_held() -> None:
    engines, clock = Engines(), clock_at()
    switcher = ModelSwitcher(
        dict.fromkeys(("alpha", "beta"), cast("Upstream", None)),
        initially_awake="alpha",
        rules=SwitchRules(sleep_level=2),
    )

    def step(*, wakes: int, held: int, pinned: str | None) -> Callable[[], None]:
        def change() -> None:
            switcher.states = {"alpha": "asleep-2", "beta": "awake"} if wakes else switcher.states
            switcher.switches = switcher.wakes["beta"] = wakes
            switcher.wake_seconds = {"beta": 1.25} if wakes else {}
            switcher.held = {"alpha": held, "beta": 0}
            switcher.pinned = pinned
            engines.pages["gateway.test"] = _switching_page(switcher)

        return change

    first, second = ticks(
        Monitor(engines.samplers(GATEWAY), clock=clock),
        clock,
        [step(wakes=0, held=0, pinned=None), step(wakes=2, held=3, pinned="beta")],
    )
    gateway = first.service("gateway")
    assert gateway is not None
    assert [(m.name, m.state, m.switches_per_hour) for m in gateway.models] == [
        ("alpha", "awake", None),  # one scrape says nothing about a rate
        ("beta", "asleep-2", None),
    ]
    gateway = second.service("gateway")
    assert gateway is not None
    alpha, beta = gateway.models
    assert (alpha.state, alpha.held, alpha.pinned) == ("asleep-2", 3, False)
    assert alpha.wake_seconds is None
    assert (beta.state, beta.pinned, beta.wake_seconds) == ("awake", True, 1.25)
    assert beta.switches_per_hour == 2 * 3600.0  # 2 wakes in one (fake) second
    assert gateway.switches_per_hour == 2 * 3600.0
    assert Snapshot.model_validate_json(second.model_dump_json()) == second
    text = render_status(second)
    assert "chat models: 2 switched, 7,200.0 switches/h" in text
    assert "alpha  asleep (level 2)   in flight 0   held 3   last wake -" in text
    assert "beta   pinned awake       in flight 0   held 0   last wake 1.25 s" in text


def test_a_gateway_without_switching_shows_no_models() -> None:
    engines, clock = Engines(), clock_at()
    engines.pages["gateway.test"] = gateway_text(local=1, remote=0)
    (snapshot,) = ticks(Monitor(engines.samplers(GATEWAY), clock=clock), clock, [lambda: None])
    gateway = snapshot.service("gateway")
    assert gateway is not None
    assert gateway.models == ()
    assert gateway.switches_per_hour is None
    assert "chat models" not in render_status(snapshot)
