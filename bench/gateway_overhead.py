"""What the gateway adds to a request, measured against the same upstream called directly.

Everything runs on 127.0.0.1: an engine double (vLLM's API, `tests/doubles/engine_double.py`) as
the upstream, then each front in its own process:

  direct         the double itself
  gateway        appliance.gateway (plain ASGI, uvicorn + uvloop + httptools, LeanPool client)
  gateway-httpx  the same gateway with httpx as the upstream client (the client choice, measured)
  gateway-aiohttp  the same with aiohttp (only if aiohttp is installed; not a dependency)
  naive          Starlette + uvicorn + one pooled httpx client: the 36-line pass-through
  nginx          Debian's nginx as a plain reverse proxy with keep-alive upstream (if installed)

The LiteLLM proxy is not measured: it is a large install for a figure the design already
records (13-16 ms added on this machine class).

Fronts are measured interleaved (one request to each in turn, in a shuffled order per round) so
that drift of a shared 2-core machine hits all of them alike. Figures: p50/p99 added latency
over direct for a non-streamed completion and for the first byte of a streamed one, at one
client; then requests/s with 1 and 64 concurrent clients. Counts are bounded: a few thousand
requests per front at most. It prints figures; it asserts nothing.

    .venv/bin/python bench/gateway_overhead.py [--rounds 1500] [--concurrency-requests 1920]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.gateway.keys import create_key  # noqa: E402
from tests.doubles import DOUBLE, free_port, stop_process  # noqa: E402

MODEL = "tiny"
CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
).encode()
STREAM = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 2,
        "stream": True,
    }
).encode()

NAIVE = textwrap.dedent(
    """
    import sys, httpx, uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route
    from starlette.background import BackgroundTask

    UPSTREAM = sys.argv[1]
    client = httpx.AsyncClient(base_url=UPSTREAM, timeout=600,
                               limits=httpx.Limits(max_connections=1024))

    async def proxy(request: Request):
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length", b"authorization")]
        upstream = client.build_request(request.method, request.url.path, headers=headers,
                                        content=body)
        response = await client.send(upstream, stream=True)
        out = {k: v for k, v in response.headers.items()
               if k.lower() not in ("content-length", "transfer-encoding", "connection")}
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                 headers=out, background=BackgroundTask(response.aclose))

    app = Starlette(routes=[Route("/v1/{path:path}", proxy, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop",
                http="httptools", access_log=False, log_level="warning")
    """
)

GATEWAY = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from appliance.gateway.app import GatewayApp
    from appliance.gateway.config import GatewayConfig, Timeouts
    from appliance.gateway.server import build_server
    from appliance.gateway.upstream import HttpxPool

    upstream, port, state, client = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    logging.basicConfig(level=logging.WARNING)
    config = GatewayConfig(chat_upstream=upstream + "/v1", chat_models=("tiny",),
                           keys_file=state / "keys.json", state_file=state / "state.json")
    chat = None
    if client == "httpx":
        chat = HttpxPool(config.chat_upstream, Timeouts())
    elif client == "aiohttp":
        import aiohttp

        class AiohttpResponse:
            def __init__(self, response):
                self._response = response
                self.status = response.status
                self.headers = [(k.lower(), v) for k, v in response.raw_headers]

            async def next_chunk(self):
                return await self._response.content.readany()

            async def aclose(self):
                self._response.release()

        class AiohttpPool:
            base_url = config.chat_upstream

            def __init__(self):
                self._session = None

            async def send(self, method, path, headers, body):
                if self._session is None:
                    self._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=1024), auto_decompress=False
                    )
                response = await self._session.request(
                    method.decode(), self.base_url + path.decode(),
                    headers={k.decode(): v.decode() for k, v in headers}, data=body,
                )
                return AiohttpResponse(response)

            async def aclose(self):
                if self._session is not None:
                    await self._session.close()

        chat = AiohttpPool()
    server = build_server(GatewayApp(config, chat_upstream=chat), "127.0.0.1", port,
                          log_level="warning")
    server.run()
    """
)

NGINX = textwrap.dedent(
    """
    worker_processes 1;
    daemon off;
    pid {root}/nginx.pid;
    error_log {root}/error.log warn;
    events {{ worker_connections 2048; }}
    http {{
        access_log off;
        client_body_temp_path {root}/body;
        proxy_temp_path {root}/proxy;
        fastcgi_temp_path {root}/fastcgi;
        uwsgi_temp_path {root}/uwsgi;
        scgi_temp_path {root}/scgi;
        upstream engine {{ server 127.0.0.1:{upstream}; keepalive 128; }}
        server {{
            listen 127.0.0.1:{port};
            location / {{
                proxy_pass http://engine;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_buffering off;
            }}
        }}
    }}
    """
)


# The double is a stdlib ThreadingHTTPServer: its listen backlog is 5 (at 64 clients the accept
# queue overflows and the kernel resets connections) and it leaves Nagle on (a response written
# as head then body waits for a delayed ACK: 40 ms stalls). vLLM's uvicorn listens with a
# backlog of 2048 and sets TCP_NODELAY; so does the double here, started through this launcher.
UPSTREAM = textwrap.dedent(
    """
    import runpy, socketserver, sys
    socketserver.TCPServer.request_queue_size = 2048
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"{what} exited with {process.returncode}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    msg = f"{what} did not listen on {port}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def _process(argv: list[str], port: int, what: str, env: dict[str, str]) -> Iterator[int]:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        _wait_port(port, process, what)
        yield port
    finally:
        stop_process(process)


@contextlib.contextmanager
def fronts(upstream_port: int, workdir: Path, wanted: list[str]) -> Iterator[dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = f"http://127.0.0.1:{upstream_port}"
    ports = {"direct": upstream_port}
    with contextlib.ExitStack() as stack:
        for name in wanted:
            port = free_port()
            if name.startswith("gateway"):
                client = name.partition("-")[2] or "lean"
                if client == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
                    print("gateway-aiohttp: aiohttp is not installed, skipped")
                    continue
                argv = [sys.executable, "-c", GATEWAY, upstream, str(port), str(workdir), client]
            elif name == "naive":
                argv = [sys.executable, "-c", NAIVE, upstream, str(port)]
            elif name == "nginx":
                nginx = shutil.which("nginx") or "/usr/sbin/nginx"
                if not Path(nginx).exists():
                    print("nginx: not installed (apt-get install nginx-light), skipped")
                    continue
                root = workdir / "nginx"
                root.mkdir(exist_ok=True)
                conf = root / "nginx.conf"
                conf.write_text(NGINX.format(root=root, upstream=upstream_port, port=port))
                argv = [nginx, "-c", str(conf), "-p", str(root)]
            else:
                continue
            stack.enter_context(_process(argv, port, name, env))
            ports[name] = port
        yield ports


# ---------------------------------------------------------------------------------- one client

HEADERS = {"content-type": "application/json", "authorization": "Bearer none"}  # set in main


class Client:
    """One keep-alive connection with the standard library's client (same cost for every front)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def complete(self) -> float:
        started = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", CHAT, HEADERS)
        response = self.connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200, response.status
        return elapsed

    def first_byte(self) -> float:
        started = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", STREAM, HEADERS)
        response = self.connection.getresponse()
        first = response.read1(65536)
        elapsed = time.perf_counter() - started
        assert response.status == 200
        assert first
        response.read()
        return elapsed


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_latency(ports: dict[str, int], rounds: int) -> dict[str, dict[str, list[float]]]:
    clients = {name: Client(port) for name, port in ports.items()}
    results: dict[str, dict[str, list[float]]] = {
        name: {"complete": [], "first_byte": []} for name in ports
    }
    names = list(ports)
    for name in names:  # warm up connections and pools
        for _ in range(20):
            clients[name].complete()
            clients[name].first_byte()
    rng = random.Random(8)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            results[name]["complete"].append(clients[name].complete())
        rng.shuffle(names)
        for name in names:
            results[name]["first_byte"].append(clients[name].first_byte())
    return results


# ---------------------------------------------------------------------------------- throughput


async def _worker(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"authorization: "
        + HEADERS["authorization"].encode()
        + b"\r\ncontent-length: "
        + str(len(CHAT)).encode()
        + b"\r\n\r\n"
    ) + CHAT
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise AssertionError((port, head, await reader.read(500)))
            length = None
            chunked = False
            for line in head.split(b"\r\n"):
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
                    chunked = True
            if length is not None:
                await reader.readexactly(length)
            elif chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
    finally:
        writer.close()


async def _throughput(port: int, concurrency: int, total: int) -> float:
    per = max(1, total // concurrency)
    await asyncio.gather(*(_worker(port, 5) for _ in range(concurrency)))  # warm up
    started = time.perf_counter()
    await asyncio.gather(*(_worker(port, per) for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - started)


def measure_throughput(ports: dict[str, int], concurrency: int, total: int) -> dict[str, float]:
    return {
        name: asyncio.run(_throughput(port, concurrency, total)) for name, port in ports.items()
    }


# ---------------------------------------------------------------------------------- report


def report(
    latency: dict[str, dict[str, list[float]]], rates: dict[int, dict[str, float]], rounds: int
) -> None:
    ms = 1000.0
    direct = latency["direct"]
    print(f"\nlatency at 1 client, {rounds} interleaved rounds per front (ms)")
    header = (
        f"{'front':<16} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7}"
        f"   {'ttfb p50':>8} {'ttfb p99':>8} {'+p50':>7} {'+p99':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, series in latency.items():
        c50, c99 = quantile(series["complete"], 0.5), quantile(series["complete"], 0.99)
        f50, f99 = quantile(series["first_byte"], 0.5), quantile(series["first_byte"], 0.99)
        d = direct
        dc50, dc99 = quantile(d["complete"], 0.5), quantile(d["complete"], 0.99)
        df50, df99 = quantile(d["first_byte"], 0.5), quantile(d["first_byte"], 0.99)
        print(
            f"{name:<16} {c50 * ms:7.3f} {c99 * ms:7.3f} {(c50 - dc50) * ms:+7.3f} "
            f"{(c99 - dc99) * ms:+7.3f}   {f50 * ms:8.3f} {f99 * ms:8.3f} "
            f"{(f50 - df50) * ms:+7.3f} {(f99 - df99) * ms:+7.3f}"
        )
    print("\nrequests/s (non-streamed completions)")
    levels = sorted(rates)
    print(f"{'front':<16} " + " ".join(f"{f'{c} client(s)':>14} {'vs direct':>9}" for c in levels))
    for name in latency:
        cells = []
        for level in levels:
            rate = rates[level][name]
            cells.append(f"{rate:14.0f} {rate / rates[level]['direct']:9.2f}")
        print(f"{name:<16} " + " ".join(cells))
    if "naive" in rates[levels[0]] and "gateway" in rates[levels[0]]:
        ratio = ", ".join(f"{rates[c]['gateway'] / rates[c]['naive']:.2f}x at {c}" for c in levels)
        print(f"\ngateway vs naive Starlette + httpx pass-through: {ratio}")
    stdev = statistics.pstdev(direct["complete"]) * ms
    print(f"(direct non-streamed: mean {statistics.mean(direct['complete']) * ms:.3f} ms, "
          f"stdev {stdev:.3f} ms)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1500, help="interleaved rounds (max 3000)")
    parser.add_argument(
        "--concurrency-requests", type=int, default=1920, help="requests per throughput run"
    )
    parser.add_argument(
        "--fronts",
        default="gateway,gateway-httpx,gateway-aiohttp,naive,nginx",
        help="comma-separated: gateway, gateway-httpx, gateway-aiohttp, naive, nginx",
    )
    args = parser.parse_args()
    rounds = min(args.rounds, 3000)
    total = min(args.concurrency_requests, 4000)
    env = {"DOUBLE_TOKEN_DELAY_S": "0", "PATH": "/usr/bin:/bin"}
    upstream_port = free_port()
    double = [sys.executable, "-c", UPSTREAM, str(DOUBLE), "--role", "vllm", "--model", "/m"]
    double += ["--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(upstream_port)]
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as workdir,
        _process(double, upstream_port, "engine double", env),
    ):
        # The gateway checks a real key on every request, as it does in production.
        key = create_key(Path(workdir) / "keys.json", "bench").key
        HEADERS["authorization"] = f"Bearer {key}"
        with fronts(upstream_port, Path(workdir), args.fronts.split(",")) as ports:
            print(f"fronts: {', '.join(f'{n}:{p}' for n, p in ports.items())}")
            latency = measure_latency(ports, rounds)
            rates = {c: measure_throughput(ports, c, total if c > 1 else total // 4)
                     for c in (1, 64)}  # fmt: skip
    report(latency, rates, rounds)


if __name__ == "__main__":
    main()
