"""`status`: blocking functions over the async monitor, and the monitor wiring both faces use.

They return data or raise `appliance.errors` exceptions; they never print and never exit. The
CLI chooses the samplers (`profile_samplers`, `url_samplers`, `simulated`), then:

- `status`          → `sample_status(samplers)` then `render_status(snapshot)` (render.py)
- `status --json`   → `sample_status(samplers).model_dump_json(indent=2)`
- `status --watch`  → `watch_status(samplers, on_snapshot)`, redrawing in `on_snapshot`
- `status --check`  → `check_status(samplers)`: raises `AlertsActiveError` (exit 1) with the
                      alerts, judged at once rather than after `sustain_seconds`
- `scrape URL…`     → `watch_status(url_samplers(urls), on_snapshot, count=N, config=…)`

A single snapshot is taken after `ticks` ticks (default 2, one interval apart): rates and
quantiles need two scrapes to say anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx

from appliance.clock import AsyncClock, AsyncSystemClock
from appliance.errors import ApplianceError, BadInputError, OperationFailedError
from appliance.monitor.monitor import Monitor, MonitorConfig
from appliance.monitor.samplers import (
    ContainersRuntimeSource,
    ContainerStatus,
    Endpoint,
    GpuSampler,
    NvmlGpuSampler,
    RuntimeSource,
    SamplerSet,
    http_samplers,
)
from appliance.monitor.series import History
from appliance.monitor.simulated import simulated_samplers
from appliance.monitor.snapshot import Snapshot
from appliance.vocabulary import EngineKind

if TYPE_CHECKING:
    from appliance.profile import Profile
    from appliance.runtime.docker import DockerEngine

OnSnapshot = Callable[[Snapshot, History], None]


class AlertsActiveError(OperationFailedError):
    """`status --check` found active alerts; `snapshot` is what it saw."""

    def __init__(self, snapshot: Snapshot) -> None:
        alerts = snapshot.alerts
        message = f"{len(alerts)} alert(s) active:\n" + "\n".join(
            f"  [{alert.severity}] {alert.headline()}" for alert in alerts
        )
        hint = "\n  → ".join(dict.fromkeys(alert.suggestion for alert in alerts))
        super().__init__(message, hint=hint)
        self.snapshot = snapshot


# ---------------------------------------------------------------------------------- samplers


class DockerRuntime:
    """Container states and restart counts of a profile's containers, from the Docker engine:
    the `RuntimeSource` that `status` and the TUI's Monitor both give the monitor.

    It connects on its first read, which the monitor makes in a worker thread (never on the
    caller's event loop), and again after the engine stopped answering; a read that fails is
    "unknown this tick", so restart alerts hold their state.
    """

    def __init__(self, profile_name: str, base_url: str | None = None) -> None:
        self.profile_name = profile_name
        self.base_url = base_url
        self._engine: DockerEngine | None = None

    def read(self) -> Mapping[str, ContainerStatus]:
        engine = self._engine
        if engine is None:
            from appliance.runtime.docker import DockerEngine

            engine = self._engine = DockerEngine(self.base_url, timeout_s=3)
        try:
            return ContainersRuntimeSource(engine, self.profile_name).read()
        except ApplianceError:
            self.close()  # reconnect on the next read
            raise

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


def profile_endpoints(profile: Profile, host: str = "127.0.0.1") -> tuple[Endpoint, ...]:
    """The profile's services: each chat engine (spec.model's "vllm", then with spec.switching
    every further model's, "vllm-2", …), TEI when enabled, and the gateway.

    Engines listen on 127.0.0.1; the gateway is asked on its own address when it listens on
    one address only, and over HTTPS when it serves TLS.
    """
    from appliance.gateway.config import gateway_base_url
    from appliance.runtime.apply import chat_engines

    spec = profile.spec
    live = _live_chat_ports(profile)
    endpoints = [
        Endpoint(
            engine.service,
            "vllm",
            f"http://{host}:{live.get(engine.served_name, engine.port)}",
            engine=engine.view.spec.engine.kind,
        )
        for engine in chat_engines(profile).values()
    ]
    if spec.embeddings_enabled:
        endpoints.append(Endpoint("tei", "tei", f"http://{host}:{spec.ports.tei}"))
    endpoints.append(Endpoint("gateway", "gateway", gateway_base_url(profile, host)))
    return tuple(endpoints)


def _live_chat_ports(profile: Profile) -> dict[str, int]:
    """Chat engines a blue/green model update moved, by served name: each to the port its
    rollout upstream names, its own or spec.ports.vllm_update (the two take turns). Engines not
    named there are on their own port."""
    from appliance.gateway.config import gateway_state_dir
    from appliance.gateway.rollout import ROLLOUT_FILE, read_rollout
    from appliance.runtime.apply import chat_engines

    try:
        rollout = read_rollout(gateway_state_dir(profile) / ROLLOUT_FILE)
    except ApplianceError:
        return {}
    spare = profile.spec.ports.vllm_update
    moved: dict[str, int] = {}
    for engine in chat_engines(profile).values():
        upstream = rollout.upstreams.get(engine.served_name)
        if upstream is None and engine.service == "vllm":
            upstream = rollout.chat_upstream
        try:
            port = None if upstream is None else httpx.URL(upstream).port
        except httpx.InvalidURL:
            port = None
        if port in (engine.port, spare):
            moved[engine.served_name] = port
    return moved


def profile_samplers(
    profile: Profile,
    *,
    gpus: GpuSampler | None = None,
    runtime: RuntimeSource | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SamplerSet:
    """Samplers for the services a profile runs; GPUs from the driver's NVML unless given.

    `runtime` (e.g. `ContainersRuntimeSource(docker_runtime, profile.metadata.name)`) adds
    container states and restart counts. A gateway that serves TLS is checked against its own
    certificate (`gateway_trust`), so a self-signed one shows the gateway up, not "cannot
    connect"; `EnvironmentNotReadyError` when that certificate cannot be read.
    """
    from appliance.gateway.config import gateway_trust

    trust = gateway_trust(profile)
    if gpus is None:
        from appliance.hardware.nvml import LiveNvml

        gpus = NvmlGpuSampler(LiveNvml())
    config = MonitorConfig.from_profile(profile)
    return http_samplers(
        profile_endpoints(profile),
        gpus=gpus,
        runtime=runtime,
        timeout_s=config.timeout_s,
        transport=transport,
        verify=trust,
    )


def parse_url(url: str) -> Endpoint:
    """An engine's base URL (`http://host:port`, or `host:port`) as an auto-detected endpoint.

    A URL ending in `/metrics` is taken as the metrics page itself. Raises `BadInputError`.
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as error:
        raise BadInputError(
            f"not a URL: {url!r} ({error})", hint="write http://host:port"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadInputError(
            f"not an http(s) URL with a host: {url!r}", hint="write e.g. http://127.0.0.1:8000"
        )
    path = parsed.path.rstrip("/")
    if path.endswith("/metrics"):
        path = path[: -len("/metrics")]
    base = str(parsed.copy_with(path=path or "/", query=None, fragment=None)).rstrip("/")
    port = f":{parsed.port}" if parsed.port else ""
    return Endpoint(f"{parsed.host}{port}{path}", "auto", base)


def url_samplers(
    urls: Sequence[str],
    *,
    timeout_s: float = 2.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SamplerSet:
    """Samplers for engines the appliance did not start (`appliance scrape URL…`); no GPUs.

    vLLM or TEI is told from each endpoint's metrics. Raises `BadInputError` for a bad URL or
    none at all.
    """
    if not urls:
        raise BadInputError("no URL to scrape", hint="give one or more, e.g. http://127.0.0.1:8000")
    endpoints = [parse_url(url) for url in urls]
    names = [endpoint.name for endpoint in endpoints]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BadInputError(f"URL given twice: {', '.join(duplicates)}", hint="give each once")
    return http_samplers(endpoints, timeout_s=timeout_s, transport=transport)


def simulated(
    box: str = "rtx4090",
    *,
    clock: AsyncClock | None = None,
    seed: int = 0,
    embeddings: bool = True,
    fallback_mode: Callable[[], str] | None = None,
    model: str = "simulated-chat",
    not_running: str | None = None,
    engine: EngineKind = "vllm",
) -> tuple[SamplerSet, AsyncClock]:
    """Simulated samplers (`--simulate BOX`), and the clock to give the monitor with them.

    `fallback_mode` is what the simulated gateway routes by (None: "auto"); `model`, the name
    vLLM serves; `not_running`, why nothing runs (the profile cannot fit this box).
    """
    clock = clock or AsyncSystemClock()
    samplers = simulated_samplers(
        box,
        now=clock.monotonic,
        seed=seed,
        embeddings=embeddings,
        fallback_mode=fallback_mode,
        model=model,
        not_running=not_running,
        engine=engine,
    )
    return samplers, clock


# ---------------------------------------------------------------------------------- running


async def _collect(
    samplers: SamplerSet,
    *,
    count: int | None,
    config: MonitorConfig | None,
    clock: AsyncClock | None,
    on_snapshot: OnSnapshot | None,
) -> Snapshot | None:
    last: Snapshot | None = None
    async with Monitor(samplers, config=config, clock=clock) as monitor:
        async for snapshot in monitor.run(count):
            last = snapshot
            if on_snapshot is not None:
                on_snapshot(snapshot, monitor.history)
    return last


def sample_status(
    samplers: SamplerSet,
    *,
    ticks: int = 2,
    config: MonitorConfig | None = None,
    clock: AsyncClock | None = None,
) -> Snapshot:
    """The snapshot after `ticks` ticks (one interval apart). Blocks about `ticks - 1` seconds.

    A one-shot look cannot wait out the sustain delays, so alerts are judged at once: `status`
    and `status --check` (which is this plus an exit code) always show the same alerts.
    """
    if ticks < 1:
        raise BadInputError(f"ticks must be at least 1, got {ticks}")
    config = config or MonitorConfig()
    immediate = replace(config, thresholds=config.thresholds.immediate())
    snapshot = asyncio.run(
        _collect(samplers, count=ticks, config=immediate, clock=clock, on_snapshot=None)
    )
    assert snapshot is not None
    return snapshot


def watch_status(
    samplers: SamplerSet,
    on_snapshot: OnSnapshot,
    *,
    count: int | None = None,
    config: MonitorConfig | None = None,
    clock: AsyncClock | None = None,
) -> Snapshot | None:
    """Call `on_snapshot(snapshot, history)` every tick, `count` times (None: until Ctrl-C).

    Returns the last snapshot. Ctrl-C arrives as `KeyboardInterrupt` after the HTTP pool and
    NVML were closed.
    """
    if count is not None and count < 1:
        raise BadInputError(f"count must be at least 1, got {count}")
    return asyncio.run(
        _collect(samplers, count=count, config=config, clock=clock, on_snapshot=on_snapshot)
    )


def check_snapshot(snapshot: Snapshot) -> Snapshot:
    """Return the snapshot when no alert is active; raise `AlertsActiveError` otherwise."""
    if snapshot.alerts:
        raise AlertsActiveError(snapshot)
    return snapshot


def check_status(
    samplers: SamplerSet,
    *,
    ticks: int = 2,
    config: MonitorConfig | None = None,
    clock: AsyncClock | None = None,
) -> Snapshot:
    """`status --check`: `sample_status`'s snapshot; `AlertsActiveError` if any alert is active."""
    return check_snapshot(sample_status(samplers, ticks=ticks, config=config, clock=clock))
