"""Is `appliance bench`'s load generator ever the bottleneck of what it measures? (issue #18)

The generator (`appliance.operations.bench.run_level` over its `LeanPool`, timing and SSE
parsing included) runs in this process, pinned to one core with `os.sched_setaffinity`; a
zero-latency double runs in a subprocess pinned to another core: raw asyncio on uvloop that
answers every streamed chat completion at once with a canned SSE body (4 token events, vLLM's
usage event, `[DONE]`), parsing nothing but the request's framing.

Figures, measured in the same run against the same double:

  floor        a minimal asyncio client: write the request, read to the stream's end, no timing
               and no parsing (what one core can do at all)
  generator    `run_level` with the LeanPool transport, as `appliance bench` runs it
  httpx        `run_level` with httpx as the transport (the client choice, measured)

1. requests/s at 64 and at 500 concurrent requests (ratios against the floor);
2. 500 streams held open at once: the double sends a token every 50 ms, 10 per stream; the
   generator's peak streams in flight (from its own start/end times, as vLLM computes
   `max_concurrent_requests`) and its ITL p50/p99 against the 50 ms the double waits: the excess
   is what the generator adds under that load.

Targets (issue #18): >= 2,000 requests/s and >= 500 concurrent streams on one core. It prints
figures; it asserts nothing. Counts are bounded (a few tens of thousands of requests at most).

    .venv/bin/python bench/loadgen.py [--requests 6000] [--streams 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.benchmark import RequestOutcome  # noqa: E402
from appliance.gateway.config import Timeouts  # noqa: E402
from appliance.gateway.upstream import HttpxPool  # noqa: E402
from appliance.monitor.maths import percentile  # noqa: E402
from appliance.operations.bench import Workload, lean_upstream, run_level  # noqa: E402
from tests.doubles import free_port, stop_process  # noqa: E402

DOUBLE = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import uvloop

    port, delay, tokens = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    os.sched_setaffinity(0, {int(sys.argv[4])})

    def event(payload):
        data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\\n\\n"
        return f"{len(data):x}\\r\\n".encode() + data + b"\\r\\n"

    HEAD = (b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\n"
            b"transfer-encoding: chunked\\r\\n\\r\\n")
    base = {"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 0, "model": "tiny"}
    TOKENS = [event({**base, "choices": [{"index": 0, "delta": {"content": f" t{i}"},
                                          "finish_reason": None}]}) for i in range(tokens)]
    TAIL = event({**base, "choices": [], "usage": {"prompt_tokens": 8,
                  "completion_tokens": tokens, "total_tokens": 8 + tokens}})
    TAIL += b"e\\r\\ndata: [DONE]\\n\\n\\r\\n0\\r\\n\\r\\n"
    WHOLE = HEAD + b"".join(TOKENS) + TAIL

    class Double(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""

        def data_received(self, data):
            self.buffer += data
            while True:
                end = self.buffer.find(b"\\r\\n\\r\\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                length = 0
                for line in head.split(b"\\r\\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line[15:])
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                if delay <= 0:
                    self.transport.write(WHOLE)
                else:
                    asyncio.ensure_future(self.slow())

        async def slow(self):
            self.transport.write(HEAD)
            for piece in TOKENS:
                await asyncio.sleep(delay)
                if self.transport.is_closing():
                    return
                self.transport.write(piece)
            self.transport.write(TAIL)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Double, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())
    """
)

DONE = b"0\r\n\r\n"


@contextlib.contextmanager
def double(delay_s: float, tokens: int, core: int) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", DOUBLE, str(port), str(delay_s), str(tokens), str(core)]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the zero-latency double did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(process)


WORKLOAD = Workload(model="tiny", input_len=8, output_len=4)
HEADERS = [(b"content-type", b"application/json"), (b"authorization", b"Bearer bench")]


# ---------------------------------------------------------------------------------- the floor


async def _floor_worker(port: int, request: bytes, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readuntil(DONE)
    finally:
        writer.close()


async def floor(url: str, concurrency: int, total: int) -> float:
    port = int(url.split(":")[2].split("/", maxsplit=1)[0])
    body = WORKLOAD.bodies(1)[0]
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer bench\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    ) + body
    per = max(1, total // concurrency)
    await asyncio.gather(*(_floor_worker(port, request, 2) for _ in range(concurrency)))
    started = time.perf_counter()
    await asyncio.gather(*(_floor_worker(port, request, per) for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - started)


# ---------------------------------------------------------------------------------- generator


def _httpx(url: str, connections: int) -> HttpxPool:
    return HttpxPool(url, Timeouts(connect_s=30.0), max_connections=connections)


async def generator(
    url: str, concurrency: int, total: int, client: str
) -> tuple[float, list[RequestOutcome]]:
    upstream = (
        lean_upstream(url, concurrency, True) if client == "lean" else _httpx(url, concurrency)
    )
    bodies = WORKLOAD.bodies(total)
    try:
        await run_level(upstream, WORKLOAD, HEADERS, bodies[: concurrency * 2],
                        concurrency=concurrency)  # fmt: skip
        outcomes, duration = await run_level(
            upstream, WORKLOAD, HEADERS, bodies, concurrency=concurrency
        )
    finally:
        await upstream.aclose()
    failed = [o for o in outcomes if not o.ok]
    if failed:
        print(f"  {client}: {len(failed)} failed, e.g. {failed[0].error}")
    return len(outcomes) / duration, outcomes


def peak_in_flight(outcomes: list[RequestOutcome]) -> int:
    """The most requests in flight at once, by vLLM's sweep over [start, start + latency)."""
    events = []
    for outcome in outcomes:
        if outcome.ok:
            events += [(outcome.start, 1), (outcome.start + outcome.latency, -1)]
    events.sort()
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per rate run")
    parser.add_argument("--streams", type=int, default=500, help="streams held open at once")
    parser.add_argument("--skip-httpx", action="store_true", help="leave out the httpx client")
    args = parser.parse_args()
    total = min(args.requests, 30000)
    streams = min(args.streams, 2000)
    cores = sorted(os.sched_getaffinity(0))
    mine, theirs = cores[0], cores[-1]
    os.sched_setaffinity(0, {mine})
    print(f"generator pinned to core {mine}, double to core {theirs} ({len(cores)} cores seen)")
    with double(0.0, 4, theirs) as url:
        print(f"\nrequests/s, zero-latency double (4 tokens + usage per stream), {total} requests")
        header = f"{'client':<10}" + "".join(f"{f'c={c}':>12}{'vs floor':>10}" for c in (64, 500))
        print(header)
        print("-" * len(header))
        rates: dict[str, dict[int, float]] = {"floor": {}, "generator": {}, "httpx": {}}
        for concurrency in (64, 500):
            rates["floor"][concurrency] = uvloop.run(floor(url, concurrency, total))
            rate, _ = uvloop.run(generator(url, concurrency, total, "lean"))
            rates["generator"][concurrency] = rate
            if not args.skip_httpx:
                rate, _ = uvloop.run(generator(url, concurrency, min(total, 3000), "httpx"))
                rates["httpx"][concurrency] = rate
        for name, by_level in rates.items():
            if not by_level:
                continue
            cells = "".join(
                f"{by_level[c]:12,.0f}{by_level[c] / rates['floor'][c]:10.2f}" for c in by_level
            )
            print(f"{name:<10}{cells}")
    delay, tokens = 0.05, 10
    with double(delay, tokens, theirs) as url:
        rate, outcomes = uvloop.run(generator(url, streams, streams * 2, "lean"))
        itls = [gap for outcome in outcomes if outcome.ok for gap in outcome.itl]
        ok = sum(outcome.ok for outcome in outcomes)
        print(
            f"\n{streams} streams held open (a token every {delay * 1000:.0f} ms, {tokens} each), "
            f"{len(outcomes)} requests, {ok} completed"
        )
        print(f"peak streams in flight: {peak_in_flight(outcomes)}")
        p50, p99 = percentile(itls, 50), percentile(itls, 99)
        print(
            f"ITL p50 {p50 * 1000:.1f} ms (+{(p50 - delay) * 1000:.1f}), "
            f"p99 {p99 * 1000:.1f} ms (+{(p99 - delay) * 1000:.1f}) against the double's "
            f"{delay * 1000:.0f} ms"
        )
        print(
            f"requests/s while holding them: {rate:,.0f} (ideal {streams / (delay * tokens):,.0f})"
        )


if __name__ == "__main__":
    main()
