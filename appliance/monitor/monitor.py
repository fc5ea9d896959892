"""The 1 Hz loop: every sampler at once, readings turned into one `Snapshot` per tick.

Each tick asks every service, the GPUs and the container runtime concurrently, each with its own
deadline (`MonitorConfig.timeout_s` per request): a service that does not answer in time is
reported as down for that tick while the others are reported as usual, and the tick ends on
time. NVML and the runtime are synchronous and run in worker threads; a call still running from
an earlier tick is waited on, never started twice, so a hung driver cannot pile threads up.

Counters and histograms go into short windows (`TimeWindow`), and rates, ratios and quantiles
are computed over them by `maths`; a bounded `History` keeps the last few minutes of the figures
drawn as sparklines. The clock is injected (`appliance.clock.AsyncClock`), so tests drive ticks
without sleeping.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast, get_args

from appliance.clock import AsyncClock, AsyncSystemClock
from appliance.monitor.alerts import AlertThresholds, AlertTracker, RunningProfile, observe
from appliance.monitor.maths import (
    Histogram,
    counter_increase,
    counter_rate,
    histogram_increase,
    histogram_quantile,
    histogram_reset,
    ratio_pct,
)
from appliance.monitor.samplers import (
    ContainerStatus,
    Endpoint,
    EndpointReading,
    EndpointSampler,
    GpuReadings,
    SamplerSet,
)
from appliance.monitor.scrape import MODEL_WAKES_KEY, MetricsReading
from appliance.monitor.series import History, TimeWindow
from appliance.monitor.snapshot import (
    GpuStats,
    LatencySummary,
    ServiceStats,
    Snapshot,
    SwitchedModelStats,
    Timestamp,
)
from appliance.vocabulary import ModelState

if TYPE_CHECKING:
    from appliance.profile import Profile

# The figures kept as history for sparklines, per GPU and per service (keys "gpu0.temperature_c",
# "vllm.generation_tokens_per_s", …; see `history_key`).
GPU_SERIES = ("utilization_gpu_pct", "memory_used_pct", "temperature_c", "power_draw_w")
SERVICE_SERIES = (
    "healthy",
    "running_requests",
    "waiting_requests",
    "kv_cache_usage_pct",
    "prompt_tokens_per_s",
    "generation_tokens_per_s",
    "requests_per_s",
    "error_rate_pct",
    "ttft_p95_s",
    "itl_p95_s",
    "e2e_p95_s",
    "local_requests_per_s",
    "remote_requests_per_s",
)


def history_key(subject: str, figure: str) -> str:
    """The history key of a figure: `history_key("gpu0", "temperature_c")`."""
    return f"{subject}.{figure}"


@dataclass(frozen=True)
class MonitorConfig:
    """How often to sample, how long to wait, and over which windows to compute.

    Rates (tokens/s, requests/s, preemptions/s) are over `rate_window_s`, so they follow load
    within seconds; latency quantiles and the error and prefix-cache percentages are over
    `quantile_window_s`, PromQL's usual `[1m]`, so one slow request does not swing the p95.
    """

    interval_s: float = 1.0
    timeout_s: float = 0.5  # per request; a sampler as a whole gets twice this
    rate_window_s: float = 10.0
    quantile_window_s: float = 60.0
    history_points: int = 300
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    # What the running profile already does, so alert advice never suggests it again.
    running: RunningProfile = field(default_factory=RunningProfile)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0:
            msg = "interval_s and timeout_s must be positive"
            raise ValueError(msg)
        if min(self.rate_window_s, self.quantile_window_s) < self.interval_s:
            msg = "a window shorter than the interval would never hold two samples"
            raise ValueError(msg)

    @property
    def window_points(self) -> int:
        """Samples a window may hold: its span at the interval, with room for early ticks."""
        span = max(self.rate_window_s, self.quantile_window_s)
        return math.ceil(span / self.interval_s) * 2 + 4

    @classmethod
    def from_profile(cls, profile: Profile) -> MonitorConfig:
        """The profile's interval and alert thresholds; a sampler gets at most 80 % of a tick."""
        return cls.for_interval(
            profile.spec.monitoring.interval_seconds,
            thresholds=AlertThresholds.from_profile(profile),
            running=RunningProfile.from_profile(profile),
        )

    @classmethod
    def for_interval(
        cls,
        interval_s: float,
        thresholds: AlertThresholds | None = None,
        running: RunningProfile | None = None,
    ) -> MonitorConfig:
        """Sampling every `interval_s`: windows at least one interval wide, timeouts within it."""
        return cls(
            interval_s=interval_s,
            timeout_s=min(0.5, 0.4 * interval_s),
            rate_window_s=max(10.0, interval_s),
            quantile_window_s=max(60.0, interval_s),
            thresholds=thresholds or AlertThresholds(),
            running=running or RunningProfile(),
        )


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def _per_hour(per_second: float | None) -> float | None:
    return None if per_second is None else 3600.0 * per_second


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


class _ServiceTracker:
    """The windows behind one service's rates, ratios and quantiles."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.counters: dict[str, TimeWindow[float]] = {}
        self.histograms: dict[str, TimeWindow[Histogram]] = {}
        self.last_scrape_at: float | None = None
        # The latest scrape's exporter-computed quantiles (`MetricsReading.quantiles`).
        self.exact: Mapping[str, Mapping[float, float | None]] = {}
        # When each histogram last restarted or changed layout: windows after it are one span.
        self.histogram_resets: dict[str, float] = {}
        restart_points = math.ceil(config.thresholds.restart_window_seconds / config.interval_s)
        self.restarts: TimeWindow[float] = TimeWindow(
            config.thresholds.restart_window_seconds, restart_points * 2 + 4
        )

    def record(self, at: float, metrics: MetricsReading) -> None:
        """Add one scrape to the windows.

        A series that first appears in a later scrape of a service already read is taken to
        have been zero at the scrape before (prometheus_client creates a labelled series on its
        first increment; vLLM pre-creates its own, its test double does not). Without that, the
        requests that created the series would never be counted.
        """
        span = max(self.config.rate_window_s, self.config.quantile_window_s)
        points = self.config.window_points
        before = self.last_scrape_at
        for key, value in metrics.counters.items():
            window = self.counters.get(key)
            if window is None:
                window = self.counters[key] = TimeWindow(span, points)
                if before is not None:
                    window.append(before, 0.0)
            window.append(at, value)
        for key, histogram in metrics.histograms.items():
            hist_window = self.histograms.get(key)
            if hist_window is None:
                hist_window = self.histograms[key] = TimeWindow(span, points)
                if before is not None:
                    zeros = (0.0,) * len(histogram.bounds)
                    hist_window.append(before, Histogram(histogram.bounds, zeros, 0.0, 0.0))
            latest = hist_window.latest
            if latest is not None and (
                latest[1].bounds != histogram.bounds or histogram_reset(latest[1], histogram)
            ):
                self.histogram_resets[key] = at
            hist_window.append(at, histogram)
        self.exact = metrics.quantiles
        self.last_scrape_at = at

    def rate(self, key: str, now: float) -> float | None:
        window = self.counters.get(key)
        if window is None:
            return None
        return counter_rate(window.since(now - self.config.rate_window_s))

    def increase(self, key: str, now: float) -> float | None:
        window = self.counters.get(key)
        if window is None:
            return None
        points = window.since(now - self.config.quantile_window_s)
        if len(points) < 2:
            return None
        return counter_increase([value for _, value in points])

    def quantiles(self, key: str, now: float, *qs: float) -> tuple[float | None, ...]:
        """The exporter's own exact quantiles of its recent window where it has them (the
        gateway's last minute), else PromQL's estimate from the histogram's increase over the
        quantile window."""
        exact = self.exact.get(key)
        if exact is not None:
            return tuple(exact.get(q) for q in qs)
        window = self.histograms.get(key)
        if window is None:
            return tuple(None for _ in qs)
        samples = window.since(now - self.config.quantile_window_s)
        if len(samples) >= 2 and self.histogram_resets.get(key, -math.inf) <= samples[0][0]:
            increase: Histogram | None = samples[-1][1].minus(samples[0][1])  # one life: a diff
        else:
            increase = histogram_increase([h for _, h in samples])
        if increase is None:
            return tuple(None for _ in qs)
        buckets = increase.buckets
        return tuple(histogram_quantile(q, buckets) for q in qs)

    def error_rate_pct(self, now: float) -> float | None:
        """Failed share of requests: HTTP 5xx when the engine counts them, else its own count."""
        http = self.increase("http_requests", now)
        if http:
            return ratio_pct(self.increase("http_errors", now), http)
        requests = self.increase("requests", now)
        if not requests:
            return None
        failed = self.increase("requests_failed", now)
        if failed is not None:
            return ratio_pct(failed, requests)
        succeeded = self.increase("requests_succeeded", now)
        if succeeded is None:
            return None
        return ratio_pct(max(0.0, requests - succeeded), requests)

    def remote_share_pct(self, now: float) -> float | None:
        """The gateway's requests sent to the remote fallback, as a share of all it routed."""
        local = self.increase("local_requests", now)
        remote = self.increase("remote_requests", now)
        if local is None or remote is None:
            return None
        return ratio_pct(remote, local + remote)

    def recent_restarts(self, at: float, container: ContainerStatus | None) -> float | None:
        if container is None or container.restart_count is None:
            return None
        self.restarts.append(at, float(container.restart_count))
        return counter_increase(self.restarts.values())

    def stats(
        self, at: float, reading: EndpointReading, container: ContainerStatus | None
    ) -> ServiceStats:
        endpoint = reading.endpoint
        metrics = reading.metrics
        engine = endpoint.engine or (metrics.engine if metrics is not None else None)
        base = ServiceStats(
            name=endpoint.name,
            kind=reading.kind,
            engine=engine if reading.kind == "vllm" else None,
            url=endpoint.base_url,
            healthy=reading.healthy,
            health_error=reading.health_error,
            metrics_error=reading.metrics_error,
            container_state=None if container is None else container.state,
            restart_count=None if container is None else container.restart_count,
        )
        if metrics is None:
            return base
        self.record(at, metrics)
        ttft_p50, ttft_p95 = self.quantiles("ttft", at, 0.5, 0.95)
        itl_p50, itl_p95 = self.quantiles("itl", at, 0.5, 0.95)
        e2e_p50, e2e_p95 = self.quantiles("e2e", at, 0.5, 0.95)
        (queue_p95,) = self.quantiles("queue_time", at, 0.95)
        gauges = metrics.gauges
        return base.model_copy(
            update={
                "model_names": metrics.model_names,
                "running_requests": _rounded(gauges.get("running_requests")),
                "waiting_requests": _rounded(gauges.get("waiting_requests")),
                "kv_cache_usage_pct": _pct(gauges.get("kv_cache_usage")),
                "prompt_tokens_per_s": self.rate("prompt_tokens", at),
                "generation_tokens_per_s": self.rate("generation_tokens", at),
                "requests_per_s": self.rate("requests", at),
                "error_rate_pct": self.error_rate_pct(at),
                "prefix_cache_hit_rate_pct": ratio_pct(
                    self.increase("prefix_cache_hits", at),
                    self.increase("prefix_cache_queries", at),
                ),
                "preemptions_per_s": self.rate("preemptions", at),
                "ttft_p50_s": ttft_p50,
                "ttft_p95_s": ttft_p95,
                "itl_p50_s": itl_p50,
                "itl_p95_s": itl_p95,
                "e2e_p50_s": e2e_p50,
                "e2e_p95_s": e2e_p95,
                "queue_time_p95_s": queue_p95,
                "local_requests_per_s": self.rate("local_requests", at),
                "remote_requests_per_s": self.rate("remote_requests", at),
                "remote_share_pct": self.remote_share_pct(at),
                "models": self.switched_models(at, metrics),
                "switches_per_hour": _per_hour(self.rate("model_switches", at)),
            }
        )

    def switched_models(self, at: float, metrics: MetricsReading) -> tuple[SwitchedModelStats, ...]:
        states = get_args(ModelState)
        return tuple(
            SwitchedModelStats(
                name=model.name,
                state=cast("ModelState", model.state) if model.state in states else None,
                in_flight=_rounded(model.in_flight),
                held=_rounded(model.held),
                pinned=model.pinned,
                wake_seconds=model.wake_seconds,
                switches_per_hour=_per_hour(self.rate(f"{MODEL_WAKES_KEY}{model.name}", at)),
            )
            for model in metrics.switched
        )


class _ThreadCall:
    """A synchronous call run in a worker thread, never started again while still running.

    `inline` calls run on the loop instead: simulated samplers compute their readings from the
    monitor's clock, and a thread scheduled late would read a later time (or miss the tick)."""

    def __init__(self, call: Callable[[], object], name: str, *, inline: bool = False) -> None:
        self.call = call
        self.name = name
        self.inline = inline
        self.task: asyncio.Task[object] | None = None
        self.started: float = 0.0

    async def result(self, timeout_s: float, now: float) -> tuple[object | None, str | None]:
        if self.inline:
            try:
                return self.call(), None
            except Exception as error:  # noqa: BLE001 - a sampler's bug must not stop the monitor
                return None, f"{self.name} failed: {type(error).__name__}: {error}"
        if self.task is None:
            self.task = asyncio.ensure_future(asyncio.to_thread(self.call))
            self.started = now
        done, _ = await asyncio.wait({self.task}, timeout=timeout_s)
        if not done:
            waited = now - self.started
            return None, f"{self.name} has not answered for {waited:.1f} s"
        task, self.task = self.task, None
        try:
            return task.result(), None
        except Exception as error:  # noqa: BLE001 - a sampler's bug must not stop the monitor
            return None, f"{self.name} failed: {type(error).__name__}: {error}"


class Monitor:
    """Samples everything once per tick and keeps what rates, quantiles and sparklines need.

    Use as `async with Monitor(samplers) as monitor:` then `await monitor.tick()` for one
    snapshot or `async for snapshot in monitor.run():` for one a second. `latest` is the last
    snapshot (what the gateway reads); `history` the sparkline series.
    """

    def __init__(
        self,
        samplers: SamplerSet,
        *,
        config: MonitorConfig | None = None,
        clock: AsyncClock | None = None,
    ) -> None:
        self.samplers = samplers
        self.config = config or MonitorConfig()
        self.clock: AsyncClock = clock or AsyncSystemClock()
        self.history = History(capacity=self.config.history_points)
        self.latest: Snapshot | None = None
        self._tick = 0
        self._services: dict[str, _ServiceTracker] = {}
        self._alerts = AlertTracker(self.config.thresholds, self.config.running)
        gpus, runtime = samplers.gpus, samplers.runtime
        self._gpu_call = (
            None
            if gpus is None
            else _ThreadCall(gpus.read, "NVML", inline=getattr(gpus, "runs_inline", False))
        )
        self._runtime_call = (
            None
            if runtime is None
            else _ThreadCall(
                runtime.read,
                "the container runtime",
                inline=getattr(runtime, "runs_inline", False),
            )
        )

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for call in (self._gpu_call, self._runtime_call):
            if call is not None and call.task is not None:
                call.task.cancel()  # the thread finishes on its own; nobody waits for it
        await self.samplers.aclose()

    # -- one tick

    async def _sample(self, sampler: EndpointSampler) -> EndpointReading:
        """One service's reading, by a deadline.

        HTTP samplers time each request out themselves (`timeout_s`), so a slow `/metrics`
        does not hide a healthy `/health`; this deadline, twice as long, is the backstop for a
        sampler that hangs in a way its own timeouts do not catch.
        """
        endpoint: Endpoint = sampler.endpoint
        deadline = 2 * self.config.timeout_s
        try:
            return await asyncio.wait_for(sampler.sample(), deadline)
        except TimeoutError:
            problem = f"no answer from {endpoint.base_url} within {deadline:g} s"
            return EndpointReading(endpoint, False, problem, None, problem)

    async def _gpus(self, now: float) -> GpuReadings | None:
        if self._gpu_call is None:
            return None
        result, problem = await self._gpu_call.result(self.config.timeout_s, now)
        if problem is not None:
            return GpuReadings(error=problem)
        assert isinstance(result, GpuReadings)
        return result

    async def _containers(self, now: float) -> Mapping[str, ContainerStatus] | None:
        if self._runtime_call is None:
            return None
        result, _problem = await self._runtime_call.result(self.config.timeout_s, now)
        if result is None:
            return None  # unknown this tick: restart alerts hold their state
        assert isinstance(result, Mapping)
        return result

    async def tick(self) -> Snapshot:
        """Sample everything once and return the snapshot (also kept as `latest`)."""
        now = self.clock.monotonic()
        wall = self.clock.wall()
        services: Awaitable[list[EndpointReading]] = asyncio.gather(
            *(self._sample(sampler) for sampler in self.samplers.services)
        )
        readings, gpu_readings, containers = await asyncio.gather(
            services, self._gpus(now), self._containers(now)
        )
        stats: list[ServiceStats] = []
        restarts: dict[str, float | None] = {}
        for reading in readings:
            name = reading.endpoint.name
            tracker = self._services.get(name)
            if tracker is None:
                tracker = self._services[name] = _ServiceTracker(self.config)
            container = None if containers is None else containers.get(name)
            stats.append(tracker.stats(now, reading, container))
            if self._runtime_call is not None:
                restarts[name] = tracker.recent_restarts(now, container)
        gpus: tuple[GpuStats, ...] = () if gpu_readings is None else gpu_readings.gpus
        alerts = self._alerts.update(observe(gpus, stats, restarts), now=now, now_wall=wall)
        self._tick += 1
        snapshot = Snapshot(
            tick=self._tick,
            taken_at=Timestamp(monotonic=now, wall=wall),
            interval_s=self.config.interval_s,
            simulated=self.samplers.simulated,
            gpus=gpus,
            gpu_error=None if gpu_readings is None else gpu_readings.error,
            services=tuple(stats),
            alerts=alerts,
            latency=LatencySummary.of(stats),
        )
        self._record_history(snapshot)
        self.latest = snapshot
        return snapshot

    def _record_history(self, snapshot: Snapshot) -> None:
        at = snapshot.taken_at.monotonic
        record = self.history.record
        for gpu in snapshot.gpus:
            subject = f"gpu{gpu.index}"
            for figure in GPU_SERIES:
                value = getattr(gpu, figure)
                record(history_key(subject, figure), at, None if value is None else float(value))
        for service in snapshot.services:
            for figure in SERVICE_SERIES:
                value = getattr(service, figure)
                record(
                    history_key(service.name, figure), at, None if value is None else float(value)
                )

    # -- the loop

    async def run(self, count: int | None = None) -> AsyncIterator[Snapshot]:
        """One snapshot per interval, `count` of them (None: until cancelled).

        Ticks keep to a fixed cadence: a slow tick shortens the next wait, and ticks missed
        entirely are skipped rather than run back to back.
        """
        interval = self.config.interval_s
        due = self.clock.monotonic()
        taken = 0
        while count is None or taken < count:
            yield await self.tick()
            taken += 1
            if count is not None and taken >= count:
                return
            due += interval
            now = self.clock.monotonic()
            if due < now:  # we fell behind: skip to the next slot in the future
                due += math.ceil((now - due) / interval) * interval
            await self.clock.sleep(due - now)


class EngineLoadSignal:
    """One engine's load and health from a monitor's latest snapshot, as the gateway reads them.

    It has the shape of the gateway's `LoadSignal`: `waiting_requests()`, `healthy()` and
    `age_seconds` (None until the monitor's first tick). The gateway decides whether the reading
    is fresh enough; this only reports how old it is.
    """

    def __init__(
        self,
        latest: Callable[[], Snapshot | None],
        service: str = "vllm",
        clock: AsyncClock | None = None,
    ) -> None:
        self.latest = latest
        self.service = service
        self.clock: AsyncClock = clock or AsyncSystemClock()

    @classmethod
    def of(cls, monitor: Monitor, service: str = "vllm") -> EngineLoadSignal:
        return cls(lambda: monitor.latest, service, monitor.clock)

    def _stats(self) -> ServiceStats | None:
        snapshot = self.latest()
        return None if snapshot is None else snapshot.service(self.service)

    def waiting_requests(self) -> int | None:
        stats = self._stats()
        return None if stats is None else stats.waiting_requests

    def healthy(self) -> bool | None:
        stats = self._stats()
        return None if stats is None else stats.healthy

    def problem(self) -> str | None:
        """Why the engine is not healthy, in a person's words (the gateway logs it)."""
        stats = self._stats()
        return None if stats is None else stats.health_error

    @property
    def age_seconds(self) -> float | None:
        snapshot = self.latest()
        return None if snapshot is None else snapshot.age_s(self.clock.monotonic())
