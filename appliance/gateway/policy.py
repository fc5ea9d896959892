"""Where a request goes: the gateway's routing policy, pure (no IO, no clock of its own).

Two decisions are made per request, and both live here so they can be tested exhaustively:

* `choose_route` — before anything is sent: local or remote, from the fallback mode, what the
  monitor last said about the local engine (only if that reading is fresh), and whether the local
  engine failed a request very recently (a passive circuit breaker, so a dead engine costs one
  failed connect per cool-down instead of one per request).
* `after_local_failure` — when the local attempt failed *before a single byte reached the
  client*: may this request still go to the remote API? After the first byte: never, because a
  retry would duplicate output the client already has.

What must stay true: `off` never routes remote; `always` never routes local; `auto` routes remote
only for one of the documented reasons, each of which is a label on the fallback counter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from appliance.vocabulary import FallbackMode


class Destination(enum.StrEnum):
    LOCAL = "local"
    REMOTE = "remote"


class Reason(enum.StrEnum):
    """Why a request went where it went; the label values of the fallback counter."""

    LOCAL = "local"  # the ordinary case
    MODE_ALWAYS = "mode_always"
    UNHEALTHY = "unhealthy"  # the monitor (or the gateway's own probe) says the engine is down
    QUEUE = "queue"  # more requests waiting in the engine than the threshold
    RECENT_FAILURE = "recent_failure"  # the engine failed a request within the cool-down
    CONNECT_FAILED = "connect_failed"  # refused, unreachable, or the connect timed out
    TIMEOUT = "timeout"  # connected, but no answer within the first-byte timeout
    SERVER_ERROR = "server_error"  # a 5xx status before any byte went to the client
    MODEL_NOT_LOCAL = "model_not_local"  # the engine does not serve it; the remote API does
    MODEL_ASLEEP = "model_asleep"  # its engine sleeps and could not be woken in time (#19)
    MODEL_UPDATING = "model_updating"  # its engine is being replaced in place by apply (#19)


class LocalFailure(enum.StrEnum):
    """How a local attempt failed, as far as the gateway can tell before forwarding a byte."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    MODEL_NOT_FOUND = "model_not_found"


_FAILURE_REASON = {
    LocalFailure.CONNECT: Reason.CONNECT_FAILED,
    LocalFailure.TIMEOUT: Reason.TIMEOUT,
    LocalFailure.SERVER_ERROR: Reason.SERVER_ERROR,
    LocalFailure.MODEL_NOT_FOUND: Reason.MODEL_NOT_LOCAL,
}


class LoadSignal(Protocol):
    """What the monitor knows about the local engine, as the gateway consumes it.

    Any answer may be `None` ("not known"). `age_seconds` is how old the reading behind the two
    answers is (`None`: never read); the gateway ignores readings older than its freshness bound,
    so a stalled monitor can never pin traffic to the remote API.
    """

    def waiting_requests(self) -> int | None: ...

    def healthy(self) -> bool | None: ...

    @property
    def age_seconds(self) -> float | None: ...


@dataclass(frozen=True)
class LoadReading:
    """One reading of a `LoadSignal`, taken once per request so the decision sees one moment."""

    waiting_requests: int | None = None
    healthy: bool | None = None
    age_seconds: float | None = None

    @classmethod
    def of(cls, signal: LoadSignal | None) -> LoadReading:
        if signal is None:
            return cls()
        return cls(signal.waiting_requests(), signal.healthy(), signal.age_seconds)


@dataclass(frozen=True)
class RoutingRules:
    """The numbers the policy needs; built once from the gateway's configuration."""

    remote_configured: bool
    queue_threshold: int | None  # route remote when waiting requests exceed this; None: never
    max_signal_age_s: float  # readings older than this are ignored
    failure_cooldown_s: float  # after a local failure, go straight to remote for this long


@dataclass(frozen=True)
class Route:
    destination: Destination
    reason: Reason

    @property
    def is_fallback(self) -> bool:
        return self.destination is Destination.REMOTE


LOCAL = Route(Destination.LOCAL, Reason.LOCAL)


def choose_route(
    mode: FallbackMode,
    rules: RoutingRules,
    reading: LoadReading,
    *,
    seconds_since_local_failure: float | None,
) -> Route:
    """Local or remote for a request about to be sent (see the module docstring)."""
    if mode is FallbackMode.OFF or not rules.remote_configured:
        return LOCAL
    if mode is FallbackMode.ALWAYS:
        return Route(Destination.REMOTE, Reason.MODE_ALWAYS)
    fresh = reading.age_seconds is not None and 0 <= reading.age_seconds <= rules.max_signal_age_s
    if fresh and reading.healthy is False:
        return Route(Destination.REMOTE, Reason.UNHEALTHY)
    if (
        fresh
        and rules.queue_threshold is not None
        and reading.waiting_requests is not None
        and reading.waiting_requests > rules.queue_threshold
    ):
        return Route(Destination.REMOTE, Reason.QUEUE)
    if (
        seconds_since_local_failure is not None
        and 0 <= seconds_since_local_failure < rules.failure_cooldown_s
        # A fresh "healthy" reading newer than the failure means the engine came back.
        and not (
            fresh
            and reading.healthy is True
            and reading.age_seconds is not None
            and reading.age_seconds < seconds_since_local_failure
        )
    ):
        return Route(Destination.REMOTE, Reason.RECENT_FAILURE)
    return LOCAL


def after_local_failure(
    mode: FallbackMode,
    rules: RoutingRules,
    failure: LocalFailure,
    *,
    bytes_sent_to_client: int,
    model_served_remotely: bool = True,
) -> Route | None:
    """Where a request goes after its local attempt failed; `None` means: report the failure.

    `model_served_remotely` only matters for `MODEL_NOT_FOUND`: a local 404 for a model name is
    passed on to the remote API only when the remote API is known to serve that name.
    """
    if bytes_sent_to_client > 0:
        return None  # never retry once anything reached the client: no duplicated output
    if mode is not FallbackMode.AUTO or not rules.remote_configured:
        return None
    if failure is LocalFailure.MODEL_NOT_FOUND and not model_served_remotely:
        return None
    return Route(Destination.REMOTE, _FAILURE_REASON[failure])


@dataclass(frozen=True)
class LocalVerdict:
    """What to do with the local engine's answer, decided before a byte of it is forwarded.

    `failure` None: the answer is the client's (forward it). Otherwise the attempt failed:
    `fallback` says where the request goes instead, or None to hand the client the local error.
    """

    failure: LocalFailure | None = None
    fallback: Route | None = None


FORWARD = LocalVerdict()


def after_local_answer(
    mode: FallbackMode, rules: RoutingRules, status: int, *, model_served_remotely: bool = False
) -> LocalVerdict:
    """The route decision once the local engine answered with `status` (headers only).

    A 5xx is a failure of the engine; it goes remote when `after_local_failure` allows, else the
    client gets it. A 404 goes remote only in auto mode and only when the remote API serves the
    model the client asked for (`model_served_remotely`, worked out by the proxy for a 404):
    otherwise the 404 is the client's answer, as is every other status.
    """
    if status >= 500:
        failure = LocalFailure.SERVER_ERROR
    elif status == 404 and mode is FallbackMode.AUTO and model_served_remotely:
        failure = LocalFailure.MODEL_NOT_FOUND
    else:
        return FORWARD
    fallback = after_local_failure(
        mode, rules, failure, bytes_sent_to_client=0, model_served_remotely=model_served_remotely
    )
    if failure is LocalFailure.MODEL_NOT_FOUND and fallback is None:
        return FORWARD  # no remote to try: the 404 is simply the answer
    return LocalVerdict(failure, fallback)


def counts_as_engine_failure(failure: LocalFailure) -> bool:
    """Whether a failure says the engine itself is in trouble (and so opens the circuit)."""
    return failure is not LocalFailure.MODEL_NOT_FOUND
