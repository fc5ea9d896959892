"""The bounded abuse test of issue #13: what a hostile client can do without a key, all at once.

Against the real gateway process on 127.0.0.1, held to 1024 open files (systemd's default soft
limit): 20 connections each sending an endless header, 1,100 requests that stop half-way through
their head and are held open, and 20,000 requests for random paths over pipelined keep-alive
connections. Afterwards a real chat request through the gateway still completes, /metrics stays
small and names no client path, and the gateway's memory has not grown past a bound.

Bounded: every count above is fixed, every socket has a timeout, and only 127.0.0.1 is reached.
The chat request's latency is printed (`-s` shows it), never asserted.
"""

from __future__ import annotations

import resource
import socket
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from appliance.gateway.keys import create_key
from tests.integration.test_gateway import CHAT, engine, gateway, vllm

OPEN_FILES = 1024
ENDLESS_HEADERS = 20
ENDLESS_HEADER_BYTES = 20 * 1024 * 1024
HALF_SENT = 1100
RANDOM_PATHS = 20_000
PIPELINES = 20
METRICS_LIMIT = 50 * 1024
RSS_GROWTH_LIMIT = 50 * 1024 * 1024


def _endless_header(port: int) -> int:
    """Send one header that never ends; return how many bytes got in before the cut-off."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-endless: ")
        sent = 0
        try:
            while sent < ENDLESS_HEADER_BYTES:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return sent


def _half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: appl")
    return sock


def _random_paths(port: int, count: int) -> int:
    """`count` GETs of random paths pipelined on one keep-alive connection; the 404s seen."""
    requests = b"".join(
        b"GET /%s/%s HTTP/1.1\r\nhost: x\r\n\r\n" % (uuid.uuid4().hex.encode(), b"sk-appl-%d" % i)
        for i in range(count)
    )
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(30)
        sock.sendall(requests)
        while received.count(b"HTTP/1.1 ") < count:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    return received.count(b"HTTP/1.1 404 ")


def _chat(url: str, key: str, times: int = 1) -> float:
    """Send `times` one-token chat requests over one keep-alive connection; the median seconds."""
    took = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(times):
            started = time.perf_counter()
            reply = client.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": CHAT, "max_tokens": 1},
                headers={"authorization": f"Bearer {key}"},
            )
            took.append(time.perf_counter() - started)
            assert reply.status_code == 200, reply.text
    return statistics.median(took)


def _enough_files_for_the_test_itself() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HALF_SENT + 200
    if soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, (
            f"the test process needs {wanted} open files; its hard limit is {hard}"
        )
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_after_abuse_without_a_key_the_gateway_still_serves(tmp_path: Path) -> None:
    _enough_files_for_the_test_itself()
    state = tmp_path / "state"
    key = create_key(state / "keys.json", "abuse").key
    # Head deadlines long enough that only shedding near the open-files limit makes room.
    client = {"header_timeout_s": 120.0}
    with (
        vllm() as chat,
        engine("tei", "--model-id", "bge", env={"DOUBLE_DIMENSIONS": "8"}) as tei,
        gateway(state, key, chat, tei, None, client=client, open_files=OPEN_FILES) as gw,
    ):
        port = int(gw.url.rsplit(":", 1)[1])
        process = psutil.Process(gw.process.pid)
        assert process.rlimit(psutil.RLIMIT_NOFILE) == (OPEN_FILES, OPEN_FILES)
        _chat(gw.url, key, 20)  # warm up: pools, lazily built answers, the allocator's arenas
        before_s = _chat(gw.url, key, 20)
        httpx.get(f"{gw.url}/metrics", timeout=10)
        rss_before = process.memory_info().rss

        with ThreadPoolExecutor(ENDLESS_HEADERS) as pool:
            accepted = list(pool.map(_endless_header, [port] * ENDLESS_HEADERS))
        assert all(sent < ENDLESS_HEADER_BYTES for sent in accepted), accepted

        held = [_half_sent(port) for _ in range(HALF_SENT)]
        try:
            per_pipeline = RANDOM_PATHS // PIPELINES
            with ThreadPoolExecutor(4) as pool:
                answered = sum(pool.map(_random_paths, [port] * PIPELINES, [per_pipeline] * 20))
            assert answered == RANDOM_PATHS
            # Still holding 1,100 half-sent requests: the real one gets in, and completes.
            after_s = _chat(gw.url, key, 20)
            assert process.num_fds() < OPEN_FILES
        finally:
            for sock in held:
                sock.close()
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        rss_after = process.memory_info().rss
    print(
        f"\nchat request (median of 20) before abuse {before_s * 1000:.1f} ms, after "
        f"{after_s * 1000:.1f} ms; "
        f"/metrics {len(metrics)} bytes; RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert len(metrics.encode()) < METRICS_LIMIT
    assert "sk-appl" not in metrics
    assert rss_after - rss_before < RSS_GROWTH_LIMIT
    log = gw.log.read_text()
    shed = [line for line in log.splitlines() if "open-files limit" in line]
    assert len([line for line in shed if line.startswith("WARNING")]) == 1, shed
    assert "Traceback" not in log
