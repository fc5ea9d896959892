"""Simulated samplers for `--simulate`: a busy box whose numbers move plausibly, without a GPU.

The GPUs are the hardware package's simulated box (the catalog's card, memory and power limit);
vLLM, TEI and the gateway are counters and histograms advanced by a load curve that rises and
falls over a few minutes (the gateway, on auto fallback, sends more away at the peaks), with
vLLM's and TEI's real bucket bounds, so every figure the monitor derives (tokens/s, p95s, KV
usage, queueing, and the alerts they raise at the peaks) goes through the same code as a real
engine's. Seeded: the same seed and the same tick times give the same numbers.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from appliance.hardware.box import GpuProcess
from appliance.monitor.maths import Histogram
from appliance.monitor.samplers import (
    ContainerStatus,
    Endpoint,
    EndpointReading,
    GpuReadings,
    SamplerSet,
)
from appliance.monitor.scrape import MetricsReading
from appliance.monitor.snapshot import GpuStats
from appliance.vocabulary import EngineKind

# vLLM's bucket bounds (shared/reference/vllm-0.32-cpu-metrics.txt), +Inf added below.
TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
              10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                  60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
# TEI's duration buckets: 1e-5 * 1.5^k, k = 1..35 (router/src/prometheus.rs).
TEI_BOUNDS = tuple(0.00001 * 1.5**k for k in range(1, 36))
MAX_REQUESTS_PER_TICK = 200  # bounds the work of one simulated tick whatever the gap


def load_at(t: float) -> float:
    """Offered load in [0.05, 1]: a slow wave of a few minutes with a faster ripple on top."""
    wave = 0.55 + 0.4 * math.sin(2 * math.pi * t / 240.0) + 0.08 * math.sin(2 * math.pi * t / 23.0)
    return min(1.0, max(0.05, wave))


class _Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = (*bounds, math.inf)
        self.counts = [0.0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1

    def snapshot(self) -> Histogram:
        return Histogram(self.bounds, tuple(self.counts), self.sum, self.counts[-1])


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (normal approximation above 30, which is all a dashboard needs)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


class SimulatedEngineSampler:
    """A vLLM or TEI engine under `load_at(t)`; `now` is the monitor's monotonic clock."""

    def __init__(
        self, endpoint: Endpoint, now: Callable[[], float], *, seed: int = 0, model: str = "sim"
    ) -> None:
        if endpoint.kind not in ("vllm", "tei"):
            msg = f"a simulated engine is vllm or tei, not {endpoint.kind}"
            raise ValueError(msg)
        self._endpoint = endpoint
        self.now = now
        self.model = model
        self.rng = random.Random(seed)  # noqa: S311 - simulated load, not secrets
        self.last: float | None = None
        self.counters: dict[str, float] = {}
        if endpoint.kind == "vllm":
            self.histograms = {
                "ttft": _Histogram(TTFT_BOUNDS),
                "itl": _Histogram(ITL_BOUNDS),
                "e2e": _Histogram(REQUEST_BOUNDS),
                "queue_time": _Histogram(REQUEST_BOUNDS),
            }
        else:
            self.histograms = {
                key: _Histogram(TEI_BOUNDS) for key in ("e2e", "queue_time", "inference_time")
            }

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    def _add(self, key: str, amount: float) -> None:
        self.counters[key] = self.counters.get(key, 0.0) + amount

    async def sample(self) -> EndpointReading:
        t = self.now()
        elapsed = 0.0 if self.last is None else max(0.0, t - self.last)
        self.last = t
        load = load_at(t)
        if self._endpoint.kind == "vllm":
            gauges = self._advance_vllm(load, elapsed)
        else:
            gauges = self._advance_tei(load, elapsed)
        reading = MetricsReading(
            kind="vllm" if self._endpoint.kind == "vllm" else "tei",
            model_names=(self.model,) if self._endpoint.kind == "vllm" else (),
            gauges=gauges,
            counters=dict(self.counters),
            histograms={key: h.snapshot() for key, h in self.histograms.items()},
        )
        return EndpointReading(self._endpoint, healthy=True, metrics=reading)

    def _advance_vllm(self, load: float, elapsed: float) -> Mapping[str, float]:
        rng = self.rng
        for key in ("prompt_tokens", "generation_tokens", "requests", "requests_failed"):
            self._add(key, 0.0)
        for key in ("prefix_cache_queries", "prefix_cache_hits", "preemptions"):
            self._add(key, 0.0)
        kv_usage = min(0.99, 0.12 + 0.85 * load**2)
        requests = min(MAX_REQUESTS_PER_TICK, _poisson(rng, 6.0 * load * elapsed))
        for _ in range(requests):
            prompt = rng.randint(200, 1400)
            generated = rng.randint(40, 500)
            ttft = (0.05 + 0.9 * load**3) * rng.lognormvariate(0.0, 0.35)
            itl = (0.015 + 0.03 * load) * rng.lognormvariate(0.0, 0.2)
            queued = max(0.0, (load - 0.75) * 3.0 * rng.random())
            self._add("prompt_tokens", prompt)
            self._add("generation_tokens", generated)
            self._add("prefix_cache_queries", prompt)
            self._add("prefix_cache_hits", round(prompt * rng.uniform(0.2, 0.6)))
            self._add("requests", 1)
            if rng.random() < 0.002:
                self._add("requests_failed", 1)
            self.histograms["ttft"].observe(ttft)
            self.histograms["queue_time"].observe(queued)
            self.histograms["e2e"].observe(queued + ttft + generated * itl)
            for _ in range(min(generated - 1, 20)):  # a sample of the gaps, enough for quantiles
                self.histograms["itl"].observe(itl * rng.lognormvariate(0.0, 0.1))
        if kv_usage > 0.95 and rng.random() < 0.5:
            self._add("preemptions", 1)
        return {
            "running_requests": float(round(4 + 28 * load)),
            "waiting_requests": float(max(0, round(40 * (load - 0.8)))),
            "kv_cache_usage": kv_usage,
        }

    def _advance_tei(self, load: float, elapsed: float) -> Mapping[str, float]:
        rng = self.rng
        for key in ("requests", "requests_succeeded", "requests_failed"):
            self._add(key, 0.0)
        requests = min(MAX_REQUESTS_PER_TICK, _poisson(rng, 25.0 * load * elapsed))
        for _ in range(requests):
            queued = (0.0005 + 0.01 * load**2) * rng.lognormvariate(0.0, 0.4)
            inference = 0.006 * rng.lognormvariate(0.0, 0.2)
            self._add("requests", 1)
            self._add("requests_succeeded", 1)
            self.histograms["queue_time"].observe(queued)
            self.histograms["inference_time"].observe(inference)
            self.histograms["e2e"].observe(queued + inference + 0.0005)
        return {"waiting_requests": float(max(0, round(12 * (load - 0.85))))}


def remote_share_at(load: float, fallback_mode: str = "auto") -> float:
    """The share of requests the simulated gateway sends remote under a fallback mode.

    off: none; always: all; auto: a trickle (local failures), more while vLLM's queue is long,
    which the simulated vLLM's `waiting_requests` makes happen above a load of 0.8.
    """
    if fallback_mode == "off":
        return 0.0
    if fallback_mode == "always":
        return 1.0
    return min(0.6, 0.02 + max(0.0, load - 0.8) * 2.5)


class SimulatedGatewaySampler:
    """The appliance gateway under `load_at(t)`: chat and embeddings requests, local or remote.

    `fallback_mode` reads the mode the gateway would route by ("off", "auto", "always"; the
    TUI passes its gateway state's reader, so switching it with `f` shows in the numbers);
    None is "auto". A reader that fails counts as "auto" too: a sampler never raises.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        now: Callable[[], float],
        *,
        seed: int = 0,
        fallback_mode: Callable[[], str] | None = None,
    ) -> None:
        if endpoint.kind != "gateway":
            msg = f"a simulated gateway is of kind gateway, not {endpoint.kind}"
            raise ValueError(msg)
        self._endpoint = endpoint
        self.now = now
        self.rng = random.Random(seed)  # noqa: S311 - simulated load, not secrets
        self.last: float | None = None
        self.fallback_mode = fallback_mode
        self.counters = {"requests": 0.0, "local_requests": 0.0, "remote_requests": 0.0}
        # What users feel at the gateway; its own generator keeps the routing draws as they were.
        self.latency_rng = random.Random(seed + 1)  # noqa: S311 - simulated load, not secrets
        self.histograms = {"ttft": _Histogram(TTFT_BOUNDS), "e2e": _Histogram(REQUEST_BOUNDS)}

    async def _mode(self) -> str:
        """Read in a thread: the reader may open a file, and this may run on the TUI's loop."""
        if self.fallback_mode is None:
            return "auto"
        try:
            return await asyncio.to_thread(self.fallback_mode)
        except Exception:  # noqa: BLE001 - a simulated sampler must keep ticking
            return "auto"

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    def _observe_latency(self, load: float, *, remote: bool) -> None:
        """A local answer waits like the engine's, plus the gateway's own hop; a remote one pays
        the remote API's round trip whatever this box's load."""
        rng = self.latency_rng
        if remote:
            ttft = 0.4 * rng.lognormvariate(0.0, 0.3)
        else:
            ttft = 0.02 + (0.05 + 0.9 * load**3) * rng.lognormvariate(0.0, 0.35)
        self.histograms["ttft"].observe(ttft)
        self.histograms["e2e"].observe(ttft + 150 * 0.03 * rng.lognormvariate(0.0, 0.3))

    async def sample(self) -> EndpointReading:
        mode = await self._mode()
        t = self.now()
        elapsed = 0.0 if self.last is None else max(0.0, t - self.last)
        self.last = t
        load = load_at(t)
        rng = self.rng
        requests = min(MAX_REQUESTS_PER_TICK, _poisson(rng, 9.0 * load * elapsed))
        share = remote_share_at(load, mode)
        for _ in range(requests):
            self.counters["requests"] += 1
            destination = "remote_requests" if rng.random() < share else "local_requests"
            self.counters[destination] += 1
            self._observe_latency(load, remote=destination == "remote_requests")
        reading = MetricsReading(
            kind="gateway",
            counters=dict(self.counters),
            histograms={key: h.snapshot() for key, h in self.histograms.items()},
        )
        return EndpointReading(self._endpoint, healthy=True, metrics=reading)


@dataclass
class _GpuState:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    power_limit_w: float
    temperature_c: float = 38.0


class SimulatedGpuSampler:
    """The GPUs of a simulated box (`hardware.simulate`), working under `load_at(t)`."""

    runs_inline: ClassVar[bool] = True  # pure arithmetic on the monitor's clock: no thread

    def __init__(
        self, box: str, now: Callable[[], float], *, seed: int = 0, busy: bool = True
    ) -> None:
        from pathlib import Path

        from appliance.hardware.simulate import simulate

        recording = simulate(box, Path("/nonexistent")).recording
        self.now = now
        self.rng = random.Random(seed)  # noqa: S311 - simulated load, not secrets
        self.last: float | None = None
        self.busy = busy  # False: no engine runs on these GPUs (idle, nothing in memory)
        self.gpus = [
            _GpuState(
                index=device.index,
                name=device.name or f"GPU {device.index}",
                uuid=device.uuid or f"GPU-simulated-{device.index}",
                memory_total_bytes=device.memory_total_bytes or 24 << 30,
                power_limit_w=(device.enforced_power_limit_mw or 300_000) / 1000,
            )
            for device in recording.devices
        ]

    def read(self) -> GpuReadings:
        t = self.now()
        elapsed = 0.0 if self.last is None else max(0.0, t - self.last)
        self.last = t
        load = load_at(t) if self.busy else 0.0
        readings = []
        for gpu in self.gpus:
            # Temperature follows load with a lag of about half a minute.
            target = 36.0 + 50.0 * load
            gpu.temperature_c += (target - gpu.temperature_c) * (1 - math.exp(-elapsed / 30.0))
            power = gpu.power_limit_w * min(1.0, 0.18 + 0.8 * load + self.rng.uniform(-0.02, 0.02))
            reasons: tuple[str, ...] = (
                ("sw_power_cap",) if power >= 0.97 * gpu.power_limit_w else ()
            )
            engine_memory = int(gpu.memory_total_bytes * 0.9) if self.busy else 0
            readings.append(
                GpuStats(
                    index=gpu.index,
                    name=gpu.name,
                    uuid=gpu.uuid,
                    utilization_gpu_pct=round(min(100.0, 8 + 90 * load), 1),
                    utilization_memory_pct=round(min(100.0, 5 + 60 * load), 1),
                    memory_used_bytes=engine_memory
                    + (1 << 30 if gpu.index == 0 and self.busy else 0),
                    memory_total_bytes=gpu.memory_total_bytes,
                    temperature_c=round(gpu.temperature_c, 1),
                    power_draw_w=round(power, 1),
                    power_limit_w=gpu.power_limit_w,
                    sm_clock_mhz=round(2520 - 180 * load),
                    memory_clock_mhz=10501,
                    throttle_reasons=reasons,
                    ecc_errors_corrected=0,
                    ecc_errors_uncorrected=0,
                    processes=(
                        GpuProcess(
                            pid=4242, name="python3", used_memory_bytes=engine_memory, type="C"
                        ),
                    )
                    if self.busy
                    else (),
                )
            )
        return GpuReadings(gpus=tuple(readings))

    def close(self) -> None:
        return None


class StoppedServiceSampler:
    """A service that does not run, and why: on a simulated box whose profile `apply` would
    refuse (a model that cannot fit), nothing is started, so nothing answers."""

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        self._endpoint = endpoint
        self.reason = reason

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def sample(self) -> EndpointReading:
        return EndpointReading(self._endpoint, healthy=False, health_error=self.reason)


class SimulatedRuntime:
    """Every engine's container running, never restarted (the gateway is a systemd unit)."""

    runs_inline: ClassVar[bool] = True

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def read(self) -> Mapping[str, ContainerStatus]:
        return {name: ContainerStatus(state="running", restart_count=0) for name in self.names}


def simulated_samplers(
    box: str = "rtx4090",
    *,
    now: Callable[[], float],
    seed: int = 0,
    embeddings: bool = True,
    model: str = "simulated-chat",
    fallback_mode: Callable[[], str] | None = None,
    not_running: str | None = None,
    engine: EngineKind = "vllm",
) -> SamplerSet:
    """A whole simulated appliance: the GPUs of `box`, the chat engine (`engine`, vLLM or SGLang,
    a profile's spec.engine.kind: it names the service; the simulated figures are the same),
    TEI (unless `embeddings` is False) and the gateway, routing by `fallback_mode()` (None:
    "auto").

    `not_running` is why nothing runs (the profile cannot fit the box, so `apply` would refuse
    it): then every service answers with that reason and the GPUs sit idle. `now` is the
    monitor's monotonic clock (`Monitor.clock.monotonic`). Raises `BadInputError` for a box
    name the GPU catalog does not know.
    """
    endpoints = [Endpoint("vllm", "vllm", "http://127.0.0.1:8000", engine=engine)]
    if embeddings:
        endpoints.append(Endpoint("tei", "tei", "http://127.0.0.1:8001"))
    gateway = Endpoint("gateway", "gateway", "http://127.0.0.1:8080")
    gpus = SimulatedGpuSampler(box, now, seed=seed, busy=not_running is None)
    if not_running is not None:  # apply starts nothing: the first service says why
        first, *others = (*endpoints, gateway)
        stopped = (
            StoppedServiceSampler(first, f"not running: {not_running}"),
            *(
                StoppedServiceSampler(e, f"not running: nothing was started (see {first.name})")
                for e in others
            ),
        )
        return SamplerSet(services=stopped, gpus=gpus, runtime=SimulatedRuntime(()), simulated=True)
    services: list[SimulatedEngineSampler | SimulatedGatewaySampler] = [
        SimulatedEngineSampler(
            endpoint,
            now,
            seed=seed + index,
            model=model,
        )
        for index, endpoint in enumerate(endpoints)
    ]
    services.append(
        SimulatedGatewaySampler(gateway, now, seed=seed + 2, fallback_mode=fallback_mode)
    )
    return SamplerSet(
        services=tuple(services),
        gpus=gpus,
        runtime=SimulatedRuntime([endpoint.name for endpoint in endpoints]),
        simulated=True,
    )
