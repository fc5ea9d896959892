"""One pooled HTTP client per upstream, with explicit deadlines, behind one small interface.

Two implementations, chosen by measurement (`bench/gateway_overhead.py`):

* `LeanPool` — HTTP/1.1 keep-alive connections on asyncio protocols with httptools' parser (the
  parser uvicorn uses). No per-request objects beyond the response, no header models, no body
  decoding: bytes in, bytes out. It is what the gateway uses for the engines on loopback, where
  the client's own cost is most of the gateway's added latency.
* `HttpxPool` — httpx, for the remote API: TLS, `HTTPS_PROXY` and the like come from a mature
  client, and the remote round trip dwarfs the client's cost. It also takes an injected httpx
  transport, so unit tests can put a `MockTransport` behind the gateway.

Both raise only this module's errors, which say whether the failure happened before the
response head arrived (so the request may still go elsewhere) or during the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, cast

import httptools
import httpx

from appliance.gateway.config import Timeouts

Headers = list[tuple[bytes, bytes]]

# Pause reading an upstream socket when this much body is buffered and not yet forwarded (a slow
# client), resume below the low mark: memory stays bounded and the engine feels backpressure.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Idle keep-alive connections older than this are dropped rather than reused: uvicorn (vLLM)
# closes idle connections after 5 s, and reusing one that is being closed loses the request.
_KEEPALIVE_EXPIRY_S = 4.0


class UpstreamError(Exception):
    """The upstream could not be used. `before_response` is True when no status line arrived."""

    before_response = True


class UpstreamConnectError(UpstreamError):
    """Refused, unreachable, or the connect timed out."""


class UpstreamTimeoutError(UpstreamError):
    """Connected, but the response head (or the next body chunk) did not come in time."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class UpstreamBrokenError(UpstreamError):
    """The connection broke or the upstream spoke invalid HTTP."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # names in lower case, as received

    async def next_chunk(self) -> bytes:
        """The body bytes received since the last call; `b""` once the body is complete."""
        ...

    async def aclose(self) -> None:
        """Give the connection back (fully read) or drop it (not); idempotent."""
        ...

    def abort(self, reason: str) -> None:
        """Drop the connection now: the pending or next `next_chunk` raises
        `UpstreamBrokenError(reason)` (the engine is known dead, a read would only wait)."""
        ...


class Upstream(Protocol):
    """A pooled client for one base URL. `path` is appended to the base URL's path."""

    base_url: str

    async def send(
        self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


async def fetch_whole(
    upstream: Upstream,
    method: bytes,
    path: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One small request to the engine for the gateway itself (health, sleep and wake calls):
    its status and whole body, the connection given back."""
    response = await upstream.send(method, path, headers, body)
    try:
        parts = []
        while chunk := await response.next_chunk():
            parts.append(chunk)
        return response.status, b"".join(parts)
    finally:
        await response.aclose()


# ---------------------------------------------------------------------------------- lean pool


def _expire(waiter: asyncio.Future[None], error: UpstreamError) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the parser's callback object for one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.until_close = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.received_any = False
        self.paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(
                UpstreamBrokenError(
                    f"invalid HTTP from upstream: {error}", before_response=not self.status
                )
            )
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_close and self.status and not self.complete:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            if not self.reused and not self.received_any and isinstance(exc, ConnectionResetError):
                # Reset on a fresh connection before a byte came back: the upstream's accept
                # queue overflowed, or it is going down. Either way it never took the request.
                self._fail(UpstreamConnectError("upstream reset the connection before answering"))
                return
            before = not self.head.done()
            self._fail(
                UpstreamBrokenError("upstream closed the connection", before_response=before)
            )

    def pause_writing(self) -> None:  # pragma: no cover - request bodies are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        framed = any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        self.until_close = not framed and status not in (204, 304)
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.status:  # the end of an interim response
            return
        self.complete = True
        self._wake()

    # -- plumbing

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: nobody may be waiting any more
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _LeanResponse:
    __slots__ = ("_connection", "_done", "_idle_s", "_pool", "_wait_s", "headers", "status")

    def __init__(self, pool: LeanPool, connection: _Connection, timeouts: Timeouts) -> None:
        self._pool = pool
        self._connection = connection
        # The first body bytes may wait as long as a response head (a stream's head comes at
        # once, its first token after the queue and the prefill); later ones only `idle_s`.
        self._wait_s = timeouts.first_byte_s
        self._idle_s = timeouts.idle_s
        self._done = False
        self.status = connection.status
        self.headers = connection.headers

    async def next_chunk(self) -> bytes:
        connection = self._connection
        while True:
            if connection.chunks:
                data = (
                    connection.chunks.popleft()
                    if len(connection.chunks) == 1
                    else b"".join(connection.chunks)
                )
                connection.chunks.clear()
                connection.buffered = 0
                if connection.paused and connection.transport is not None:
                    connection.paused = False
                    connection.transport.resume_reading()
                self._wait_s = self._idle_s
                return data
            if connection.complete:
                return b""
            if connection.error is not None:
                raise connection.error
            waiter: asyncio.Future[None] = connection.loop.create_future()
            connection.waiter = waiter
            timer = connection.loop.call_later(
                self._wait_s,
                _expire,
                waiter,
                UpstreamTimeoutError(
                    f"no data from upstream for {self._wait_s:g} s", before_response=False
                ),
            )
            try:
                await waiter
            finally:
                timer.cancel()
                connection.waiter = None

    async def aclose(self) -> None:
        self.close()

    def abort(self, reason: str) -> None:
        self._connection._fail(UpstreamBrokenError(reason, before_response=False))
        self._connection.abort()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        connection = self._connection
        if connection.complete and connection.keep_alive and not connection.closed:
            connection._reset()
            self._pool._give_back(connection)
        else:
            connection.abort()
        self._pool._slots.release()


class LeanPool:
    """Keep-alive HTTP/1.1 connections to one origin (plain or TLS), reused last-in first-out."""

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        *,
        max_connections: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.base_url = base_url
        self._host = parsed.hostname or "127.0.0.1"
        secure = parsed.scheme == "https"
        self._port = parsed.port or (443 if secure else 80)
        self._ssl: ssl.SSLContext | None = None
        if secure:
            self._ssl = ssl_context or ssl.create_default_context()
        self._prefix = parsed.path.rstrip("/").encode()
        self._host_line = b"host: " + parsed.netloc.encode() + b"\r\n"
        self._timeouts = timeouts
        self._idle: list[_Connection] = []
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)

    def _give_back(self, connection: _Connection) -> None:
        connection.reused = True
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < _KEEPALIVE_EXPIRY_S:
                return connection
            connection.abort()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                self._timeouts.connect_s,
            )
        except TimeoutError:
            raise UpstreamConnectError(
                f"connect to {self._host}:{self._port} timed out after "
                f"{self._timeouts.connect_s:g} s"
            ) from None
        except (OSError, ssl.SSLError) as error:
            raise UpstreamConnectError(
                f"cannot connect to {self._host}:{self._port}: {error.strerror or error}"
            ) from None
        return protocol

    async def send(
        self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        parts = [method, b" ", self._prefix, path, b" HTTP/1.1\r\n", self._host_line]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if body or method == b"POST":
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        parts += (b"\r\n", body)
        request = b"".join(parts)
        if self._slots.locked():  # every connection busy: wait as long as a connect may take
            try:
                await asyncio.wait_for(self._slots.acquire(), self._timeouts.connect_s)
            except TimeoutError:
                raise UpstreamConnectError(
                    f"all {self._max_connections} connections to {self._host}:{self._port} "
                    f"stayed busy for {self._timeouts.connect_s:g} s"
                ) from None
        else:
            await self._slots.acquire()
        try:
            connection = self._take_idle()
            for _attempt in range(2):
                if connection is None:
                    connection = await self._connect()
                try:
                    await self._exchange(connection, request)
                except UpstreamBrokenError:
                    # A kept-alive connection the upstream closed while it sat idle: the request
                    # never reached the application, so it is safe to send it once more.
                    if connection.reused and not connection.received_any:
                        connection.abort()
                        connection = None
                        continue
                    raise
                return _LeanResponse(self, connection, self._timeouts)
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, connection: _Connection, request: bytes) -> None:
        assert connection.transport is not None
        connection.transport.write(request)
        timer = connection.loop.call_later(
            self._timeouts.first_byte_s,
            _expire,
            connection.head,
            UpstreamTimeoutError(
                f"no response within {self._timeouts.first_byte_s:g} s", before_response=True
            ),
        )
        try:
            await connection.head
        except BaseException:
            connection.abort()
            raise
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().abort()


# ---------------------------------------------------------------------------------- httpx


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


class _HttpxResponse:
    def __init__(self, response: httpx.Response, idle_s: float) -> None:
        self._response = response
        # A transport that hands over a finished body (MockTransport) has nothing to stream.
        self._stream = (
            _once(response.content) if response.is_stream_consumed else response.aiter_raw()
        )
        self.status = response.status_code
        self.headers: Headers = [(k.lower(), v) for k, v in response.headers.raw]
        self._idle_s = idle_s
        self._started = False
        self._aborted: UpstreamBrokenError | None = None
        self._reader: asyncio.Task[object] | None = None

    async def next_chunk(self) -> bytes:
        if self._aborted is not None:
            raise self._aborted
        reader = self._reader = asyncio.current_task()
        try:
            if self._started:  # httpx's read timeout covers the first byte; this, later gaps
                chunk = await asyncio.wait_for(anext(self._stream), self._idle_s)
            else:
                chunk = await anext(self._stream)
            self._started = True
            return chunk
        except StopAsyncIteration:
            return b""
        except asyncio.CancelledError:
            if self._aborted is None or reader is None:
                raise
            reader.uncancel()  # the cancel was `abort`'s, not the request's
            raise self._aborted from None
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"no data from upstream for {self._idle_s:g} s", before_response=False
            ) from None
        except httpx.TimeoutException as error:
            raise UpstreamTimeoutError(
                str(error) or "read timed out", before_response=False
            ) from None
        except httpx.HTTPError as error:
            raise UpstreamBrokenError(
                str(error) or type(error).__name__, before_response=False
            ) from None
        finally:
            self._reader = None

    async def aclose(self) -> None:
        await self._response.aclose()

    def abort(self, reason: str) -> None:
        self._aborted = UpstreamBrokenError(reason, before_response=False)
        if self._reader is not None:
            self._reader.cancel()


class HttpxPool:
    """The same interface over one `httpx.AsyncClient` (TLS, proxies from the environment)."""

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        *,
        max_connections: int = 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._prefix = urllib.parse.urlsplit(base_url).path.rstrip("/")
        self._idle_s = timeouts.idle_s
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(
                connect=timeouts.connect_s,
                read=timeouts.first_byte_s,
                write=timeouts.idle_s,
                pool=timeouts.connect_s,
            ),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_connections, 256),
                keepalive_expiry=_KEEPALIVE_EXPIRY_S,
            ),
            follow_redirects=False,
        )

    async def send(
        self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        request = self._client.build_request(
            method.decode(),
            self.base_url + path.decode(),
            headers=list(headers),
            content=body,
        )
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise UpstreamConnectError(str(error) or type(error).__name__) from None
        except httpx.TimeoutException as error:
            raise UpstreamTimeoutError(str(error) or "timed out", before_response=True) from None
        except httpx.HTTPError as error:
            raise UpstreamBrokenError(
                str(error) or type(error).__name__, before_response=True
            ) from None
        return _HttpxResponse(response, self._idle_s)

    async def aclose(self) -> None:
        await self._client.aclose()
