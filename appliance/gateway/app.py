"""The gateway as a plain ASGI application: auth, routing, pass-through, fallback, metrics.

Plain ASGI rather than Starlette on purpose: every request crosses this code, and a framework's
request/response objects, middleware stack and header models cost more than the whole budget
(≤ 1 ms added at p50; see `bench/gateway_overhead.py`). What the hot path does, and only that:

* one pass over the request headers, which both finds `Authorization` and builds the forwarded
  list; a key check that is a stat of the keys file (so revocation counts at once), a dict
  lookup, one sha256 and a constant-time compare;
* the body is forwarded as received, never parsed, except when it goes to the remote API (the
  model name is mapped) or a local 404 must be told apart;
* the response is forwarded chunk by chunk as the upstream sends it, never buffered.

What must stay true: nothing is retried once a byte reached the client; every response carries
`x-appliance-route`; every error is OpenAI's error JSON (the engines' own errors are reshaped,
their message kept); no key and no `Authorization` value is ever logged, counted or echoed; a
metric label never holds client text. What a connection may hold before it reaches this code is
bounded in `appliance.gateway.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.gateway.config import GatewayConfig, RemoteConfig, Timeouts, origin
from appliance.gateway.files import FileSignature
from appliance.gateway.keys import KeyInfo, KeyRing, Scope, StaticAdminKey, load_keyring
from appliance.gateway.latency import RecentLatency
from appliance.gateway.openai_errors import error_body, normalised
from appliance.gateway.policy import (
    Destination,
    LoadReading,
    LoadSignal,
    LocalFailure,
    Reason,
    Route,
    RoutingRules,
    after_local_answer,
    after_local_failure,
    choose_route,
    counts_as_engine_failure,
)
from appliance.gateway.probe import EngineProbe
from appliance.gateway.protocol import ARRIVED
from appliance.gateway.ratelimit import RateLimiter, retry_after_header
from appliance.gateway.rollout import Rollout, read_rollout
from appliance.gateway.state import FallbackState, read_fallback, write_fallback
from appliance.gateway.switcher import Held, ModelSwitcher, PinnedError, SwitchError
from appliance.gateway.switching import held_goes_remote, retry_after_s
from appliance.gateway.upstream import (
    Headers,
    HttpxPool,
    LeanPool,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from appliance.vocabulary import FallbackMode, ModelState

log = logging.getLogger("appliance.gateway")

Scope_ = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE_HEADER = b"x-appliance-route"
_LOCAL = Destination.LOCAL.value.encode()
_REMOTE = Destination.REMOTE.value.encode()

# Never forwarded upstream: hop-by-hop headers, framing the gateway redoes, and the client's
# credentials (the engines need none; the remote API gets the appliance's own key).
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"proxy-authorization",
        b"proxy-connection",
        b"authorization",
    }
)
# The only client headers the third-party remote API receives (with the appliance's own key):
# what the body is and what answer is wanted. Not cookies, not X-Forwarded-For, not the client's
# OpenAI organisation, nothing a client or a proxy in front of the gateway adds.
_REMOTE_ALLOWED = frozenset({b"content-type", b"accept"})
# Never passed back: hop-by-hop, and what uvicorn sets itself (date) or we do not advertise.
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"date",
        b"server",
        b"set-cookie",
        ROUTE_HEADER,
    }
)


class Kind(enum.Enum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"


class Outcome(enum.StrEnum):
    """The `outcome` label of the requests counter."""

    OK = "ok"  # 2xx/3xx from the upstream
    CLIENT_ERROR = "client_error"  # 4xx from the upstream
    UPSTREAM_ERROR = "upstream_error"  # 5xx from the upstream, or it broke mid-body
    UNAVAILABLE = "unavailable"  # the gateway answered 502/503/504: nowhere to send it
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"  # refused by the gateway itself (size, method, path)
    DISCONNECTED = "disconnected"  # the client went away; the upstream request was cancelled


_ADMIN_BODY_LIMIT = 64 * 1024  # {"mode": "auto"} needs a few bytes
_ADMIN_MODEL_ACTIONS = frozenset({"wake", "sleep", "pin", "unpin"})
_ADMIN_MODELS_USAGE = (
    'Send a JSON body like {"model": "NAME", "action": "wake" | "sleep" | "pin" | "unpin"}.'
)
_WATCH_INTERVAL_S = 0.25  # how often the engine watch reads the health signals (no IO)
# A stream of an engine known down is ended once it has been silent this long.
_DEAD_STREAM_SILENCE_S = 2.0
# Bodies of known length up to this size are sent with their head in one go (see `_forward`).
_COLLECT_LIMIT = 256 * 1024

_PROXIED = {
    b"/v1/chat/completions": Kind.CHAT,
    b"/v1/completions": Kind.CHAT,
    b"/v1/embeddings": Kind.EMBEDDINGS,
}


# The `route` label's values: the gateway's own routes, and "other" for any path a client sends.
# Never the path itself: labels from client text grow /metrics without bound and publish the
# text (a key pasted into a URL, a prompt) on an endpoint that needs no key.
ROUTES = frozenset(
    {
        *(path.decode() for path in _PROXIED),
        "/v1/models",
        "/health",
        "/metrics",
        "/admin/fallback",
        "/admin/models",
    }
)


def route_label(path: bytes) -> str:
    """The `route` label for a request path: one of `ROUTES`, else "other"."""
    label = path.decode("latin-1")
    return label if label in ROUTES else "other"


class _ClientGoneError(Exception):
    """The client disconnected while its request body was being read."""


# ---------------------------------------------------------------------------------- errors


async def _send_bytes(
    send: Send,
    status: int,
    body: bytes,
    route: bytes,
    *,
    content_type: bytes = b"application/json",
    extra: Headers | None = None,
) -> None:
    headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (ROUTE_HEADER, route),
    ]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ---------------------------------------------------------------------------------- metrics


def _monitor_state(reading: LoadReading, max_age_s: float, signal: LoadSignal | None) -> str:
    """none (nothing watches the engine), starting (no reading yet), ok, or stale (the last
    reading is older than routing trusts)."""
    if signal is None:
        return "none"
    if reading.age_seconds is None:
        return "starting"
    return "stale" if reading.age_seconds > max_age_s else "ok"


# Quantiles are interpolated inside a bucket, so a bucket's width bounds their error: ten buckets a
# decade, each at most a third wider than the one below. A fixed width would either blur the fast
# end (a 10 ms first bucket made a 7 ms first token read anywhere in 0-10 ms) or spend hundreds of
# buckets on the slow one. The label set is closed (destination x served model), so about fifty
# buckets each stay cheap.
_DECADE = (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5)


def _buckets(low: float, high: float) -> tuple[float, ...]:
    """Bucket bounds from `low` to `high` seconds, ten a decade (`_DECADE`)."""
    exponents = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    bounds = (round(m * 10.0**e, 6) for e in exponents for m in _DECADE)
    return tuple(b for b in bounds if low <= b <= high)


# A first token: from 1 ms (a tiny model on an idle box) to a minute (a long queue).
TTFT_BUCKETS = _buckets(0.001, 60)
# A whole answer: from 10 ms (a short completion) to ten minutes (a long generation).
E2E_BUCKETS = _buckets(0.01, 600)
OTHER_MODEL = "other"
"""The model label of a request naming no served model: clients cannot add label values."""


class GatewayMetrics:
    """The gateway's own Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            "appliance_gateway_requests",
            "Requests answered, by API route, destination (local, remote, none) and outcome.",
            ["route", "destination", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "appliance_gateway_request_duration_seconds",
            "Time from the request's arrival to the last byte of the response.",
            ["route", "destination"],
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
                120,
                300,
            ),
            registry=registry,
        )
        self.first_byte = Histogram(
            "appliance_gateway_time_to_first_byte_seconds",
            "Time from the request's arrival to the response head (first streamed byte).",
            ["route", "destination"],
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
            ),
            registry=registry,
        )
        # What users feel (issue #17): per destination and served model (a closed set, see
        # `_model_label`). Buckets span LLM latencies: a warm local first token takes tens of
        # milliseconds, a queued or remote one seconds; a whole answer runs up to minutes.
        self.user_ttft = Histogram(
            "appliance_gateway_ttft_seconds",
            "Time from the request's arrival to the first body byte sent to the client.",
            ["destination", "model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.user_e2e = Histogram(
            "appliance_gateway_e2e_seconds",
            "Time from the request's arrival to the last byte sent to the client.",
            ["destination", "model"],
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "appliance_gateway_fallbacks",
            "Requests sent to the remote API instead of the local engine, by reason.",
            ["reason"],
            registry=registry,
        )
        self.local_failures = Counter(
            "appliance_gateway_local_failures",
            "Local engine attempts that failed before any byte reached the client, by kind.",
            ["upstream", "failure"],
            registry=registry,
        )
        self.mode = Gauge(
            "appliance_gateway_fallback_mode",
            "The fallback mode in force (1 for the current mode).",
            ["mode"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "appliance_gateway_in_flight_requests",
            "Proxied requests being answered now.",
            registry=registry,
        )
        # The same answers' last minute, kept whole: what `status` and the Monitor read.
        self.recent = RecentLatency(clock)
        registry.register(self.recent)
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._timings: dict[tuple[str, str], tuple[Any, Any]] = {}

    def set_mode(self, mode: FallbackMode) -> None:
        for each in FallbackMode:
            self.mode.labels(mode=each.value).set(1 if each is mode else 0)

    def count(self, route: str, destination: str, outcome: Outcome) -> None:
        key = (route, destination, outcome.value)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

    def user_latency(self, destination: str, model: str, ttft_s: float, e2e_s: float) -> None:
        """One answer that reached its client: its TTFT and end-to-end latency."""
        self.user_ttft.labels(destination, model).observe(ttft_s)
        self.user_e2e.labels(destination, model).observe(e2e_s)
        self.recent.observe(ttft_s, e2e_s)

    def timings(self, route: str, destination: str) -> tuple[Any, Any]:
        key = (route, destination)
        pair = self._timings.get(key)
        if pair is None:
            pair = self._timings[key] = (
                self.first_byte.labels(*key),
                self.duration.labels(*key),
            )
        return pair


class _SwitchingCollector(Collector):
    """Several chat models (spec.switching), read from the switcher at scrape time: each
    model's state (1 on its current one), its requests in flight and held, the switches done,
    the requests refused while held, and the last switch's time with the engines' part."""

    def __init__(self, app: GatewayApp) -> None:
        self._app = app

    def describe(self) -> list[Any]:
        return []  # families appear only when switching is configured

    def collect(self) -> Iterator[Any]:
        switcher = self._app.switcher
        if switcher is None:
            return
        state = GaugeMetricFamily(
            "appliance_gateway_model_state",
            "1 on each switched chat model's current state (awake, asleep-1, asleep-2, waking, "
            "sleeping).",
            labels=["model", "state"],
        )
        in_flight = GaugeMetricFamily(
            "appliance_gateway_model_in_flight", "Requests in flight per model.", labels=["model"]
        )
        held = GaugeMetricFamily(
            "appliance_gateway_model_held",
            "Requests held while their model wakes, per model.",
            labels=["model"],
        )
        pinned = GaugeMetricFamily(
            "appliance_gateway_model_pinned",
            "1 on the model an admin pinned awake.",
            labels=["model"],
        )
        wakes = CounterMetricFamily(
            "appliance_gateway_model_wakes",
            "Switches that woke each model.",
            labels=["model"],
        )
        wake_seconds = GaugeMetricFamily(
            "appliance_gateway_model_wake_seconds",
            "The last switch to each model, all of it (what its held requests waited at least).",
            labels=["model"],
        )
        for name, current in switcher.states.items():
            for value in get_args(ModelState):
                state.add_metric([name, value], 1.0 if value == current else 0.0)
            in_flight.add_metric([name], switcher.in_flight[name])
            held.add_metric([name], switcher.held[name])
            pinned.add_metric([name], 1.0 if switcher.pinned == name else 0.0)
            wakes.add_metric([name], switcher.wakes[name])
            if name in switcher.wake_seconds:
                wake_seconds.add_metric([name], switcher.wake_seconds[name])
        yield state
        yield in_flight
        yield held
        yield pinned
        yield wakes
        yield wake_seconds
        yield CounterMetricFamily(
            "appliance_gateway_model_switches", "Switches from one chat model to another.",
            value=switcher.switches,
        )  # fmt: skip
        refused = CounterMetricFamily(
            "appliance_gateway_held_refused",
            "Requests for a sleeping model refused: the held queue was full, or it did not "
            "wake in time.",
            labels=["reason"],
        )
        for reason, count in switcher.refused.items():
            refused.add_metric([reason.value], count)
        yield refused
        if switcher.timings:
            last = switcher.timings[-1]
            seconds = GaugeMetricFamily(
                "appliance_gateway_last_switch_seconds",
                "The last switch: all of it, and the engines' part (sleep, wake, reload).",
                labels=["part"],
            )
            seconds.add_metric(["total"], last.total_s)
            seconds.add_metric(["engine"], last.engine_s)
            yield seconds


# ---------------------------------------------------------------------------------- the app


@dataclass
class _Target:
    """One local upstream with its own passive circuit breaker, and its streams in flight."""

    name: str
    upstream: Upstream
    rules: RoutingRules
    last_failure: float | None = None
    healthy: bool | None = None  # as last logged by the engine watch
    streams: dict[_Exchange, UpstreamResponse] = field(default_factory=dict)
    in_flight: int = 0  # requests sent and not yet answered in full (a model update waits)
    upstream_url: str | None = None  # set when a model update made it (blue/green)


@dataclass(eq=False)  # one per request, hashed by identity (a key of `_Target.streams`)
class _Exchange:
    """What one proxied request has done so far (for metrics and for the no-retry rule)."""

    route: str
    started: float
    send: Send
    path: bytes  # relative to the upstream's base URL
    query: bytes  # "?…" for the local engines; never sent to the remote API
    headers: Headers
    body: bytes
    destination: str = "none"
    status: int = 0
    body_bytes_sent: int = 0
    last_chunk_at: float = 0.0  # when the upstream last sent body bytes (streams of engines)
    first_body_at: float | None = None  # when the first body byte went to the client
    finished: bool = False
    disconnected: bool = False


class GatewayApp:
    """The ASGI application. Upstreams, the load signal and the clock can be injected (tests)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        load_signal: LoadSignal | None = None,
        embeddings_signal: LoadSignal | None = None,
        chat_upstream: Upstream | None = None,
        embeddings_upstream: Upstream | None = None,
        remote_upstream: Upstream | None = None,
        probe_upstream: Upstream | None = None,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        refresh_interval_s: float = 1.0,
        background: Sequence[Callable[[GatewayApp], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        self.config = config
        # Tasks that live as long as the app (the monitor and usage recorder of `appliance
        # gateway`): started after the upstreams, cancelled at shutdown.
        self._background = tuple(background)
        self._clock = clock
        self._signal = load_signal
        self._embeddings_signal = embeddings_signal
        self._injected = {
            "chat": chat_upstream,
            "embeddings": embeddings_upstream,
            "remote": remote_upstream,
            "probe": probe_upstream,
        }
        self._refresh_interval_s = refresh_interval_s
        self.metrics = GatewayMetrics(registry or CollectorRegistry(auto_describe=True), clock)
        self.metrics.registry.register(_SwitchingCollector(self))
        self._limiter = RateLimiter()
        self._keys = KeyRing()
        self._keys_signature: FileSignature | None = None
        self._state_signature: FileSignature | None = None
        self._admin_key: StaticAdminKey | None = None
        self._remote_auth: bytes | None = None
        self._state = FallbackState(config.default_fallback_mode, None, None)
        self._tasks: list[asyncio.Task[None]] = []
        self._owned: list[Upstream] = []
        self._chat: _Target | None = None
        self._embeddings: _Target | None = None
        # Several chat models (spec.switching): each one's target, and the switcher.
        self._switched: dict[str, _Target] = {}
        self.switcher: ModelSwitcher | None = None
        self._remote: Upstream | None = None
        self._remote_embeddings = bool(
            config.remote
            and config.embeddings_model
            and config.embeddings_model in config.remote.model_map
        )
        self._models_bodies: dict[tuple[FallbackMode, bool, bool], bytes] = {}
        self._started = False
        # Model updates (gateway.rollout): what apply last said, the chat engines replaced by a
        # blue/green switch (closed once their requests are through), the requests held while
        # the chat engine is replaced in place, and the event that releases them.
        self._rollout = Rollout()
        self._rollout_signature: FileSignature | None = None
        self._retired: list[_Target] = []
        self._update_held = 0
        self._serving = asyncio.Event()
        self._serving.set()
        # Several chat models: each one's engine URL now, and the event that releases the
        # requests waiting while apply changes the switched engines.
        self._switched_urls: dict[str, str] = {}
        self._switched_serving = asyncio.Event()
        self._switched_serving.set()
        self._probe_task: asyncio.Task[None] | None = None

    # -- lifecycle

    @property
    def mode(self) -> FallbackMode:
        return self._state.mode

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[GatewayApp]:
        """Start the gateway (read secrets and files, open pools, start probes), then stop it.

        Raises an `ApplianceError` when a secret or file it needs is missing or damaged.
        """
        await self.startup()
        try:
            yield self
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        config = self.config
        if config.admin_key is not None:
            self._admin_key = StaticAdminKey.of(config.admin_key.read("gateway admin key"))
        if config.remote is not None and config.remote.api_key is not None:
            secret = config.remote.api_key.read("remote API key")
            self._remote_auth = b"Bearer " + secret.encode()
        self.refresh_files()
        chat = self._injected["chat"] or self._own(
            LeanPool(
                config.chat_upstream,
                config.local_timeouts,
                max_connections=config.max_connections_per_upstream,
            )
        )
        chat_rules = config.rules
        self._chat = _Target("chat", chat, chat_rules)
        if config.switching is not None:
            await self._start_switching(config, chat_rules)
        if config.embeddings_upstream is not None:
            embeddings = self._injected["embeddings"] or self._own(
                LeanPool(
                    config.embeddings_upstream,
                    config.local_timeouts,
                    max_connections=config.max_connections_per_upstream,
                )
            )
            rules = RoutingRules(
                remote_configured=self._remote_embeddings,
                queue_threshold=None,  # the queue signal describes vLLM, not TEI
                max_signal_age_s=chat_rules.max_signal_age_s,
                failure_cooldown_s=chat_rules.failure_cooldown_s,
            )
            self._embeddings = _Target("embeddings", embeddings, rules)
        if config.remote is not None:
            self._remote = self._injected["remote"] or self._own(
                HttpxPool(
                    config.remote.base_url,
                    config.remote.timeouts,
                    max_connections=config.max_connections_per_upstream,
                )
            )
        loop = asyncio.get_running_loop()
        # Short deadlines: an engine that cannot answer /health within two seconds is
        # unhealthy, and a wedged probe must not leave a reading to go stale unnoticed.
        quick = Timeouts(
            connect_s=min(config.local_timeouts.connect_s, 2.0), first_byte_s=2.0, idle_s=2.0
        )
        if self._signal is None and config.probe_interval_s > 0:
            probe_origin = self._injected["probe"] or self._own(
                LeanPool(origin(config.chat_upstream), quick, max_connections=4)
            )
            probe = EngineProbe(probe_origin, interval_s=config.probe_interval_s, clock=self._clock)
            self._signal = probe
            self._probe_task = loop.create_task(probe.run(), name="gateway-engine-probe")
        if (
            self._embeddings_signal is None
            and config.embeddings_upstream is not None
            and config.probe_interval_s > 0
        ):
            # Whether TEI answers decides whether /v1/models lists its model; its queue does not
            # route anything, so /health is all this probe reads.
            tei_origin = self._own(
                LeanPool(origin(config.embeddings_upstream), quick, max_connections=2)
            )
            tei_probe = EngineProbe(
                tei_origin, interval_s=config.probe_interval_s, clock=self._clock, queue=False
            )
            self._embeddings_signal = tei_probe
            self._tasks.append(loop.create_task(tei_probe.run(), name="gateway-embeddings-probe"))
        self._follow_rollout()
        self._tasks.append(loop.create_task(self._watch_engines(), name="gateway-engine-watch"))
        self._tasks.append(loop.create_task(self._refresh_loop(), name="gateway-file-refresh"))
        for index, companion in enumerate(self._background):
            self._tasks.append(loop.create_task(companion(self), name=f"gateway-companion-{index}"))
        self._started = True
        log.info(
            "gateway ready: chat %s, embeddings %s, remote %s, fallback %s, %d keys",
            config.chat_upstream,
            config.embeddings_upstream or "none",
            config.remote.base_url if config.remote else "none",
            self.mode.value,
            len(self._keys),
        )

    async def _start_switching(self, config: GatewayConfig, rules: RoutingRules) -> None:
        """One target per switched model (spec.model's is the chat target), one control pool
        per engine origin for the sleep-mode calls, and the switcher over them."""
        switching = config.switching
        assert switching is not None
        assert self._chat is not None
        moved = self._rollout_on_disk().upstreams  # a blue/green update before a restart
        control = {}
        for name, configured in switching.upstreams.items():
            url = moved.get(name, configured)
            self._switched_urls[name] = url
            if configured == config.chat_upstream:
                self._switched[name] = self._chat
            else:
                pool = self._own(
                    LeanPool(
                        url,
                        config.local_timeouts,
                        max_connections=config.max_connections_per_upstream,
                    )
                )
                self._switched[name] = _Target("chat", pool, rules)
            control[name] = self._control_pool(url)
        self.switcher = ModelSwitcher(
            control,
            initially_awake=switching.initially_awake,
            rules=switching.rules,
            clock=self._clock,
        )
        await self.switcher.start()

    def _control_pool(self, url: str) -> Upstream:
        """A switched engine's pool for the sleep-mode calls, at its origin. A wake reloads
        weights: its calls may take as long as a request's first byte."""
        timeouts = self.config.local_timeouts
        control = Timeouts(
            connect_s=timeouts.connect_s, first_byte_s=timeouts.first_byte_s,
            idle_s=timeouts.first_byte_s,
        )  # fmt: skip
        return self._own(LeanPool(origin(url), control, max_connections=2))

    def _rollout_on_disk(self) -> Rollout:
        path = self.config.rollout_file
        try:
            return read_rollout(path) if path is not None else Rollout()
        except ApplianceError:
            return Rollout()  # `_follow_rollout` reports it

    async def shutdown(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self.switcher is not None:
            await self.switcher.stop()
            self.switcher = None
        self._switched.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for upstream in self._owned:
            await upstream.aclose()
        self._owned.clear()
        self._started = False

    def _own(self, upstream: Upstream) -> Upstream:
        self._owned.append(upstream)
        return upstream

    def refresh_files(self) -> None:
        """Re-read the keys file and the fallback state if they changed on disk."""
        config = self.config
        self.refresh_keys()
        signature = FileSignature.of(config.state_file)
        if signature != self._state_signature or not self._started:
            self._state_signature = signature  # a damaged version is reported once
            state = read_fallback(config.state_file, config.default_fallback_mode)
            if state.mode is not FallbackMode.OFF and config.remote is None:
                log.error(
                    "fallback mode %s is set but no remote API is configured: staying off",
                    state.mode.value,
                )
                state = FallbackState(FallbackMode.OFF, state.changed_at, state.changed_by)
            if state.mode is not self._state.mode:
                log.info("fallback mode is now %s (by %s)", state.mode.value, state.changed_by)
            self._state = state
            self.metrics.set_mode(state.mode)

    def refresh_keys(self) -> None:
        """Swap in the keys file if it changed: a stat per key check, so a key revoked or
        created by the CLI counts from the very next request.

        A damaged file (hand-edited, half-restored) is reported once per version, and the keys
        read before stay in force; at startup it is an error (`preflight` says so first).
        """
        path = self.config.keys_file
        signature = FileSignature.of(path)
        if signature == self._keys_signature and self._started:
            return
        self._keys_signature = signature
        try:
            ring = load_keyring(path)
        except ApplianceError as error:
            if not self._started:
                raise
            log.error("keeping the previous %d keys: %s", len(self._keys), error.message)
            return
        self._keys = ring
        self._limiter.forget(set(ring.records))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            try:
                self.refresh_files()
            except ApplianceError as error:
                log.error("keeping the previous fallback mode: %s", error.message)
            self._follow_rollout()
            await self._close_retired()

    # -- model updates (gateway.rollout)

    def _follow_rollout(self) -> None:
        """Take up what apply wrote: a new chat engine to send requests to (blue/green), or
        the chat engine being replaced in place (hold, or the remote API)."""
        path = self.config.rollout_file
        if path is None or self._chat is None:
            return
        signature = FileSignature.of(path)
        if signature == self._rollout_signature:
            return
        self._rollout_signature = signature
        try:
            rollout = read_rollout(path)
        except ApplianceError as error:
            log.error("keeping the chat engine as it is: %s", error.message)
            return
        current = self._chat.upstream_url or self.config.chat_upstream
        wanted = rollout.chat_upstream or self.config.chat_upstream
        if self.switcher is not None:
            self._follow_switched(rollout)
        elif wanted != current:
            self._switch_chat(wanted)
        if rollout.updating != self._rollout.updating:
            log.info(
                "chat engine %s", "being replaced: holding its requests" if rollout.updating
                else "replaced: serving again",
            )  # fmt: skip
        if rollout.updating:
            self._serving.clear()
        else:
            self._serving.set()
        self._rollout = rollout

    def _follow_switched(self, rollout: Rollout) -> None:
        """Several chat models: move each switched model whose engine a blue/green update
        replaced (its requests and its sleep/wake calls), and hold or release the requests
        that wait while apply changes the engines."""
        switching = self.config.switching
        switcher = self.switcher
        assert switching is not None
        assert switcher is not None
        for name, configured in switching.upstreams.items():
            wanted = rollout.upstreams.get(name, configured)
            if wanted == self._switched_urls.get(name):
                continue
            old = self._switched[name]
            if old is self._chat:
                self._switch_chat(wanted)  # spec.model's engine: the probe follows it
            else:
                pool = self._own(
                    LeanPool(
                        wanted,
                        self.config.local_timeouts,
                        max_connections=self.config.max_connections_per_upstream,
                    )
                )
                self._switched[name] = _Target("chat", pool, old.rules, upstream_url=wanted)
                self._retired.append(old)
                log.info("%s is now served by %s (model update)", name, wanted)
            switcher.retarget(name, self._control_pool(wanted))
            self._switched_urls[name] = wanted
        switcher.paused = bool(rollout.held or rollout.switching_paused)
        if switcher.paused:
            if self._switched_serving.is_set():
                log.info(
                    "switched engines changing: holding %s and every sleeping model",
                    ", ".join(rollout.held) or "no awake model",
                )
            self._switched_serving.clear()
        else:
            self._switched_serving.set()

    def _switch_chat(self, url: str) -> None:
        """Send every new chat request to `url`; the engine before keeps its requests in
        flight until they are through (`_close_retired`)."""
        old = self._chat
        assert old is not None
        config = self.config
        pool = self._own(
            LeanPool(
                url, config.local_timeouts, max_connections=config.max_connections_per_upstream
            )
        )
        self._chat = _Target("chat", pool, old.rules, upstream_url=url)
        for name, target in self._switched.items():
            if target is old:
                self._switched[name] = self._chat
        self._retired.append(old)
        log.info("chat engine is now %s (model update)", url)
        if self._probe_task is not None:  # the gateway's own probe reads the new engine
            self._probe_task.cancel()
            quick = Timeouts(connect_s=2.0, first_byte_s=2.0, idle_s=2.0)
            probe_origin = self._own(LeanPool(origin(url), quick, max_connections=4))
            probe = EngineProbe(probe_origin, interval_s=config.probe_interval_s, clock=self._clock)
            self._signal = probe
            self._probe_task = asyncio.get_running_loop().create_task(
                probe.run(), name="gateway-engine-probe"
            )

    async def _close_retired(self) -> None:
        for target in [t for t in self._retired if t.in_flight <= 0 and not t.streams]:
            self._retired.remove(target)
            if target.upstream in self._owned:
                self._owned.remove(target.upstream)
                await target.upstream.aclose()

    def _rollout_report(self) -> dict[str, object]:
        chat = self._chat
        report: dict[str, object] = {
            "chat_upstream": (chat.upstream_url if chat else None) or self.config.chat_upstream,
            "updating": self._rollout.updating,
            "held": self._update_held,
            "in_flight": chat.in_flight if chat else 0,
            "retired_in_flight": sum(t.in_flight for t in self._retired),
        }
        if self.switcher is not None:
            report["switching_paused"] = self._rollout.switching_paused
            report["models"] = {
                name: {
                    "upstream": url,
                    "updating": name in self._rollout.held,
                    "in_flight": self._switched[name].in_flight,
                }
                for name, url in self._switched_urls.items()
            }
        return report

    async def _until_serving(self, serving: asyncio.Event) -> bool:
        """Hold a chat request while its engine is replaced in place: True once it serves
        again; False when the held requests are at their bound or the wait ran out."""
        if self._update_held >= self.config.update_hold_max_requests:
            return False
        self._update_held += 1
        try:
            await asyncio.wait_for(serving.wait(), self.config.update_hold_timeout_s)
        except TimeoutError:
            return False
        finally:
            self._update_held -= 1
        return True

    # -- the engines' health

    async def _watch_engines(self) -> None:
        """Log each local engine's health transitions once, and end its silent streams as soon
        as it is known to be down (whichever reads it: the monitor, or the gateway's probe)."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            for target, signal in (
                (self._chat, self._signal),
                (self._embeddings, self._embeddings_signal),
            ):
                if target is not None and signal is not None:
                    self._watch(target, signal)

    def _watch(self, target: _Target, signal: LoadSignal) -> None:
        reading = LoadReading.of(signal)
        age = reading.age_seconds
        if reading.healthy is None or age is None or not 0 <= age <= target.rules.max_signal_age_s:
            return  # nothing fresh known: no transition, and nothing to end streams on
        problem_of = getattr(signal, "problem", None)
        problem = problem_of() if callable(problem_of) else None
        why = f" ({problem})" if problem else ""
        if reading.healthy is not target.healthy:
            if not reading.healthy:
                log.warning("local %s engine is down%s", target.name, why)
            elif target.healthy is False:
                log.info("local %s engine is up again", target.name)
            else:
                log.info("local %s engine is up", target.name)
            target.healthy = reading.healthy
        if reading.healthy or not target.streams:
            return
        now = self._clock()
        read_at = now - age
        for exchange, response in list(target.streams.items()):
            silent = now - exchange.last_chunk_at
            # Only streams silent since before the reading, and for a while: a stream still
            # sending proves its engine alive whatever one slow /health said.
            if exchange.last_chunk_at < read_at and silent >= _DEAD_STREAM_SILENCE_S:
                del target.streams[exchange]
                response.abort(
                    f"the local {target.name} engine is down{why}; no data for {silent:.0f} s"
                )

    def _known_down(self, signal: LoadSignal | None) -> bool:
        """A fresh reading says the engine is not healthy."""
        if signal is None:
            return False
        reading = LoadReading.of(signal)
        age = reading.age_seconds
        fresh = age is not None and 0 <= age <= self.config.max_signal_age_s
        return fresh and reading.healthy is False

    # -- ASGI entry

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except ApplianceError as error:
                    await send({"type": "lifespan.startup.failed", "message": error.render()})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope_, receive: Receive, send: Send) -> None:
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if b"?" in path:
            path = path.split(b"?", 1)[0]
        method: str = scope["method"]
        kind = _PROXIED.get(path)
        if kind is not None:
            if method != "POST":
                await self._refuse(send, path, 405, f"use POST for {_shown(path)}", "not_allowed")
                return
            await self._proxy(scope, receive, send, kind, path)
        elif path == b"/v1/models" and method == "GET":
            await self._models(scope, send)
        elif path == b"/health" and method == "GET":
            await self._health(send)
        elif path == b"/metrics" and method == "GET":
            await _send_bytes(
                send,
                200,
                generate_latest(self.metrics.registry),
                _LOCAL,
                content_type=b"text/plain; version=0.0.4; charset=utf-8",
            )
        elif path == b"/admin/fallback" and method in ("GET", "PUT"):
            await self._admin_fallback(scope, receive, send, method)
        elif path == b"/admin/models" and method in ("GET", "POST"):
            await self._admin_models(scope, receive, send, method)
        else:
            await self._refuse(send, path, 404, f"no route {method} {_shown(path)}", "not_found")

    async def _refuse(self, send: Send, path: bytes, status: int, message: str, code: str) -> None:
        await self._refuse_route(send, route_label(path), status, message, code)

    async def _refuse_route(
        self, send: Send, route: str, status: int, message: str, code: str
    ) -> None:
        self.metrics.count(route, "none", Outcome.BAD_REQUEST)
        await _send_bytes(send, status, error_body(message, "invalid_request_error", code), _LOCAL)

    # -- auth

    def _bearer(self, scope: Scope_) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return _parse_bearer(value)
        return None

    async def _unauthorized(self, send: Send, route: str, message: str) -> None:
        self.metrics.count(route, "none", Outcome.UNAUTHORIZED)
        await _send_bytes(
            send,
            401,
            error_body(message, "invalid_request_error", "invalid_api_key"),
            _LOCAL,
            extra=[(b"www-authenticate", b'Bearer realm="llm-appliance"')],
        )

    def _check_api_key(self, token: str | None) -> KeyInfo | str:
        """The key's info, or why it was refused (never echoing the key)."""
        if token is None:
            return (
                "Missing API key: send 'Authorization: Bearer <key>' "
                "(create one with `appliance keys create NAME`)."
            )
        self.refresh_keys()
        info = self._keys.verify(token, Scope.API)
        if info is None:
            return "Incorrect API key provided, or the key was revoked."
        return info

    async def _admit(self, token: str | None, route: str, send: Send, now: float) -> bool:
        """Check the API key and its rate limit; answer 401/429 and return False if refused."""
        if not self.config.auth_required:
            return True
        checked = self._check_api_key(token)
        if not isinstance(checked, KeyInfo):
            await self._unauthorized(send, route, checked)
            return False
        limit = checked.rate_limit_per_minute
        wait = self._limiter.check(checked.key_id, limit, now) if limit else None
        if wait is None:
            return True
        self.metrics.count(route, "none", Outcome.RATE_LIMITED)
        await _send_bytes(
            send,
            429,
            error_body(
                f"Rate limit reached for this key: {limit} requests per minute.",
                "requests",
                "rate_limit_exceeded",
            ),
            _LOCAL,
            extra=[(b"retry-after", retry_after_header(wait).encode())],
        )
        return False

    def _is_admin(self, token: str | None) -> bool:
        if token is None:
            return False
        if self._admin_key is not None and self._admin_key.matches(token):
            return True
        self.refresh_keys()
        return self._keys.verify(token, Scope.ADMIN) is not None

    # -- /v1/models, /health, /admin/fallback

    def _models_body(self) -> bytes:
        """What can be served right now, in OpenAI's list shape.

        Listed, not marked: an OpenAI client has no field for "down", and a model a client
        picks from the list should answer. A local model is listed while its engine is not
        known to be down, or while fallback is on and the remote API takes it under a mapped
        name; the remote API's own models while fallback is on (`auto` tries them there, a
        local 404 sends them on). Unknown health (no fresh reading yet) counts as up.
        """
        mode = self.mode
        key = (mode, self._known_down(self._signal), self._known_down(self._embeddings_signal))
        body = self._models_bodies.get(key)
        if body is None:
            body = self._models_bodies[key] = self._build_models_body(*key)
        return body

    def _build_models_body(self, mode: FallbackMode, chat_down: bool, tei_down: bool) -> bytes:
        config = self.config
        remote = config.remote if mode is not FallbackMode.OFF else None
        mapped = remote.model_map if remote is not None else {}
        local_too = mode is not FallbackMode.ALWAYS
        created = int(time.time())
        names = [
            name for name in config.chat_models if (local_too and not chat_down) or name in mapped
        ]
        embeddings = config.embeddings_model
        if embeddings and ((local_too and not tei_down) or embeddings in mapped):
            names.append(embeddings)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "llm-appliance"}
            for name in names
        ]
        if remote is not None:
            local = set(config.chat_models) | {embeddings}
            data += [
                {"id": name, "object": "model", "created": created, "owned_by": "remote"}
                for name in remote.remote_models
                if name not in local
            ]
        return json.dumps({"object": "list", "data": data}).encode()

    async def _models(self, scope: Scope_, send: Send) -> None:
        route = "/v1/models"
        if not await self._admit(self._bearer(scope), route, send, self._clock()):
            return
        self.metrics.count(route, "none", Outcome.OK)
        await _send_bytes(send, 200, self._models_body(), _LOCAL)

    async def _health(self, send: Send) -> None:
        reading = LoadReading.of(self._signal)
        monitor = _monitor_state(reading, self.config.rules.max_signal_age_s, self._signal)
        body: dict[str, object] = {
            # A stale monitor (its task died, the loop is wedged) means auto fallback has gone
            # blind: 503, so `curl -f`, systemd checks and k8s probes see it, not just a field.
            "status": "degraded" if monitor == "stale" else "ok",
            "monitor": monitor,
            "monitor_max_age_seconds": self.config.rules.max_signal_age_s,
            "version": __version__,
            "fallback_mode": self.mode.value,
            "remote_configured": self.config.remote is not None,
            "local": {
                "healthy": reading.healthy,
                "waiting_requests": reading.waiting_requests,
                "reading_age_seconds": reading.age_seconds,
            },
        }
        if self.switcher is not None:
            body["switching"] = self.switcher.report()
        body["rollout"] = self._rollout_report()
        status = 503 if monitor == "stale" else 200
        await _send_bytes(send, status, json.dumps(body).encode(), _LOCAL)

    async def _admin_fallback(
        self, scope: Scope_, receive: Receive, send: Send, method: str
    ) -> None:
        route = "/admin/fallback"
        if not self._is_admin(self._bearer(scope)):
            await self._unauthorized(send, route, "This endpoint needs the admin key.")
            return
        if method == "PUT":
            try:
                raw = await _read_body(receive, _ADMIN_BODY_LIMIT)
                requested = json.loads(raw)["mode"]
                mode = FallbackMode.parse(str(requested))
            except _TooLargeError:
                await self._too_large(send, route, _ADMIN_BODY_LIMIT)
                return
            except (_ClientGoneError, ValueError, KeyError, TypeError, ApplianceError) as error:
                message = (
                    error.render()
                    if isinstance(error, ApplianceError)
                    else 'Send a JSON body like {"mode": "off" | "auto" | "always"}.'
                )
                self.metrics.count(route, "none", Outcome.BAD_REQUEST)
                await _send_bytes(
                    send,
                    400,
                    error_body(message, "invalid_request_error", "invalid_mode", "mode"),
                    _LOCAL,
                )
                return
            if mode is not FallbackMode.OFF and self.config.remote is None:
                self.metrics.count(route, "none", Outcome.BAD_REQUEST)
                await _send_bytes(
                    send,
                    409,
                    error_body(
                        f"Fallback mode {mode.value} needs a remote API, and none is configured.",
                        "invalid_request_error",
                        "no_remote_configured",
                        "mode",
                    ),
                    _LOCAL,
                )
                return
            try:
                state = await asyncio.to_thread(
                    write_fallback, self.config.state_file, mode, changed_by="admin-api"
                )
            except ApplianceError as error:
                self.metrics.count(route, "none", Outcome.UNAVAILABLE)
                await _send_bytes(
                    send, 500, error_body(error.render(), "server_error", "state_not_saved"), _LOCAL
                )
                return
            log.info("fallback mode set to %s through the admin API", state.mode.value)
            self._state = state
            self._state_signature = FileSignature.of(self.config.state_file)
            self.metrics.set_mode(state.mode)
        self.metrics.count(route, "none", Outcome.OK)
        body = {**self._state.to_json(), "remote_configured": self.config.remote is not None}
        await _send_bytes(send, 200, json.dumps(body).encode(), _LOCAL)

    async def _admin_models(self, scope: Scope_, receive: Receive, send: Send, method: str) -> None:
        """Several chat models, for an admin: GET shows the switcher's report; POST
        {"model": NAME, "action": "wake" | "sleep" | "pin" | "unpin"} carries one order out and
        answers once it is done (a wake or pin after the switch, bounded by the engines' own
        timeouts). Never reachable without the admin key, like /admin/fallback."""
        route = "/admin/models"
        if not self._is_admin(self._bearer(scope)):
            await self._unauthorized(send, route, "This endpoint needs the admin key.")
            return
        switcher = self.switcher
        refusal: _Refusal | None
        if switcher is None:
            refusal = _Refusal(
                404, "This profile has no switched chat models (spec.switching).", "no_switching"
            )
        elif method == "POST":
            try:
                order = await _read_body(receive, _ADMIN_BODY_LIMIT)
            except _TooLargeError:
                await self._too_large(send, route, _ADMIN_BODY_LIMIT)
                return
            except _ClientGoneError:
                return
            refusal = await _carry_out(switcher, order)
        else:
            refusal = None
        if refusal is not None:
            outcome = Outcome.UNAVAILABLE if refusal.status >= 500 else Outcome.BAD_REQUEST
            self.metrics.count(route, "none", outcome)
            kind = "server_error" if refusal.status >= 500 else "invalid_request_error"
            body = error_body(refusal.message, kind, refusal.code, refusal.param)
            await _send_bytes(send, refusal.status, body, _LOCAL)
            return
        assert switcher is not None
        self.metrics.count(route, "none", Outcome.OK)
        await _send_bytes(send, 200, json.dumps(switcher.report()).encode(), _LOCAL)

    async def _too_large(self, send: Send, route: str, limit: int) -> None:
        await self._refuse_route(
            send, route, 413, f"Request body larger than {limit} bytes.", "request_too_large"
        )

    # -- the proxy

    def _arrived(self, scope: Scope_) -> float:
        """When the request's first byte was read, on this app's clock: the gateway's protocol
        marks it (`protocol.ARRIVED`); any other server's requests start when the app is called."""
        now = self._clock()
        mark = scope.get("extensions", {}).get(ARRIVED)
        if mark is None:
            return now
        return now - max(0.0, time.monotonic() - float(mark["monotonic"]))

    async def _proxy(
        self, scope: Scope_, receive: Receive, send: Send, kind: Kind, path: bytes
    ) -> None:
        route = path.decode()
        started = self._arrived(scope)
        # One pass over the headers: credentials out, everything else forwarded.
        token: str | None = None
        forwarded: Headers = []
        for name, value in scope["headers"]:
            if name in _DROP_REQUEST:
                if name == b"authorization":
                    token = _parse_bearer(value)
                continue
            forwarded.append((name, value))
        if not await self._admit(token, route, send, started):
            return
        try:
            body = await _read_body(receive, self.config.max_body_bytes)
        except _ClientGoneError:
            self.metrics.count(route, "none", Outcome.DISCONNECTED)
            return
        except _TooLargeError:
            await self._too_large(send, route, self.config.max_body_bytes)
            return
        query: bytes = scope.get("query_string") or b""
        exchange = _Exchange(
            route=route,
            started=started,
            send=send,
            path=path[3:],  # "/v1/x" -> "/x" on the base URL
            query=b"?" + query if query else b"",
            headers=forwarded,
            body=body,
        )
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, exchange))
        self.metrics.in_flight.inc()
        try:
            outcome = await self._route(kind, exchange)
        except asyncio.CancelledError:
            if not exchange.disconnected:
                raise
            task.uncancel()
            outcome = Outcome.DISCONNECTED
            log.debug("client disconnected from %s; upstream request cancelled", route)
        finally:
            exchange.finished = True
            watcher.cancel()
            self.metrics.in_flight.dec()
        self.metrics.count(route, exchange.destination, outcome)
        self.metrics.timings(route, exchange.destination)[1].observe(self._clock() - started)
        self._observe_user_latency(exchange, self._clock())

    def _observe_user_latency(self, exchange: _Exchange, now: float) -> None:
        """TTFT and end-to-end latency as the client saw them, for answers that reached it."""
        if exchange.destination not in (Destination.LOCAL.value, Destination.REMOTE.value):
            return
        if exchange.first_body_at is None:
            return
        self.metrics.user_latency(
            exchange.destination,
            self._model_label(exchange.body),
            exchange.first_body_at - exchange.started,
            now - exchange.started,
        )

    def _model_label(self, body: bytes) -> str:
        config = self.config
        known = {*config.chat_models}
        if config.embeddings_model:
            known.add(config.embeddings_model)
        if config.remote is not None:
            known.update(config.remote.model_map)
            known.update(config.remote.remote_models)
        model = _model_of(body)
        return model if model is not None and model in known else OTHER_MODEL

    async def _route(self, kind: Kind, exchange: _Exchange) -> Outcome:
        serving = self._update_in_way(exchange) if kind is Kind.CHAT else None
        if serving is not None:
            outcome = await self._during_update(exchange, serving)
            if outcome is not None:
                return outcome
        target = self._chat if kind is Kind.CHAT else self._embeddings
        if target is None:
            return await self._fail(
                exchange,
                404,
                "No embeddings model is deployed on this appliance.",
                kind="invalid_request_error",
                code="model_not_found",
            )
        switcher = self.switcher
        switched = None
        if switcher is not None and kind is Kind.CHAT:
            model = _model_of(exchange.body)
            if model is not None and model in switcher:
                switched = model
                target = self._switched[model]
        mode = self.mode
        since_failure = None if target.last_failure is None else self._clock() - target.last_failure
        watched = kind is Kind.CHAT and target is self._chat  # the probe reads spec.model's engine
        reading = LoadReading.of(self._signal) if watched else LoadReading()
        route = choose_route(mode, target.rules, reading, seconds_since_local_failure=since_failure)
        if route.is_fallback:
            return await self._to_remote(route, exchange)
        if switcher is None or switched is None:
            return await self._counted_local(target, mode, exchange)
        held = await switcher.acquire(switched)
        if held is not Held.READY:
            return await self._not_woken(switched, held, mode, exchange)
        try:
            return await self._counted_local(target, mode, exchange)
        finally:
            switcher.release(switched)

    async def _counted_local(
        self, target: _Target, mode: FallbackMode, exchange: _Exchange
    ) -> Outcome:
        target.in_flight += 1
        try:
            return await self._local(target, mode, exchange)
        finally:
            target.in_flight -= 1

    def _updated_model(self, exchange: _Exchange) -> bool:
        """Whether a chat request is for the engine being replaced (not another switched
        model's, which runs on its own engine)."""
        switcher = self.switcher
        if switcher is None:
            return True
        model = _model_of(exchange.body)
        return model is None or model not in switcher or self._switched.get(model) is self._chat

    def _update_in_way(self, exchange: _Exchange) -> asyncio.Event | None:
        """The event a chat request waits for while a model update is in its way (None: on
        its way): the chat engine replaced in place; with several chat models, apply changing
        the engines while the request is for a model it holds, or one that would be woken."""
        if not self._serving.is_set() and self._updated_model(exchange):
            return self._serving
        switcher = self.switcher
        if switcher is None or self._switched_serving.is_set():
            return None
        model = _model_of(exchange.body)
        if model is None or model not in switcher:
            return None
        if model in self._rollout.held or switcher.states[model] != "awake":
            return self._switched_serving
        return None

    async def _during_update(self, exchange: _Exchange, serving: asyncio.Event) -> Outcome | None:
        """The chat engine is being replaced in place: the remote API in auto or always mode
        when it serves the model, else hold (bounded) until the new engine serves; None to
        route as usual once it does, else 503 with Retry-After."""
        mode = self.mode
        if held_goes_remote(
            FallbackMode.AUTO if mode is FallbackMode.ALWAYS else mode,
            remote_configured=self.config.remote is not None,
            served_remotely=self._served_remotely(exchange),
        ):
            return await self._to_remote(Route(Destination.REMOTE, Reason.MODEL_UPDATING), exchange)
        if await self._until_serving(serving):
            return None
        retry = max(1, math.ceil(self.config.update_hold_timeout_s))
        return await self._fail(
            exchange,
            503,
            f"The chat model is being updated; retry in {retry} s.",
            code="model_updating",
            extra=[(b"retry-after", str(retry).encode())],
        )

    async def _not_woken(
        self, model: str, held: Held, mode: FallbackMode, exchange: _Exchange
    ) -> Outcome:
        """A request for a sleeping model that could not be held (full) or was not woken in time:
        the remote API in auto mode when it serves the model, else 503 with Retry-After."""
        switcher = self.switcher
        assert switcher is not None
        remote = held_goes_remote(
            mode,
            remote_configured=self.config.remote is not None,
            served_remotely=self._served_remotely(exchange),
        )
        if remote:
            return await self._to_remote(Route(Destination.REMOTE, Reason.MODEL_ASLEEP), exchange)
        why = {
            Held.FULL: f"{switcher.held_total} requests are already held for sleeping models",
            Held.PINNED: f"an admin pinned {switcher.pinned!r} awake",
        }.get(held, "it did not wake in time")
        retry = retry_after_s(switcher.rules)
        return await self._fail(
            exchange,
            503,
            f"The model {model!r} is asleep and {why}; retry in {retry} s.",
            code="model_asleep",
            extra=[(b"retry-after", str(retry).encode())],
        )

    async def _local(self, target: _Target, mode: FallbackMode, exchange: _Exchange) -> Outcome:
        """Send the request to a local engine; on failure, the remote API or an error."""
        exchange.destination = Destination.LOCAL.value
        failure: LocalFailure
        try:
            response = await target.upstream.send(
                b"POST", exchange.path + exchange.query, exchange.headers, exchange.body
            )
        except UpstreamConnectError as error:
            failure, detail = LocalFailure.CONNECT, str(error)
        except UpstreamTimeoutError as error:
            failure, detail = LocalFailure.TIMEOUT, str(error)
        except UpstreamError as error:
            failure, detail = LocalFailure.SERVER_ERROR, str(error)
        else:
            served = response.status == 404 and self._served_remotely(exchange)
            verdict = after_local_answer(
                mode, target.rules, response.status, model_served_remotely=served
            )
            if verdict.failure is None:
                return await self._forward(response, exchange, _LOCAL, target)
            failure = verdict.failure
            detail = (
                f"model {_model_of(exchange.body)!r} not served locally"
                if failure is LocalFailure.MODEL_NOT_FOUND
                else f"HTTP {response.status}"
            )
            if verdict.fallback is None:  # the client gets the engine's own error
                self.metrics.local_failures.labels(target.name, failure.value).inc()
                target.last_failure = self._clock()
                return await self._forward(response, exchange, _LOCAL, target)
            await response.aclose()
        return await self._local_failed(target, failure, detail, mode, exchange)

    async def _local_failed(
        self,
        target: _Target,
        failure: LocalFailure,
        detail: str,
        mode: FallbackMode,
        exchange: _Exchange,
    ) -> Outcome:
        self.metrics.local_failures.labels(target.name, failure.value).inc()
        if counts_as_engine_failure(failure):
            target.last_failure = self._clock()
        fallback = after_local_failure(
            mode, target.rules, failure, bytes_sent_to_client=exchange.body_bytes_sent
        )
        if fallback is not None:
            log.info("local %s failed (%s): sending to the remote API", target.name, detail)
            return await self._to_remote(fallback, exchange)
        log.warning("local %s failed (%s), fallback %s", target.name, detail, mode.value)
        timeout = failure is LocalFailure.TIMEOUT
        hint = (
            " Fallback to the remote API is off."
            if mode is FallbackMode.OFF and self.config.remote is not None
            else ""
        )
        return await self._fail(
            exchange,
            504 if timeout else 503,
            f"The local {target.name} engine is unavailable ({detail}).{hint}",
            code="upstream_timeout" if timeout else "local_engine_unavailable",
        )

    def _served_remotely(self, exchange: _Exchange) -> bool:
        """Whether the remote API serves the model this request names (for a local 404)."""
        remote = self.config.remote
        if remote is None:
            return False
        model = _model_of(exchange.body)
        return model is not None and (model in remote.remote_models or model in remote.model_map)

    async def _to_remote(self, route: Route, exchange: _Exchange) -> Outcome:
        remote, config, auth = self._remote, self.config.remote, self._remote_auth
        assert remote is not None
        assert config is not None
        self.metrics.fallbacks.labels(route.reason.value).inc()
        log.debug("sending %s to the remote API (%s)", exchange.route, route.reason.value)
        exchange.destination = Destination.REMOTE.value
        headers = [(n, v) for n, v in exchange.headers if n in _REMOTE_ALLOWED]
        if auth is not None:
            headers.append((b"authorization", auth))
        try:
            response = await remote.send(
                b"POST", exchange.path, headers, _map_model(exchange.body, config)
            )
        except UpstreamError as error:
            log.warning("remote API failed (%s) for %s", error, exchange.route)
            timeout = isinstance(error, UpstreamTimeoutError)
            return await self._fail(
                exchange,
                504 if timeout else 502,
                f"The remote API is unavailable ({error}).",
                code="remote_timeout" if timeout else "remote_unavailable",
            )
        return await self._forward(response, exchange, _REMOTE)

    async def _fail(
        self,
        exchange: _Exchange,
        status: int,
        message: str,
        *,
        code: str,
        kind: str = "server_error",
        extra: Headers | None = None,
    ) -> Outcome:
        exchange.status = status
        exchange.finished = True
        self.metrics.timings(exchange.route, exchange.destination)[0].observe(
            self._clock() - exchange.started
        )
        route = _REMOTE if exchange.destination == Destination.REMOTE.value else _LOCAL
        body = error_body(message, kind, code)
        await _send_bytes(exchange.send, status, body, route, extra=extra)
        return Outcome.UNAVAILABLE if status >= 500 else Outcome.BAD_REQUEST

    async def _forward(
        self,
        response: UpstreamResponse,
        exchange: _Exchange,
        route: bytes,
        target: _Target | None = None,
    ) -> Outcome:
        """Pass the response through as it arrives, chunk by chunk.

        A small body of known length (a non-streamed completion, an error) is collected first
        and sent with its head in one go: the client then wakes once instead of twice, which on
        a busy 2-core box is a measurable part of the added latency. Streams never wait.
        """
        send = exchange.send
        streams = target.streams if target is not None else None
        try:
            status = response.status
            headers, length, event_stream = _response_head(response, route)
            exchange.status = status
            if 0 <= length <= _COLLECT_LIMIT and not event_stream:
                return await self._forward_whole(response, exchange, headers, length, target)
            if streams is not None:  # the engine watch may end it (see `_watch`)
                exchange.last_chunk_at = self._clock()
                streams[exchange] = response
            # The head goes out with the first chunk (the client wakes once for both); until
            # then nothing has reached the client, and a failure is a clean error response.
            try:
                chunk = await response.next_chunk()
            except UpstreamError as error:
                await response.aclose()
                return await self._broken_early(
                    exchange, target, f"broke before its first byte: {error}"
                )
            await send({"type": "http.response.start", "status": status, "headers": headers})
            self.metrics.timings(exchange.route, exchange.destination)[0].observe(
                self._clock() - exchange.started
            )
            clock = self._clock
            try:
                while chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if exchange.first_body_at is None:
                        exchange.first_body_at = clock()
                    exchange.body_bytes_sent += len(chunk)
                    chunk = await response.next_chunk()
                    exchange.last_chunk_at = clock()
            except UpstreamError as error:
                log.warning(
                    "%s upstream broke after %d bytes: %s",
                    route.decode(),
                    exchange.body_bytes_sent,
                    error,
                )
                if not event_stream:
                    raise  # uvicorn drops the connection: the client sees a truncated body
                event = error_body(
                    f"The {route.decode()} upstream failed mid-stream ({error}).",
                    "server_error",
                    "upstream_broken",
                )
                exchange.finished = True
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + event + b"\n\n",
                        "more_body": False,
                    }
                )
                return Outcome.UPSTREAM_ERROR
            exchange.finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if streams is not None:
                streams.pop(exchange, None)
            await response.aclose()
        if status >= 500:
            return Outcome.UPSTREAM_ERROR
        return Outcome.CLIENT_ERROR if status >= 400 else Outcome.OK

    async def _broken_early(
        self, exchange: _Exchange, target: _Target | None, detail: str
    ) -> Outcome:
        """An upstream that broke before a byte reached the client: for a local engine this is
        a local failure like a 5xx (the request may still go remote); else a clean 502."""
        if target is not None:
            return await self._local_failed(
                target, LocalFailure.SERVER_ERROR, detail, self.mode, exchange
            )
        log.warning("%s upstream %s", exchange.route, detail)
        return await self._fail(exchange, 502, f"The remote API {detail}.", code="upstream_broken")

    async def _forward_whole(
        self,
        response: UpstreamResponse,
        exchange: _Exchange,
        headers: Headers,
        length: int,
        target: _Target | None,
    ) -> Outcome:
        parts: list[bytes] = []
        received = 0
        try:
            while received < length:
                chunk = await response.next_chunk()
                if not chunk:
                    break
                parts.append(chunk)
                received += len(chunk)
        except UpstreamError as error:
            # Nothing reached the client yet, so it gets a clean answer rather than a torn body.
            await response.aclose()
            return await self._broken_early(exchange, target, f"broke mid-answer: {error}")
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        if exchange.status >= 400:
            body, headers = _in_openai_shape(exchange.status, body, headers)
        await exchange.send(
            {"type": "http.response.start", "status": exchange.status, "headers": headers}
        )
        self.metrics.timings(exchange.route, exchange.destination)[0].observe(
            self._clock() - exchange.started
        )
        exchange.finished = True
        await exchange.send({"type": "http.response.body", "body": body, "more_body": False})
        exchange.first_body_at = self._clock()
        exchange.body_bytes_sent = len(body)
        if exchange.status >= 500:
            return Outcome.UPSTREAM_ERROR
        return Outcome.CLIENT_ERROR if exchange.status >= 400 else Outcome.OK


# ---------------------------------------------------------------------------------- helpers


class _TooLargeError(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise _TooLargeError
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLargeError
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], exchange: _Exchange) -> None:
    """Cancel the request's task when its client goes away, so the upstream request is dropped
    (vLLM aborts a generation whose connection closes)."""
    while not exchange.finished:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not exchange.finished:
                exchange.disconnected = True
                task.cancel()
            return


def _response_head(response: UpstreamResponse, route: bytes) -> tuple[Headers, int, bool]:
    """The headers passed back to the client, the body's length (-1: not given), and whether
    the body is an event stream."""
    headers: Headers = []
    length = -1
    event_stream = False
    for name, value in response.headers:
        if name in _DROP_RESPONSE:
            continue
        headers.append((name, value))
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"content-type" and value.startswith(b"text/event-stream"):
            event_stream = True
    headers.append((ROUTE_HEADER, route))
    return headers, length, event_stream


def _in_openai_shape(status: int, body: bytes, headers: Headers) -> tuple[bytes, Headers]:
    """An upstream's error answer in OpenAI's shape, its message kept (vLLM's `code: 404`,
    `type: NotFoundError`, TEI's `{"error": "…"}`), with the headers that now describe it.
    A compressed body (the remote API's, already in that shape) is passed on as it is."""
    if any(name == b"content-encoding" and value != b"identity" for name, value in headers):
        return body, headers
    shaped = normalised(status, body)
    if shaped is body:
        return body, headers
    kept = [(n, v) for n, v in headers if n not in (b"content-length", b"content-type")]
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(shaped)).encode())]
    return shaped, kept


def _shown(path: bytes) -> str:
    """A client's path, quoted back in an error: any bytes, at most 200 characters."""
    return path[:200].decode("utf-8", "replace")


def _parse_bearer(value: bytes) -> str | None:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    try:
        return token.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


def _model_of(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    model = document.get("model") if isinstance(document, dict) else None
    return model if isinstance(model, str) else None


def _map_model(body: bytes, remote: RemoteConfig) -> bytes:
    """The body with the local model name replaced by the remote API's name for it."""
    model_map = remote.model_map
    if not model_map:
        return body
    try:
        document = json.loads(body)
    except ValueError:
        return body  # not ours to judge: the remote API will answer 400
    if not isinstance(document, dict):
        return body
    model = document.get("model")
    if isinstance(model, str) and model in model_map:
        document["model"] = model_map[model]
        return json.dumps(document, ensure_ascii=False).encode()
    return body


@dataclass(frozen=True)
class _Refusal:
    """Why an admin's order was not carried out, as the HTTP answer says it."""

    status: int
    message: str
    code: str
    param: str | None = None


async def _carry_out(switcher: ModelSwitcher, raw: bytes) -> _Refusal | None:
    """Read one order for the switched models and carry it out; None when it was done."""
    try:
        order = json.loads(raw)
        model, action = str(order["model"]), str(order["action"])
    except (ValueError, KeyError, TypeError):
        return _Refusal(400, _ADMIN_MODELS_USAGE, "invalid_order")
    if action not in _ADMIN_MODEL_ACTIONS:
        return _Refusal(400, _ADMIN_MODELS_USAGE, "invalid_action", "action")
    if model not in switcher:
        known = ", ".join(switcher.states)
        return _Refusal(
            404, f"{model!r} is not a switched model (these are: {known}).", "model_not_found",
            "model",
        )  # fmt: skip
    try:
        if action == "wake":
            await switcher.wake(model)
        elif action == "sleep":
            await switcher.sleep(model)
        elif action == "pin":
            await switcher.pin(model)
        else:
            switcher.unpin()
    except PinnedError as error:
        return _Refusal(409, str(error), "model_pinned", "model")
    except SwitchError as error:
        return _Refusal(502, str(error), "switch_failed")
    log.info("admin: %s %s", action, model)
    return None
