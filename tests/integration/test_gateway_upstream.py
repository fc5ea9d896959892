"""The gateway's lean HTTP/1.1 pool against scripted servers on 127.0.0.1.

Each server answers with exact bytes, so framing (length, chunked, close-delimited), keep-alive
reuse, a connection closed while idle, and every deadline are checked for what they are.
Deadlines are set tiny and the server simply never answers: nothing waits on a wall clock
except the deadline under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from appliance.gateway.config import Timeouts
from appliance.gateway.upstream import (
    LeanPool,
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamTimeoutError,
)
from tests.doubles import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FAST = Timeouts(connect_s=1.0, first_byte_s=0.2, idle_s=0.2)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def run(handler: Handler, body: Callable[[LeanPool, list[bytes]], Awaitable[None]]) -> None:
    seen: list[bytes] = []

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(b"connection")
            await serve(reader, writer)

        server = await asyncio.start_server(recording, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = LeanPool(f"http://127.0.0.1:{port}/v1", FAST)
        try:
            await body(pool, seen)
        finally:
            await pool.aclose()
            server.close()

    asyncio.run(main())


async def _body(pool: LeanPool, path: bytes = b"/x") -> tuple[int, bytes]:
    response = await pool.send(b"POST", path, [(b"content-type", b"application/json")], b"{}")
    parts = []
    try:
        while chunk := await response.next_chunk():
            parts.append(chunk)
    finally:
        await response.aclose()
    return response.status, b"".join(parts)


def test_keep_alive_reuses_one_connection_and_sends_the_base_path() -> None:
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            requests.append(await _read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def body(pool: LeanPool, seen: list[bytes]) -> None:
        for _ in range(3):
            assert await _body(pool) == (200, b"ok")
        assert len(seen) == 1

    run(handler, body)
    assert requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"content-length: 2\r\n" in requests[0]
    assert requests[0].endswith(b"\r\n\r\n{}")


def test_chunked_and_close_delimited_bodies_arrive_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            if b"/chunked" in request:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for piece in (b"data: 1\n\n", b"data: 2\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:
                writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
                await writer.drain()
                return  # the body ends where the connection does

    async def body(pool: LeanPool, seen: list[bytes]) -> None:
        assert await _body(pool, b"/chunked") == (200, b"data: 1\n\ndata: 2\n\n")
        assert await _body(pool, b"/close") == (200, b"until the end")

    run(handler, body)


def test_a_connection_closed_while_idle_is_replaced_transparently() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # ...and close at once, as an upstream whose keep-alive timer fired would.

    async def body(pool: LeanPool, seen: list[bytes]) -> None:
        assert await _body(pool) == (200, b"ok")
        await asyncio.sleep(0.05)  # let the close arrive, as it would between two requests
        assert await _body(pool) == (200, b"ok")
        assert len(seen) == 2

    run(handler, body)


def test_deadlines_say_whether_the_response_had_begun() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if b"/stall-body" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
        await reader.read()  # then say nothing more

    async def body(pool: LeanPool, seen: list[bytes]) -> None:
        with pytest.raises(UpstreamTimeoutError) as head:
            await pool.send(b"POST", b"/stall-head", [], b"{}")
        assert head.value.before_response
        response = await pool.send(b"POST", b"/stall-body", [], b"{}")
        assert await response.next_chunk() == b"abc"
        with pytest.raises(UpstreamTimeoutError) as idle:
            await response.next_chunk()
        assert not idle.value.before_response
        await response.aclose()

    run(handler, body)


def test_a_dying_upstream_and_a_closed_port() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        transport = writer.transport
        transport.abort()

    async def body(pool: LeanPool, seen: list[bytes]) -> None:
        response = await pool.send(b"POST", b"/x", [], b"{}")
        assert response.status == 200

        async def drain() -> None:
            while await response.next_chunk():
                pass

        with pytest.raises(UpstreamBrokenError) as broken:
            await drain()
        assert not broken.value.before_response
        await response.aclose()
        closed = LeanPool(f"http://127.0.0.1:{free_port()}/v1", FAST)
        with pytest.raises(UpstreamConnectError):
            await closed.send(b"POST", b"/x", [], b"{}")

    run(handler, body)


def test_a_full_pool_is_a_connect_failure_not_an_endless_wait() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def body(pool: LeanPool, seen: list[bytes]) -> None:
        small = LeanPool(pool.base_url, Timeouts(connect_s=0.1), max_connections=1)
        held = await small.send(b"POST", b"/x", [], b"{}")
        with pytest.raises(UpstreamConnectError, match="busy"):
            await small.send(b"POST", b"/x", [], b"{}")
        await held.aclose()
        await small.aclose()

    run(handler, body)
