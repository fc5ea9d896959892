"""Thresholds with hysteresis, and one line on what to do about each alert. Pure: no IO, no clock.

An alert is raised when its value has stayed above the raise threshold for `sustain_seconds`, and
cleared when it has stayed at or below a lower clear threshold for as long; in between nothing
changes, so a value hovering around a threshold does not flap. Times are the monitor's monotonic
tick times, passed in.

What must stay true:
- A value that cannot be read this tick (`None`) changes nothing: an alert neither starts
  counting nor clears because an engine stopped answering (being down has its own alert).
- A subject that is no longer observed at all (a service removed) drops its alerts.
- Every alert has a suggestion an operator can act on, naming the profile setting to change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from appliance.monitor.snapshot import Alert, GpuStats, ServiceStats, Severity

if TYPE_CHECKING:
    from appliance.profile import Profile

# Throttle reasons that mean the card is slowing down to protect itself (not idling, not an
# application clock setting, not the ordinary power cap a busy GPU sits at).
PROTECTIVE_THROTTLE_REASONS = frozenset(
    {"hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"}
)


@dataclass(frozen=True)
class AlertThresholds:
    """When alerts are raised. Defaults are the profile's (`spec.monitoring.alerts`).

    Each alert clears at a lower level than it is raised at: temperature 5 °C lower, GPU memory
    3 points lower, KV cache 10 points lower, waiting requests, error rate at half, TTFT p95 at
    three quarters.
    """

    gpu_temperature_c: float = 80.0
    gpu_memory_used_pct: float = 99.0
    kv_cache_usage_pct: float = 90.0
    waiting_requests: float = 16.0
    ttft_p95_seconds: float = 2.0
    error_rate_pct: float = 5.0
    # How long a condition must hold before it is raised, and be gone before it clears.
    sustain_seconds: float = 30.0
    # Failed health checks are acted on sooner: a dead engine is not a trend.
    unhealthy_seconds: float = 3.0
    # A container restart stays an alert this long after it happened.
    restart_window_seconds: float = 600.0

    @property
    def gpu_temperature_clear_c(self) -> float:
        return self.gpu_temperature_c - 5.0

    @property
    def gpu_memory_used_clear_pct(self) -> float:
        return self.gpu_memory_used_pct - 3.0

    @property
    def kv_cache_usage_clear_pct(self) -> float:
        return self.kv_cache_usage_pct - 10.0

    @property
    def waiting_requests_clear(self) -> float:
        return self.waiting_requests / 2

    @property
    def ttft_p95_clear_seconds(self) -> float:
        return self.ttft_p95_seconds * 0.75

    @property
    def error_rate_clear_pct(self) -> float:
        return self.error_rate_pct / 2

    def immediate(self) -> AlertThresholds:
        """The same thresholds acted on at once: for one-shot checks (`status --check`, cron)."""
        return replace(self, sustain_seconds=0.0, unhealthy_seconds=0.0)

    @classmethod
    def from_profile(cls, profile: Profile) -> AlertThresholds:
        """The thresholds of a profile's `spec.monitoring.alerts`."""
        alerts = profile.spec.monitoring.alerts
        return cls(
            gpu_temperature_c=float(alerts.gpu_temperature_c),
            gpu_memory_used_pct=alerts.gpu_memory_used_pct,
            kv_cache_usage_pct=alerts.kv_cache_usage_pct,
            waiting_requests=float(alerts.waiting_requests),
            ttft_p95_seconds=alerts.ttft_p95_seconds,
            error_rate_pct=alerts.error_rate_pct,
            sustain_seconds=alerts.sustain_seconds,
        )


@dataclass(frozen=True)
class RunningProfile:
    """What the running profile already does, so that advice never suggests it again (and never
    points at a fallback the profile cannot use). None is unknown (`scrape`, `--simulate`
    without a profile): then every option is offered."""

    prefix_caching: bool | None = None
    kv_cache_fp8: bool | None = None
    remote_fallback: bool | None = None

    @classmethod
    def from_profile(cls, profile: Profile) -> RunningProfile:
        engine = profile.spec.engine
        return cls(
            prefix_caching=engine.enable_prefix_caching,
            kv_cache_fp8=engine.kv_cache_dtype != "auto",
            remote_fallback=profile.spec.gateway.fallback.remote is not None,
        )


# The gateway is no container but the appliance's systemd unit (`gateway.service.UNIT_NAME`,
# not imported: this module stays pure); its logs are the journal's.
GATEWAY_UNHEALTHY = (
    "systemctl status llm-appliance-gateway and journalctl -u llm-appliance-gateway say why; "
    "`appliance apply PROFILE` installs and starts it"
)


def _advice(*options: tuple[str, bool | None]) -> str:
    """The options that still apply (`(text, already done)`), as one line: "a, b, or c"."""
    kept = [text for text, done in options if done is not True]
    if len(kept) <= 2:
        return " or ".join(kept)
    return f"{', '.join(kept[:-1])}, or {kept[-1]}"


@dataclass(frozen=True)
class Rule:
    """How one kind of alert is raised and cleared, and what it tells the operator."""

    code: str
    severity: Severity
    raise_above: float
    clear_at_or_below: float
    raise_after_s: float
    clear_after_s: float
    what: str  # "{subject}" and "{value}" are filled in
    suggestion: str
    level: str = ""  # how a threshold is written ("{:.1f} s"); "" for yes/no conditions


@dataclass(frozen=True)
class Observation:
    """One value a rule judges this tick, for one subject (a GPU or a service)."""

    code: str
    subject: str
    value: float | None


def rules(thresholds: AlertThresholds, running: RunningProfile | None = None) -> dict[str, Rule]:
    """Every rule, by code, at these thresholds, advising for the profile that runs."""
    t = thresholds
    r = running or RunningProfile()
    sustain = t.sustain_seconds
    no_remote = None if r.remote_fallback is None else not r.remote_fallback
    # Gateway fallback sends traffic to the remote API: advice only where the profile names one.
    fallback = ("set gateway fallback to auto", no_remote)
    fp8 = ("set kv_cache_dtype: fp8", r.kv_cache_fp8)
    return {
        rule.code: rule
        for rule in (
            Rule(
                "gpu-temperature", "warning", t.gpu_temperature_c, t.gpu_temperature_clear_c,
                sustain, sustain,
                "{subject} is at {value:.0f} °C",
                "check the fans and the airflow around the card; a hot GPU slows its clocks",
                "{:.0f} °C",
            ),
            Rule(
                "gpu-memory", "warning", t.gpu_memory_used_pct, t.gpu_memory_used_clear_pct,
                sustain, sustain,
                "{subject} memory is {value:.1f} % used",
                "another process holds GPU memory (see its processes), or lower "
                "spec.engine.gpu_memory_utilization",
                "{:.0f} %",
            ),
            Rule(
                "gpu-throttled", "warning", 0.5, 0.5, sustain, sustain,
                "{subject} is slowing its clocks for heat or power",
                "check cooling and the power supply; nvidia-smi -q -d PERFORMANCE says why",
            ),
            Rule(
                "gpu-ecc-errors", "critical", 0.0, 0.0, 0.0, 0.0,
                "{subject} has {value:.0f} uncorrectable memory errors",
                "drain the box and reset the GPU (nvidia-smi -r), or have the card checked"
                + ("" if no_remote else "; gateway fallback auto keeps serving meanwhile"),
            ),
            Rule(
                "service-unhealthy", "critical", 0.5, 0.5, t.unhealthy_seconds,
                t.unhealthy_seconds,
                "{subject} is not healthy",
                "read its container logs (docker logs)"
                + ("" if no_remote else "; set gateway fallback to auto to keep serving"),
            ),
            Rule(
                "container-restarts", "critical", 0.0, 0.0, 0.0, 0.0,
                "{subject} restarted {value:.0f} time(s) recently",
                "it is crash-looping or was OOM-killed: read its container logs (docker logs); "
                "a smaller max_model_len or gpu_memory_utilization often helps",
            ),
            Rule(
                "kv-cache-full", "warning", t.kv_cache_usage_pct, t.kv_cache_usage_clear_pct,
                sustain, sustain,
                "{subject} KV cache is {value:.0f} % full",
                _advice(("lower spec.engine.max_num_seqs", False), fp8, fallback),
                "{:.0f} %",
            ),
            Rule(
                "preemptions", "warning", 0.0, 0.0, sustain, sustain,
                "{subject} is preempting requests ({value:.2f}/s) for lack of KV cache",
                _advice(("lower spec.engine.max_num_seqs or max_model_len", False), fp8),
            ),
            Rule(
                "requests-waiting", "warning", t.waiting_requests, t.waiting_requests_clear,
                sustain, sustain,
                "{subject} has {value:.0f} requests waiting",
                _advice(
                    ("set gateway fallback to auto to overflow the queue", no_remote),
                    ("lower spec.engine.max_model_len so more requests fit at once", False),
                ),
                "{:.0f}",
            ),
            Rule(
                "embeddings-waiting", "warning", t.waiting_requests, t.waiting_requests_clear,
                sustain, sustain,
                "{subject} has {value:.0f} embedding requests queued",
                "raise spec.embeddings.max_batch_tokens if GPU memory allows, or give TEI "
                "its own GPU",
                "{:.0f}",
            ),
            Rule(
                "ttft-slow", "warning", t.ttft_p95_seconds, t.ttft_p95_clear_seconds,
                sustain, sustain,
                "{subject} time to first token p95 is {value:.2f} s",
                _advice(
                    ("set enable_prefix_caching: true", r.prefix_caching),
                    ("lower spec.engine.max_num_seqs", False),
                    fallback,
                ),
                "{:.1f} s",
            ),
            Rule(
                "error-rate", "warning", t.error_rate_pct, t.error_rate_clear_pct,
                sustain, sustain,
                "{subject} is failing {value:.1f} % of requests",
                "read the engine's container logs (docker logs)"
                + ("" if no_remote else "; gateway fallback auto sends traffic elsewhere "
                   "meanwhile"),
                "{:.1f} %",
            ),
        )
    }  # fmt: skip


def _protective_throttling(gpu: GpuStats) -> float | None:
    if gpu.throttle_reasons is None:
        return None
    return 1.0 if PROTECTIVE_THROTTLE_REASONS.intersection(gpu.throttle_reasons) else 0.0


def observe(
    gpus: Iterable[GpuStats],
    services: Iterable[ServiceStats],
    recent_restarts: dict[str, float | None] | None = None,
) -> list[Observation]:
    """What the rules judge this tick. `recent_restarts`: restarts per service in the window."""
    found: list[Observation] = []
    for gpu in gpus:
        subject = f"gpu{gpu.index}"
        found += [
            Observation("gpu-temperature", subject, gpu.temperature_c),
            Observation("gpu-memory", subject, gpu.memory_used_pct),
            Observation("gpu-throttled", subject, _protective_throttling(gpu)),
            Observation(
                "gpu-ecc-errors",
                subject,
                None if gpu.ecc_errors_uncorrected is None else float(gpu.ecc_errors_uncorrected),
            ),
        ]
    restarts = recent_restarts or {}
    services = tuple(services)
    # TTFT as users feel it (the gateway's, issue #17) when the gateway measures it; else vLLM's
    # server-side figure. The alert's subject says which one it read.
    user_ttft = next(
        (s for s in services if s.kind == "gateway" and s.ttft_p95_s is not None), None
    )
    if user_ttft is not None:
        found.append(Observation("ttft-slow", user_ttft.name, user_ttft.ttft_p95_s))
    for service in services:
        name = service.name
        found.append(Observation("service-unhealthy", name, 0.0 if service.healthy else 1.0))
        if name in restarts:
            found.append(Observation("container-restarts", name, restarts[name]))
        if service.kind == "vllm":
            kv = service.kv_cache_usage_pct
            found += [
                Observation("kv-cache-full", name, kv),
                Observation("preemptions", name, service.preemptions_per_s),
                Observation("requests-waiting", name, service.waiting_requests),
            ]
            if user_ttft is None:
                found.append(Observation("ttft-slow", name, service.ttft_p95_s))
        elif service.kind == "tei":
            found.append(Observation("embeddings-waiting", name, service.waiting_requests))
        if service.is_engine:
            found.append(Observation("error-rate", name, service.error_rate_pct))
    return found


@dataclass
class _State:
    above_since: float | None = None
    below_since: float | None = None
    active: bool = False
    raised_at_wall: float = 0.0
    value: float | None = None


class AlertTracker:
    """The hysteresis state of every (rule, subject), updated once per tick. No IO, no clock."""

    def __init__(
        self, thresholds: AlertThresholds | None = None, running: RunningProfile | None = None
    ) -> None:
        self.thresholds = thresholds or AlertThresholds()
        self.rules = rules(self.thresholds, running)
        self._states: dict[tuple[str, str], _State] = {}
        self._now = 0.0  # the last tick judged: how long an alert has been clearing

    def update(
        self, observations: Sequence[Observation], *, now: float, now_wall: float
    ) -> tuple[Alert, ...]:
        """Judge this tick's observations (`now` monotonic); return the alerts now active."""
        self._now = now
        seen: set[tuple[str, str]] = set()
        for observation in observations:
            rule = self.rules[observation.code]
            key = (observation.code, observation.subject)
            seen.add(key)
            state = self._states.setdefault(key, _State())
            self._step(rule, state, observation.value, now=now, now_wall=now_wall)
        for key in set(self._states) - seen:
            del self._states[key]
        return self.active()

    @staticmethod
    def _step(
        rule: Rule, state: _State, value: float | None, *, now: float, now_wall: float
    ) -> None:
        if value is None:
            return
        state.value = value
        if not state.active:
            if value > rule.raise_above:
                if state.above_since is None:
                    state.above_since = now
                if now - state.above_since >= rule.raise_after_s:
                    state.active, state.raised_at_wall, state.below_since = True, now_wall, None
            else:
                state.above_since = None
            return
        if value <= rule.clear_at_or_below:
            if state.below_since is None:
                state.below_since = now
            if now - state.below_since >= rule.clear_after_s:
                state.active, state.above_since, state.below_since = False, None, None
        else:
            state.below_since = None

    def active(self) -> tuple[Alert, ...]:
        """Active alerts, critical first, then by subject and code."""
        alerts = [
            self._alert(self.rules[code], subject, state)
            for (code, subject), state in self._states.items()
            if state.active
        ]
        order = {"critical": 0, "warning": 1}
        return tuple(sorted(alerts, key=lambda a: (order[a.severity], a.subject, a.code)))

    def _alert(self, rule: Rule, subject: str, state: _State) -> Alert:
        value = state.value
        clears_in = None
        if state.below_since is not None:  # at or below the clear level: counting down
            clears_in = max(0.0, rule.clear_after_s - (self._now - state.below_since))
        return Alert(
            code=rule.code,
            severity=rule.severity,
            subject=subject,
            message=rule.what.format(subject=subject, value=value if value is not None else 0.0),
            suggestion=(
                GATEWAY_UNHEALTHY
                if (rule.code, subject) == ("service-unhealthy", "gateway")
                else rule.suggestion
            ),
            value=value,
            threshold=rule.raise_above,
            since=state.raised_at_wall,
            clear_threshold=rule.clear_at_or_below,
            limit=f"> {rule.level.format(rule.raise_above)}" if rule.level else "",
            clear_limit=f"≤ {rule.level.format(rule.clear_at_or_below)}" if rule.level else "",
            clears_in_s=clears_in,
        )
