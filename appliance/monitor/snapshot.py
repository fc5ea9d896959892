"""`Snapshot`: everything the monitor knows at one tick, as one frozen object that prints as JSON.

The CLI (`appliance status`), the TUI's Monitor screen, the gateway's auto-fallback and the cost
report all read this object and nothing else. It is built once per tick and never changed: to see
newer numbers, take the next snapshot.

What must stay true:
- A number that could not be read or computed (no NVML, an engine down, no traffic in the
  window) is `None`, never 0.
- `taken_at` carries both clocks: `monotonic` (seconds on this machine's monotonic clock, for
  freshness checks: `snapshot.age_s(time.monotonic())`) and `wall` (Unix time, for people).
- A snapshot dumped to JSON validates back into an equal snapshot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from appliance.hardware.box import GpuProcess
from appliance.vocabulary import EngineKind, ModelState

ServiceKind = Literal["vllm", "tei", "gateway", "http"]
"""vllm and tei are engines (health and metrics); gateway is the appliance's gateway (health and
requests by destination); http is health only."""
Severity = Literal["critical", "warning"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timestamp(_Frozen):
    """When a snapshot was taken, on both clocks."""

    monotonic: float
    wall: float

    @property
    def wall_datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall, tz=dt.UTC)


class GpuStats(_Frozen):
    """One GPU at one tick, in the units nvidia-smi shows. None: NVML cannot say on this card."""

    index: int
    name: str | None = None
    uuid: str | None = None
    utilization_gpu_pct: float | None = None
    utilization_memory_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    # NVML's clock-event ("throttle") reasons that are active, by name: "sw_power_cap",
    # "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake", … (see samplers.THROTTLE_REASONS)
    throttle_reasons: tuple[str, ...] | None = None
    ecc_errors_corrected: int | None = None  # volatile: since the driver last loaded
    ecc_errors_uncorrected: int | None = None
    processes: tuple[GpuProcess, ...] | None = None
    error: str | None = None  # the GPU could not be read at all (e.g. "GPU is lost")

    @property
    def memory_used_pct(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes


class SwitchedModelStats(_Frozen):
    """One of several chat models behind the gateway (spec.switching), as the gateway's
    /metrics shows it: its state, requests in flight and held for its wake, whether an admin
    pinned it awake, its last wake's time (the whole switch, what held requests waited at
    least) and its wakes per hour over the monitor's rate window."""

    name: str
    state: ModelState | None = None
    in_flight: int | None = None
    held: int | None = None
    pinned: bool = False
    wake_seconds: float | None = None
    switches_per_hour: float | None = None


class ServiceStats(_Frozen):
    """One service (vLLM, TEI, the gateway) at one tick: health, load, throughput, latency.

    Rates are per second over the monitor's rate window; latency quantiles and the error and
    prefix-cache percentages are over its quantile window (PromQL's `histogram_quantile` over a
    `rate`). Latencies are in seconds.
    """

    name: str
    kind: ServiceKind
    # The server in the chat role (kind "vllm" is the role): vllm or sglang. None elsewhere.
    engine: EngineKind | None = None
    url: str
    healthy: bool
    health_error: str | None = None  # why it is not healthy, in a person's words
    metrics_error: str | None = None  # why /metrics could not be read (the service may be up)
    model_names: tuple[str, ...] = ()
    running_requests: int | None = None
    waiting_requests: int | None = None
    kv_cache_usage_pct: float | None = None
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    error_rate_pct: float | None = None
    prefix_cache_hit_rate_pct: float | None = None
    preemptions_per_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p95_s: float | None = None
    queue_time_p95_s: float | None = None
    # The gateway's requests by where it sent them: this box's engines, or the remote fallback
    # (rates over the rate window; the remote share over the quantile window, like error_rate_pct).
    local_requests_per_s: float | None = None
    remote_requests_per_s: float | None = None
    remote_share_pct: float | None = None
    # The gateway's switched chat models (spec.switching), and its switches per hour (rate
    # window); () and None without switching.
    models: tuple[SwitchedModelStats, ...] = ()
    switches_per_hour: float | None = None
    # From the container runtime, when the monitor is given one; None otherwise.
    container_state: str | None = None
    restart_count: int | None = None

    @property
    def is_engine(self) -> bool:
        return self.kind in ("vllm", "tei")

    @property
    def label(self) -> str:
        """The name shown to a person: the chat role's server when it is not the role's name
        (`sglang` for the service named `vllm` that SGLang serves). `name` stays the key that
        history, alerts and `status --json` use."""
        if self.kind == "vllm" and self.engine is not None and self.name == "vllm":
            return self.engine
        return self.name

    @property
    def engine_title(self) -> str:
        """The chat server's name as written in prose: "SGLang" or "vLLM"."""
        return ENGINE_TITLES[self.engine or "vllm"]


# The chat servers' names as their projects write them.
ENGINE_TITLES: dict[EngineKind, str] = {"vllm": "vLLM", "sglang": "SGLang"}


class Alert(_Frozen):
    """A condition that held long enough to be raised, and what to do about it."""

    code: str  # stable: scripts and the TUI key on it (e.g. "kv-cache-full")
    severity: Severity
    subject: str  # the service name or "gpu0", "gpu1", …
    message: str  # what is wrong, with the number
    suggestion: str  # one line: what to do
    value: float | None = None
    threshold: float
    since: float  # Unix time the alert was raised
    clear_threshold: float | None = None  # it clears once at or below this for a while
    limit: str = ""  # the raise threshold in words ("> 2.0 s"); "" for yes/no conditions
    clear_limit: str = ""  # the clear threshold in words ("≤ 1.5 s")
    clears_in_s: float | None = None  # at or below the clear level: seconds until it clears

    def headline(self) -> str:
        """The message with its threshold and, once the value is back down, when it clears:
        "vllm time to first token p95 is 0.71 s (> 2.0 s) — clearing in 24 s"."""
        text = f"{self.message} ({self.limit})" if self.limit else self.message
        if self.clears_in_s is not None:
            return f"{text} — clearing in {self.clears_in_s:.0f} s"
        if self.clear_limit and self.value is not None and self.value <= self.threshold:
            return f"{text} — clears once {self.clear_limit}"
        return text

    def render(self) -> str:
        return f"[{self.severity}] {self.headline()}\n  → {self.suggestion}"


class Quantiles(_Frozen):
    """p50 and p95 of one latency over the monitor's quantile window, in seconds."""

    p50: float | None = None
    p95: float | None = None


class LatencyFigures(_Frozen):
    """Time to first token and end-to-end latency as one place measured them."""

    ttft_seconds: Quantiles = Quantiles()
    e2e_seconds: Quantiles = Quantiles()


class LatencySummary(_Frozen):
    """What users feel beside what the engine measures (issue #17).

    `gateway`: measured at the gateway, from a request's arrival to the first / last byte sent to
    the client, the exact percentiles of its last minute's answers, all destinations and models
    (`appliance_gateway_recent_ttft_seconds`, `appliance_gateway_recent_e2e_seconds`; from a
    gateway without them, PromQL's estimate from `appliance_gateway_ttft_seconds` and
    `appliance_gateway_e2e_seconds`). `vllm`: vLLM's server-side figures. In `status --json`
    these are `latency.gateway.ttft_seconds.p50`, `latency.gateway.ttft_seconds.p95`,
    `latency.gateway.e2e_seconds.p50`, `latency.gateway.e2e_seconds.p95` and the same under
    `latency.vllm`; `latency.ttft_source` names the one the TTFT alert reads ("gateway" when the
    gateway has a figure, else "vllm", None with neither).
    """

    gateway: LatencyFigures = LatencyFigures()
    vllm: LatencyFigures = LatencyFigures()
    ttft_source: Literal["gateway", "vllm"] | None = None

    @classmethod
    def of(cls, services: Sequence[ServiceStats]) -> LatencySummary:
        def figures(kind: str) -> LatencyFigures:
            service = next((s for s in services if s.kind == kind), None)
            if service is None:
                return LatencyFigures()
            return LatencyFigures(
                ttft_seconds=Quantiles(p50=service.ttft_p50_s, p95=service.ttft_p95_s),
                e2e_seconds=Quantiles(p50=service.e2e_p50_s, p95=service.e2e_p95_s),
            )

        gateway, vllm = figures("gateway"), figures("vllm")
        source: Literal["gateway", "vllm"] | None = None
        if gateway.ttft_seconds.p95 is not None:
            source = "gateway"
        elif vllm.ttft_seconds.p95 is not None:
            source = "vllm"
        return cls(gateway=gateway, vllm=vllm, ttft_source=source)


class Snapshot(_Frozen):
    """The monitor's whole state at one tick."""

    tick: int
    taken_at: Timestamp
    interval_s: float
    simulated: bool = False
    gpus: tuple[GpuStats, ...] = ()
    gpu_error: str | None = None  # NVML could not be read at all this tick
    services: tuple[ServiceStats, ...] = ()
    alerts: tuple[Alert, ...] = ()
    latency: LatencySummary = LatencySummary()

    def service(self, name: str) -> ServiceStats | None:
        """The service of this name (e.g. "vllm", "tei", "gateway"), or None."""
        return next((service for service in self.services if service.name == name), None)

    def engine(self, kind: Literal["vllm", "tei"]) -> ServiceStats | None:
        """The first engine of this kind, or None."""
        return next((service for service in self.services if service.kind == kind), None)

    @property
    def engines(self) -> tuple[ServiceStats, ...]:
        return tuple(service for service in self.services if service.is_engine)

    def age_s(self, now_monotonic: float) -> float:
        """Seconds since the snapshot was taken, on the monotonic clock."""
        return now_monotonic - self.taken_at.monotonic

    def is_fresh(self, now_monotonic: float, max_age_s: float) -> bool:
        """Whether the snapshot is recent enough to route by (the gateway's check)."""
        return 0.0 <= self.age_s(now_monotonic) <= max_age_s

    def alerts_for(self, subject: str) -> tuple[Alert, ...]:
        return tuple(alert for alert in self.alerts if alert.subject == subject)
