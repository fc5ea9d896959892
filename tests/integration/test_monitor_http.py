"""The monitor over real HTTP on 127.0.0.1: the engine doubles, and a real vLLM scrape served as is.

Time is a fake clock (ticks one fake second apart), so rates are exact and computed by hand; the
HTTP, the parsing and the per-sampler deadlines are real. Nothing asserts on wall-clock time.

`tests/fixtures/vllm-0.32-cpu-metrics.txt` is a real scrape of vLLM 0.32.0 (see
`tests/unit/test_monitor_scrape.py` for its provenance); here it is served over HTTP, then
advanced by known amounts, then "restarted".
"""

from __future__ import annotations

import asyncio
import http.server
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import tests.doubles
from appliance.clock import ManualClock
from appliance.monitor.alerts import AlertThresholds
from appliance.monitor.monitor import Monitor, MonitorConfig
from appliance.monitor.samplers import Endpoint, SamplerSet, http_samplers
from appliance.monitor.scrape import parse_metrics
from appliance.monitor.series import History
from appliance.monitor.snapshot import ServiceStats, Snapshot
from appliance.operations.status import url_samplers, watch_status
from tests.doubles import free_port, local_engine_double

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32-cpu-metrics.txt"
VLLM_ARGS = ("--model", "/models/tiny", "--served-model-name", "tiny")
TEI_ARGS = ("--model-id", "BAAI/bge-small-en-v1.5")


class Stepper:
    """Drives a monitor one tick at a time from synchronous test code, on one event loop."""

    def __init__(self, samplers: SamplerSet, config: MonitorConfig | None = None) -> None:
        self.clock = ManualClock(0.0, 1_800_000_000.0)
        self.loop = asyncio.new_event_loop()
        self.monitor = Monitor(samplers, config=config, clock=self.clock)

    def tick(self, advance_s: float = 1.0) -> Snapshot:
        snapshot = self.loop.run_until_complete(self.monitor.tick())
        self.clock.advance(advance_s)
        return snapshot

    def close(self) -> None:
        self.loop.run_until_complete(self.monitor.aclose())
        self.loop.close()


def service(snapshot: Snapshot, name: str) -> ServiceStats:
    found = snapshot.service(name)
    assert found is not None, f"no service {name} in {snapshot.services}"
    return found


# ---------------------------------------------------------------------------------- servers


class PageServer(http.server.ThreadingHTTPServer):
    """Serves `page` as /metrics and 200 on /health; the paths in `slow` after `delay_s`."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, page: str = "", delay_s: float = 0.0, slow: tuple[str, ...] = ("/health", "/metrics")
    ) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.page = page
        self.delay_s = delay_s
        self.slow = slow

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _PageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PageServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path in self.server.slow:
            time.sleep(self.server.delay_s)
        body = self.server.page.encode() if self.path == "/metrics" else b""
        try:
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the monitor gave up on us, as it should


@pytest.fixture
def page_server() -> Iterator[Callable[..., PageServer]]:
    servers: list[PageServer] = []

    def start(page: str = "", delay_s: float = 0.0, **kwargs: tuple[str, ...]) -> PageServer:
        server = PageServer(page, delay_s, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def advance(text: str, counters: dict[str, float], ttft: list[float]) -> str:
    """The page with counter samples (by line prefix) increased and TTFT observations added."""
    lines = []
    for line in text.splitlines():
        added = 0.0
        for prefix, delta in counters.items():
            if line.startswith(prefix):
                added += delta
        if line.startswith("vllm:time_to_first_token_seconds_bucket{"):
            match = re.search(r'le="([^"]+)"', line)
            assert match is not None
            added += sum(1 for v in ttft if v <= float(match.group(1)))
        elif line.startswith("vllm:time_to_first_token_seconds_count{"):
            added += len(ttft)
        if added and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            lines.append(f"{name} {float(value) + added}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- traffic


def complete(base_url: str, requests: int, *, max_tokens: int = 4, prompt: str = "a b c") -> None:
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as client:
        for _ in range(requests):
            body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens}
            client.post("/v1/completions", json=body).raise_for_status()


def embed(base_url: str, requests: int) -> None:
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as client:
        for index in range(requests):
            client.post("/embed", json={"inputs": f"text {index}"}).raise_for_status()


def settled(base_url: str, key: str, at_least: float) -> None:
    """Wait until the double has counted its last request (it counts after answering)."""
    deadline = time.monotonic() + 30  # a bound against hanging, not a timing assertion
    while time.monotonic() < deadline:
        text = httpx.get(f"{base_url}/metrics", timeout=5, trust_env=False).text
        if parse_metrics(text).counters.get(key, 0.0) >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError(f"{base_url} never counted {at_least} {key}")


# ---------------------------------------------------------------------------------- tests


def test_real_vllm_scrape_over_http_advanced_then_restarted(page_server) -> None:
    real = FIXTURE.read_text()
    server = page_server(real)
    stepper = Stepper(http_samplers([Endpoint("vllm", "vllm", server.url)]))
    try:
        first = service(stepper.tick(), "vllm")
        assert first.healthy
        assert first.model_names == ("tiny",)
        assert first.kv_cache_usage_pct == 0.0
        # One second later: +100 prompt, +500 generated tokens, 4 more finished requests,
        # first tokens after 0.03, 0.03, 0.07 and 0.3 s.
        server.page = advance(
            real,
            {
                "vllm:prompt_tokens_total{": 100,
                "vllm:generation_tokens_total{": 500,
                'vllm:request_success_total{engine="0",finished_reason="length"': 4,
            },
            [0.03, 0.03, 0.07, 0.3],
        )
        second = service(stepper.tick(), "vllm")
        assert second.prompt_tokens_per_s == 100.0
        assert second.generation_tokens_per_s == 500.0
        assert second.requests_per_s == 4.0
        assert second.error_rate_pct == 0.0
        # In the window: 2 in (0.02, 0.04], 1 in (0.06, 0.08], 1 in (0.25, 0.5].
        # p50: rank 2 → top of (0.02, 0.04] = 0.04. p95: rank 3.8 → 0.8 of (0.25, 0.5] = 0.45.
        assert second.ttft_p50_s == pytest.approx(0.04)
        assert second.ttft_p95_s == pytest.approx(0.45)
        # The engine restarts: the page is back to its first values.
        server.page = real
        third = service(stepper.tick(), "vllm")
        # Generation over t=0..2: +500, then the new life's 13 counted from zero.
        assert third.generation_tokens_per_s == (500 + 13) / 2
        assert third.prompt_tokens_per_s == (100 + 19) / 2
        # TTFT: the 4 above plus the new life's 2 (one in (0.005, 0.01], one in (0.01, 0.02]):
        # p50: rank 3 → 1 into the 2 of (0.02, 0.04] → 0.03.
        assert third.ttft_p50_s == pytest.approx(0.03)
    finally:
        stepper.close()


def test_two_live_doubles_tokens_queue_kv_and_alerts_with_hysteresis() -> None:
    vllm_env = {"DOUBLE_WAITING": "7", "DOUBLE_KV_USAGE": "0.93", "DOUBLE_TOKEN_DELAY_S": "0.003"}
    thresholds = AlertThresholds(kv_cache_usage_pct=90, waiting_requests=5, sustain_seconds=2)
    with (
        local_engine_double("vllm", *VLLM_ARGS, env=vllm_env) as vllm_url,
        local_engine_double("tei", *TEI_ARGS) as tei_url,
    ):
        samplers = http_samplers(
            [Endpoint("vllm", "vllm", vllm_url), Endpoint("tei", "tei", tei_url)]
        )
        stepper = Stepper(samplers, MonitorConfig(thresholds=thresholds))
        try:
            first = stepper.tick()
            complete(vllm_url, 5, max_tokens=4, prompt="a b c")
            embed(tei_url, 3)
            settled(vllm_url, "generation_tokens", 20)
            second = stepper.tick()
            third = stepper.tick()
        finally:
            stepper.close()
    vllm, tei = service(second, "vllm"), service(second, "tei")
    assert vllm.healthy
    assert tei.healthy
    assert vllm.model_names == ("tiny",)
    # 5 completions of 4 tokens, prompts of 3 words, in one (fake) second.
    assert vllm.generation_tokens_per_s == 20.0
    assert vllm.prompt_tokens_per_s == 15.0
    assert vllm.requests_per_s == 5.0
    assert vllm.waiting_requests == 7
    assert vllm.running_requests == 0
    assert vllm.kv_cache_usage_pct == pytest.approx(93.0)
    # The double's first token comes DOUBLE_TOKEN_DELAY_S = 0.003 s in: all 5 in (0.001, 0.005].
    assert vllm.ttft_p50_s == pytest.approx(0.001 + 0.004 * 0.5)
    assert vllm.ttft_p95_s == pytest.approx(0.001 + 0.004 * 0.95)
    assert vllm.e2e_p95_s is not None
    assert vllm.itl_p95_s is not None
    assert tei.requests_per_s == 3.0
    assert tei.waiting_requests == 0
    assert tei.e2e_p95_s is not None
    assert tei.error_rate_pct == 0.0
    # KV at 93 % and 7 waiting from t=0: raised once held 2 s, at the third tick (t=2).
    assert first.alerts == ()
    assert second.alerts == ()
    assert {(a.code, a.subject) for a in third.alerts} == {
        ("kv-cache-full", "vllm"),
        ("requests-waiting", "vllm"),
    }


def test_an_engine_that_disappears_is_unhealthy_and_alerts() -> None:
    config = MonitorConfig(thresholds=AlertThresholds(unhealthy_seconds=1))
    with local_engine_double("tei", *TEI_ARGS) as tei_url:
        with local_engine_double("vllm", *VLLM_ARGS) as vllm_url:
            samplers = http_samplers(
                [Endpoint("vllm", "vllm", vllm_url), Endpoint("tei", "tei", tei_url)]
            )
            stepper = Stepper(samplers, config)
            up = stepper.tick()
        try:  # the vLLM double has been stopped
            down = stepper.tick()
            still_down = stepper.tick()
        finally:
            stepper.close()
    assert service(up, "vllm").healthy
    vllm = service(down, "vllm")
    assert not vllm.healthy
    assert vllm.health_error == f"nothing is listening at {vllm_url}/health (connection refused)"
    assert vllm.generation_tokens_per_s is None
    assert service(down, "tei").healthy
    assert service(down, "tei").waiting_requests == 0
    assert down.alerts == ()  # down for 0 s so far
    (alert,) = still_down.alerts
    assert (alert.code, alert.subject, alert.severity) == ("service-unhealthy", "vllm", "critical")
    assert "fallback to auto" in alert.suggestion


def test_a_slow_endpoint_does_not_stall_the_other_samplers(page_server) -> None:
    slow = page_server(FIXTURE.read_text(), delay_s=5.0)
    with local_engine_double("tei", *TEI_ARGS) as tei_url:
        samplers = http_samplers(
            [Endpoint("vllm", "vllm", slow.url), Endpoint("tei", "tei", tei_url)]
        )
        stepper = Stepper(samplers, MonitorConfig(timeout_s=0.3))
        try:
            stepper.tick()
            embed(tei_url, 4)
            snapshot = stepper.tick()
        finally:
            stepper.close()
    vllm, tei = service(snapshot, "vllm"), service(snapshot, "tei")
    assert not vllm.healthy
    assert vllm.health_error is not None
    assert "no answer" in vllm.health_error
    assert tei.healthy
    assert tei.requests_per_s == 4.0


def test_counters_reset_when_the_engine_restarts_on_the_same_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setattr(tests.doubles, "free_port", lambda: port)
    url = f"http://127.0.0.1:{port}"
    stepper = Stepper(http_samplers([Endpoint("vllm", "vllm", url)]))
    try:
        with local_engine_double("vllm", *VLLM_ARGS):
            stepper.tick()
            complete(url, 5, max_tokens=4)
            settled(url, "generation_tokens", 20)
            before = service(stepper.tick(), "vllm")
        with local_engine_double("vllm", *VLLM_ARGS):  # a new process: counters from zero
            complete(url, 2, max_tokens=4)
            settled(url, "generation_tokens", 8)
            after = service(stepper.tick(), "vllm")
    finally:
        stepper.close()
    assert before.generation_tokens_per_s == 20.0
    # Over t=0..2: +20, then the new process's 8 counted from zero; never negative.
    assert after.generation_tokens_per_s == (20 + 8) / 2
    assert after.requests_per_s == (5 + 2) / 2


def test_scrape_of_an_engine_the_appliance_did_not_start() -> None:
    """What `appliance scrape URL --count 2` computes: kind told from the page, rates, TTFT."""
    env = {"DOUBLE_TOKEN_DELAY_S": "0.03"}
    with local_engine_double("vllm", *VLLM_ARGS, env=env) as url:

        def between_ticks(snapshot: Snapshot, history: History) -> None:
            if snapshot.tick == 1:
                complete(url, 4, max_tokens=5)
                settled(url, "generation_tokens", 20)

        last = watch_status(
            url_samplers([f"{url}/metrics"]),
            between_ticks,
            count=2,
            clock=ManualClock(0.0, 1_800_000_000.0),
        )
    assert last is not None
    (engine,) = last.services
    assert engine.kind == "vllm"
    assert engine.name == url.removeprefix("http://")
    assert engine.generation_tokens_per_s == 20.0  # 4 x 5 tokens in one (fake) second
    # First tokens 0.03 s in: all 4 in (0.02, 0.04] → p95 = 0.02 + 0.02 x 0.95.
    assert engine.ttft_p95_s == pytest.approx(0.039)


def test_a_slow_metrics_page_does_not_make_a_healthy_engine_look_down(page_server) -> None:
    server = page_server(FIXTURE.read_text(), delay_s=5.0, slow=("/metrics",))
    stepper = Stepper(
        http_samplers([Endpoint("vllm", "vllm", server.url)], timeout_s=0.3),
        MonitorConfig(timeout_s=0.3),
    )
    try:
        vllm = service(stepper.tick(), "vllm")
    finally:
        stepper.close()
    assert vllm.healthy
    assert vllm.metrics_error == f"no answer from {server.url}/metrics in time"
    assert vllm.waiting_requests is None
