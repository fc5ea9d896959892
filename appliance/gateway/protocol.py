"""uvicorn's httptools protocol with the limits a public front door needs (`ClientLimits`).

uvicorn bounds none of what a client can hold before the application sees a request: httptools
buffers a header value until it ends (20 connections each sending a 20 MB header grew the
gateway by 400 MB), a connection that sends half a request line is kept forever, and once the
process's open-files limit is reached nobody else gets in. This subclass adds, per connection:

* a cap on the request head's size and header count: a `431` in OpenAI's shape, then close;
* a deadline for the whole head, from its first byte (or from the connect, for a connection
  that sends nothing), and one for silence while a body arrives: `408`, then close;
* near the open-files limit, the connections that hold no request in progress (idle keep-alive,
  or still sending a head) are closed oldest first to make room for the new one;
* uvicorn's plain-text `400` for unparseable HTTP, in OpenAI's shape.

Closing connections is logged once per burst, with a count when the burst is over, never once
per connection. It subclasses uvicorn's own protocol (an internal class: uvicorn is pinned
exactly), so everything else — pipelining, flow control, keep-alive — is uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from appliance.gateway.config import ClientLimits
from appliance.gateway.openai_errors import error_body

log = logging.getLogger("appliance.gateway")

ARRIVED = "appliance.arrived"
"""The scope extension holding when a request's first byte was read, on `time.monotonic()`."""

_QUIET_S = 10.0  # a burst of closed connections is over after this long without one


class _Burst:
    """One warning when connections start being closed for a reason, one line when it stops."""

    def __init__(self, loop: asyncio.AbstractEventLoop, what: str, advice: str) -> None:
        self._loop = loop
        self._what = what
        self._advice = advice
        self._count = 0
        self._last = 0.0

    def note(self) -> None:
        self._last = self._loop.time()
        self._count += 1
        if self._count == 1:
            log.warning("closing connections that %s (%s)", self._what, self._advice)
            self._loop.call_later(_QUIET_S, self._check)

    def _check(self) -> None:
        quiet = self._loop.time() - self._last
        if quiet < _QUIET_S:
            self._loop.call_later(_QUIET_S - quiet, self._check)
            return
        log.info("closed %d connections that %s", self._count, self._what)
        self._count = 0


class _RefusedError(Exception):
    """Raised inside a parser callback to stop parsing a request that is over a limit."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """Use `protocol_class(limits)`: it binds the limits and the per-server bookkeeping."""

    limits: ClassVar[ClientLimits] = ClientLimits()
    # Open connections uvicorn may hold before idle ones are closed; None: no limit known.
    connection_budget: ClassVar[int | None] = None
    # Connections holding no request in progress, oldest first (a dict keeps insertion order).
    idle: ClassVar[dict[GatewayHttpProtocol, None]]
    bursts: ClassVar[dict[str, _Burst]]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_open = False  # a request head has begun and is not complete
        self._body_open = False  # a head is complete and its body is not
        self._messages = 0
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for = ""
        self._body_at = 0.0

    # -- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._make_room()
        type(self).idle[self] = None
        self._arm("head", self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        type(self).idle.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, less its warning per unparseable request (a flood of them would flood
        # the log) and its hand-over of upgrades: the gateway serves no WebSockets.
        self._unset_keepalive_if_required()
        counting = self._head_open
        message = self._messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # served as a plain request: upgrading is never agreed to
        except httptools.HttpParserError:
            if self._refusal is None:
                self._burst("garbage", "sent HTTP that cannot be parsed", "answered 400").note()
            self.send_400_response("Invalid HTTP request received.")
            return
        if self.transport.is_closing():
            self._disarm()
            return
        if self._head_open:
            # Bytes of a chunk fed entirely inside one head count against it; the chunk in
            # which a head begins may also hold the previous request, so it does not. A head
            # therefore holds at most the limit plus one read (256 KiB).
            if counting and message == self._messages:
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_header_bytes:
                    self._burst(
                        "large", "sent request headers over the limits", "answered 431"
                    ).note()
                    self._refuse_head()
                    return
            if self._deadline_for != "head":
                self._arm("head", self.limits.header_timeout_s)
        elif self._body_open:
            self._body_at = self.loop.time()
            if self._deadline_for != "body":
                self._arm("body", self.limits.body_timeout_s)
        elif self._deadline_for:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one is waiting
        if not self.transport.is_closing() and self._answered():
            idle = type(self).idle
            idle.pop(self, None)
            idle[self] = None  # to the end: idle since now

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # When the request's first byte was read: the gateway's latencies start here, not when
        # the application is called, so the head's parsing and the wait for the event loop to
        # run the request (both felt by the client) are in them.
        self.scope["extensions"] = {ARRIVED: {"monotonic": time.monotonic()}}
        self._messages += 1
        self._head_open = True
        self._head_bytes = 0
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (
                431,
                f"More than {self.limits.max_headers} request headers.",
                "request_header_fields_too_large",
            )
            self._burst("large", "sent request headers over the limits", "answered 431").note()
            raise _RefusedError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._body_open = True  # until on_message_complete, which follows at once without one
        type(self).idle.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_open = False
        super().on_message_complete()

    # -- refusals

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse (and to a refusal raised inside it)."""
        if self._refusal is not None:
            self._answer_and_close(*self._refusal)
            return
        self._answer_and_close(400, f"{msg.rstrip('.')}: not valid HTTP/1.1.", "invalid_http")

    def _refuse_head(self) -> None:
        self._answer_and_close(
            431,
            f"Request line and headers larger than {self.limits.max_header_bytes} bytes.",
            "request_header_fields_too_large",
        )

    def _answer_and_close(self, status: int, message: str, code: str) -> None:
        body = error_body(message, "invalid_request_error", code)
        head = (
            STATUS_LINE[status] + b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"x-appliance-route: local\r\n"
            b"connection: close\r\n\r\n"
        )
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()

    # -- deadlines

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._deadline_for = what
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._deadline_for = ""

    def _expired(self) -> None:
        what = self._deadline_for
        self._deadline = None
        self._deadline_for = ""
        if self.transport.is_closing():
            return
        if what == "body":
            if not self._body_open:
                return
            silent = self.loop.time() - self._body_at
            if silent < self.limits.body_timeout_s:
                self._arm("body", self.limits.body_timeout_s - silent)
                return
        elif what != "head" or not self._answered():
            return  # a request is being answered: not this deadline's business
        limits = self.limits
        self._burst(
            "slow",
            "did not finish sending a request in time",
            f"{limits.header_timeout_s:g} s for a request head, {limits.body_timeout_s:g} s of "
            "silence in a body: stalled clients, or someone holding connections open",
        ).note()
        started = self.cycle is not None and self.cycle.response_started
        if (what == "head" and self._messages) or (what == "body" and not started):
            self._answer_and_close(
                408,
                f"The request did not arrive within {self._timeout(what):g} s.",
                "request_timeout",
            )
        else:
            # It never sent a byte, or its request was answered already (a 401 before the
            # body was read): there is nothing to answer.
            self.transport.close()

    def _answered(self) -> bool:
        """No request of this connection is being answered now."""
        return self.cycle is None or self.cycle.response_complete

    def _timeout(self, what: str) -> float:
        return self.limits.body_timeout_s if what == "body" else self.limits.header_timeout_s

    # -- open files

    def _make_room(self) -> None:
        """Close idle connections, oldest first, while this one takes the budget past its end.

        In flight requests count twice: each also holds a connection to an upstream.
        """
        budget = self.connection_budget
        if budget is None:
            return
        excess = len(self.connections) + len(self.tasks) - budget
        if excess <= 0:
            return
        idle = type(self).idle
        burst = self._burst(
            "shed",
            "were idle or still sending a request, to stay under the open-files limit",
            f"about {budget} connections fit; raise LimitNOFILE, or look for a client "
            "holding many connections",
        )
        while excess > 0 and idle:
            oldest = next(iter(idle))
            del idle[oldest]
            oldest._disarm()
            oldest.transport.close()
            burst.note()
            excess -= 1

    def _burst(self, key: str, what: str, advice: str) -> _Burst:
        bursts = type(self).bursts
        burst = bursts.get(key)
        if burst is None:
            burst = bursts[key] = _Burst(self.loop, what, advice)
        return burst


def protocol_class(limits: ClientLimits) -> type[GatewayHttpProtocol]:
    """The protocol class for one server: `limits`, and the open-files budget of this process."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = None if soft == resource.RLIM_INFINITY else max(16, soft - limits.open_files_reserve)

    class BoundGatewayHttpProtocol(GatewayHttpProtocol):
        pass

    BoundGatewayHttpProtocol.limits = limits
    BoundGatewayHttpProtocol.connection_budget = budget
    BoundGatewayHttpProtocol.idle = {}
    BoundGatewayHttpProtocol.bursts = {}
    return BoundGatewayHttpProtocol
