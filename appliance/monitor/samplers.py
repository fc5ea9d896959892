"""Where the monitor's readings come from, each behind a protocol that tests and `--simulate` swap.

- `EndpointSampler`: one service's `/health` and `/metrics`. `HttpEndpointSampler` asks over HTTP
  through one pooled `httpx.AsyncClient` (`HttpPool`, which takes an injected transport).
- `GpuSampler`: per-GPU readings. `NvmlGpuSampler` reads them through the hardware probe's
  `NvmlSource` (the live driver or a recorded fixture); it is synchronous and the monitor calls it
  in a worker thread, because a GPU falling off the bus can hang NVML.
- `RuntimeSource`: each service's container state and restart count, from the container runtime
  (`ContainersRuntimeSource` adapts `DockerEngine.managed_containers()`).
- `SamplerSet`: the samplers one monitor runs.

Simulated samplers (moving, plausible numbers for `--simulate`) are in `simulated.py`.

What must stay true: a sampler reports failure as a value (`healthy=False` with a reason, an
`error` text), never by raising; the monitor relies on that to keep ticking.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import httpx

from appliance.hardware.box import GpuProcess, watts
from appliance.monitor.scrape import (
    MetricsFormatError,
    MetricsReading,
    ParseCache,
    parse_metrics,
)
from appliance.monitor.snapshot import GpuStats
from appliance.runtime.model import service_name
from appliance.vocabulary import EngineKind, Role

if TYPE_CHECKING:
    import ssl

    from appliance.hardware.nvml import NvmlDevice, NvmlSource

EndpointKind = Literal["vllm", "tei", "gateway", "http", "auto"]
"""vllm / tei: an engine; gateway: the appliance's gateway (health and request counters);
http: health only; auto: vLLM, TEI or the gateway, from its metrics."""

# NVML's clock-event ("throttle") reason bits (nvmlClocksEventReasons / nvmlClocksThrottleReasons),
# by the names the snapshot uses.
THROTTLE_REASONS: Mapping[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock_setting",
}


def throttle_reason_names(mask: int) -> tuple[str, ...]:
    """The names of the reasons set in an NVML clock-event reasons bit mask."""
    return tuple(name for bit, name in THROTTLE_REASONS.items() if mask & bit)


# ---------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """A service the monitor watches: `<base_url>/health`, and `<base_url>/metrics` unless None."""

    name: str  # "vllm", "tei", "gateway", or host:port for `appliance scrape`
    kind: EndpointKind
    base_url: str  # http://127.0.0.1:8000, no trailing slash
    health_path: str = "/health"
    metrics_path: str | None = "/metrics"  # None: health only
    # The server a profile runs in the chat role (spec.engine.kind); None: not the chat role, or
    # not known (`appliance scrape`), when the metrics tell it.
    engine: EngineKind | None = None

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}{path}"


@dataclass(frozen=True)
class EndpointReading:
    """What one sample of one endpoint found. Failures are values here, never exceptions."""

    endpoint: Endpoint
    healthy: bool
    health_error: str | None = None
    metrics: MetricsReading | None = None
    metrics_error: str | None = None

    @property
    def kind(self) -> Literal["vllm", "tei", "gateway", "http"]:
        """The service's kind: as configured, or (for "auto") as its metrics said."""
        if self.endpoint.kind != "auto":
            return self.endpoint.kind
        return self.metrics.kind if self.metrics is not None else "http"


class EndpointSampler(Protocol):
    """Reads one service once. Must not raise: failures go into the reading."""

    @property
    def endpoint(self) -> Endpoint: ...

    async def sample(self) -> EndpointReading: ...


def describe_http_error(error: httpx.HTTPError, url: str) -> str:
    """An httpx failure in an operator's words."""
    if isinstance(error, httpx.TimeoutException):
        return f"no answer from {url} in time"
    if isinstance(error, httpx.ConnectError):
        if _is_name_failure(error):
            host = httpx.URL(url).host
            return f"cannot resolve the host name {host!r} of {url}: check the URL"
        if _is_refused(error):
            return f"nothing is listening at {url} (connection refused)"
        return f"cannot connect to {url} ({error})"
    if isinstance(error, httpx.RemoteProtocolError):
        return f"{url} closed the connection ({error})"
    return f"{url}: {type(error).__name__}: {error}"


def _chain(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _is_name_failure(error: BaseException) -> bool:
    """A DNS failure: httpx wraps the resolver's `socket.gaierror` in its ConnectError."""
    return any(isinstance(cause, socket.gaierror) for cause in _chain(error))


def _is_refused(error: BaseException) -> bool:
    chain = _chain(error)
    return any(isinstance(cause, ConnectionRefusedError) for cause in chain) or any(
        "refused" in str(cause).lower() for cause in chain
    )


class HttpPool:
    """One pooled `httpx.AsyncClient` shared by every HTTP sampler of a monitor.

    The client is created on first use, inside the event loop that uses it, and closed by
    `aclose()`. `transport` replaces the network (`httpx.MockTransport` in unit tests). Proxy
    variables are ignored: the engines are on this box, never behind the operator's HTTP proxy.
    `verify` is what an HTTPS endpoint is checked against (httpx's `verify`): for a profile, the
    gateway's own certificate (`gateway_trust`), since the gateway is its one HTTPS service.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.timeout_s = timeout_s
        self.transport = transport
        self.verify = verify
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                transport=self.transport,
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                verify=self.verify,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class HttpEndpointSampler:
    """`GET /health` and `GET /metrics` of one service, at the same time, over the shared pool."""

    def __init__(self, endpoint: Endpoint, pool: HttpPool) -> None:
        self._endpoint = endpoint
        self.pool = pool
        self._cache = ParseCache()

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def sample(self) -> EndpointReading:
        endpoint = self._endpoint
        if endpoint.metrics_path is None:
            healthy, health_error = await self._health()
            return EndpointReading(endpoint, healthy, health_error)
        (healthy, health_error), (metrics, metrics_error) = await asyncio.gather(
            self._health(), self._metrics(endpoint.metrics_path)
        )
        return EndpointReading(endpoint, healthy, health_error, metrics, metrics_error)

    async def _health(self) -> tuple[bool, str | None]:
        url = self._endpoint.url(self._endpoint.health_path)
        try:
            response = await self.pool.client().get(url)
        except httpx.HTTPError as error:
            return False, describe_http_error(error, url)
        if response.is_success:
            return True, None
        return False, f"{url} answered {response.status_code}"

    async def _metrics(self, path: str) -> tuple[MetricsReading | None, str | None]:
        url = self._endpoint.url(path)
        try:
            response = await self.pool.client().get(url)
        except httpx.HTTPError as error:
            return None, describe_http_error(error, url)
        if not response.is_success:
            return None, f"{url} answered {response.status_code}"
        kind = self._endpoint.kind
        wanted: Role | None = None
        if kind in ("vllm", "tei", "gateway"):
            wanted = kind
        try:
            return parse_metrics(response.text, wanted, self._cache), None
        except MetricsFormatError as error:
            return None, f"{url}: {error}"


# ---------------------------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class GpuReadings:
    """Every GPU at one moment, or why NVML could not be read at all."""

    gpus: tuple[GpuStats, ...] = ()
    error: str | None = None


class GpuSampler(Protocol):
    """Per-GPU readings. Synchronous (NVML is); the monitor calls it in a worker thread."""

    def read(self) -> GpuReadings: ...

    def close(self) -> None: ...


def gpu_stats(device: NvmlDevice) -> GpuStats:
    """One NVML device reading as the monitor shows it (fields NVML does not support, or an
    older recording did not carry, stay None)."""
    if device.error is not None:
        return GpuStats(index=device.index, error=device.error)
    reasons = device.clocks_event_reasons
    return GpuStats(
        index=device.index,
        name=device.name,
        uuid=device.uuid,
        utilization_gpu_pct=device.utilization_gpu_pct,
        utilization_memory_pct=device.utilization_memory_pct,
        memory_used_bytes=device.memory_used_bytes,
        memory_total_bytes=device.memory_total_bytes,
        temperature_c=device.temperature_c,
        power_draw_w=watts(device.power_usage_mw),
        power_limit_w=watts(device.enforced_power_limit_mw),
        sm_clock_mhz=device.sm_clock_mhz,
        memory_clock_mhz=device.memory_clock_mhz,
        throttle_reasons=None if reasons is None else throttle_reason_names(reasons),
        ecc_errors_corrected=device.ecc_errors_corrected,
        ecc_errors_uncorrected=device.ecc_errors_uncorrected,
        processes=GpuProcess.all_of(device.processes),
    )


class NvmlGpuSampler:
    """GPU readings through the hardware probe's `NvmlSource` (live NVML or a recording).

    The NVML session is opened on the first read and kept open between ticks (initialising NVML
    once a second would cost more than the readings); `close()` ends it. When NVML cannot be
    used, each read says why and tries again next time (a driver may be loaded meanwhile).
    """

    def __init__(self, source: NvmlSource) -> None:
        self.source = source
        self._device_count: int | None = None

    def read(self) -> GpuReadings:
        from appliance.hardware.nvml import NvmlUnavailable

        if self._device_count is None:
            opened = self.source.open()
            if isinstance(opened, NvmlUnavailable):
                return GpuReadings(error=f"NVML unavailable ({opened.kind}): {opened.message}")
            self._device_count = opened.device_count
        devices = tuple(self.source.device(index) for index in range(self._device_count))
        return GpuReadings(gpus=tuple(gpu_stats(device) for device in devices))

    def close(self) -> None:
        if self._device_count is not None:
            self._device_count = None
            self.source.close()


# ---------------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class ContainerStatus:
    """A service's container as the runtime reports it."""

    state: str | None = None  # "running", "restarting", "exited", …
    restart_count: int | None = None


class RuntimeSource(Protocol):
    """Container status by service name ("vllm", "vllm-2", "tei", "gateway"). Synchronous, like
    docker-py."""

    def read(self) -> Mapping[str, ContainerStatus]: ...


class _ObservedContainer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def restart_count(self) -> int: ...


class _ContainerLister(Protocol):
    def managed_containers(self, profile: str | None = None) -> Sequence[_ObservedContainer]: ...


class ContainersRuntimeSource:
    """Restart counts and states from the runtime adapter (`DockerEngine.managed_containers()`).

    With a profile, services are named from the container's name (`specs.service_name`: each
    switched model's engine its own, "vllm-2", …), else by container role; with several
    containers of one service (a replacement in progress) the one restarted most is reported.
    """

    def __init__(self, lister: _ContainerLister, profile: str | None = None) -> None:
        self.lister = lister
        self.profile = profile

    def read(self) -> Mapping[str, ContainerStatus]:
        found: dict[str, ContainerStatus] = {}
        for container in self.lister.managed_containers(self.profile):
            service = container.role
            if self.profile is not None:
                service = service_name(container.name, self.profile) or service
            previous = found.get(service)
            if previous is None or (previous.restart_count or 0) < container.restart_count:
                found[service] = ContainerStatus(container.state, container.restart_count)
        return found


# ---------------------------------------------------------------------------------- the set


@dataclass
class SamplerSet:
    """The samplers of one monitor, and the HTTP pool they share (closed by `aclose()`)."""

    services: tuple[EndpointSampler, ...] = ()
    gpus: GpuSampler | None = None
    runtime: RuntimeSource | None = None
    simulated: bool = False
    pool: HttpPool | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
        if self.gpus is not None:
            self.gpus.close()
        close = getattr(self.runtime, "close", None)  # a runtime holding a connection
        if callable(close):
            close()


def http_samplers(
    endpoints: Sequence[Endpoint],
    *,
    gpus: GpuSampler | None = None,
    runtime: RuntimeSource | None = None,
    timeout_s: float = 0.5,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
) -> SamplerSet:
    """HTTP samplers for `endpoints`, sharing one pooled client with `timeout_s` per request
    that checks HTTPS endpoints against `verify`."""
    pool = HttpPool(timeout_s=timeout_s, transport=transport, verify=verify)
    return SamplerSet(
        services=tuple(HttpEndpointSampler(endpoint, pool) for endpoint in endpoints),
        gpus=gpus,
        runtime=runtime,
        pool=pool,
    )
