"""TEST DOUBLE of the GPU engines: a stand-in for vLLM's and SGLang's OpenAI servers and for
TEI's router.

No GPU, no weights: it answers the same HTTP endpoints with the same shapes, and exposes metrics
under vLLM's and TEI's real names and types, so everything the appliance does against an engine
(health waits, scraping, routing, streaming) runs for real. It runs inside the tests' Python base
image (standard library plus a copied `prometheus_client`) and directly on the host alike.

It takes the real engines' command lines (`--model … --served-model-name … --port …` for vLLM,
`--model-path … --served-model-name … --port …` for SGLang, `--model-id … --port …` for TEI) and
ignores flags it does not model. In its image, `python3 -m sglang.launch_server ARGS` runs it as
the SGLang double (a two-line `sglang/launch_server.py` shim), as the appliance's argv for
SGLang's image says. Faults are chosen with
environment variables (baked into fault images, or set by a test):

  DOUBLE_STARTUP_DELAY_S   seconds before the port opens (model loading)
  DOUBLE_FAIL              "exit-on-start" (exit like vLLM refusing a config),
                           "never-healthy" (/health answers 503 forever),
                           "die-after-healthy" (healthy, then the process dies on the first
                           generation request, like vLLM's engine core crashing)
  DOUBLE_EXIT_CODE         exit status for the failures above (default 1)
  DOUBLE_TOKEN_DELAY_S     seconds between generated tokens (default 0.001)
  DOUBLE_WAITING           requests reported waiting in the queue (vllm:num_requests_waiting)
  DOUBLE_KV_USAGE          KV-cache usage reported (0..1)
  DOUBLE_DIMENSIONS        embedding size for the TEI double (default 1024)
  DOUBLE_WAKE_DELAY_S      seconds a /wake_up takes (the engine re-mapping its memory)
  DOUBLE_BATCH_STEP_S      a made-up batching model for `appliance tune`'s tests (default 0,
                           off): at most --max-num-seqs requests generate at once (the rest
                           wait, as in vLLM's waiting queue), and each streamed token takes
                           DOUBLE_TOKEN_DELAY_S + DOUBLE_BATCH_STEP_S x the requests generating.
                           More sequences then give more tokens/s in total and a longer ITL
                           each, so a sweep has a winner under an ITL limit. Not vLLM's numbers.
  DOUBLE_REFUSE_SEQS_ABOVE exit on start, as "exit-on-start", when --max-num-seqs is above it

Sleep mode (vLLM role), as vLLM documents and implements it. Sources, read at vLLM main in
Dec 2026: docs/features/sleep_mode.md (levels, the level-2 wake sequence, `is_sleeping` true
until every tag is awake and while scheduling is paused, "only available when passing
VLLM_SERVER_DEV_MODE=1"), vllm/frontend/entrypoints/serve/dev/sleep/api_router.py (POST /sleep
reads `level`, default "1", and `mode`, default "abort"; POST /wake_up reads repeated `tags`, none
meaning all; GET /is_sleeping answers {"is_sleeping": bool}; both POSTs answer 200),
vllm/frontend/entrypoints/serve/dev/rpc/api_router.py (POST /collective_rpc takes
{"method", "args", "kwargs", "timeout"}, 400 without `method`, {"results": [...]} otherwise),
vllm/engine/protocol.py `pause_generation` (mode "abort" aborts in-flight requests, which end
with finish_reason "abort"; "wait" lets them finish) and vllm/v1/engine/async_llm.py
`add_request` ("Respect pause state before accepting new requests": a request that arrives while
the engine sleeps WAITS until it is woken; it is not rejected, and vLLM before the pause
machinery crashed instead, vllm#15483). Without VLLM_SERVER_DEV_MODE=1 the routes are not
attached, so they answer 404. What vLLM does on /sleep without `--enable-sleep-mode` depends on
the release; the double refuses with 400 so a container that forgets the flag fails loudly.
After a level-2 sleep the weights are gone: waking `weights` without `collective_rpc
reload_weights` leaves garbage weights, and the double then answers with garbage tokens, so a
test sees a wrong wake sequence.
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import hashlib
import http.server
import json
import math
import os
import sys
import threading
import time
import urllib.parse
import uuid
from typing import Any

try:  # vLLM itself exposes metrics through prometheus_client; so does its double when it can.
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - the image always has it copied in
    prometheus_client = None  # type: ignore[assignment]

ENV = os.environ
TOKEN_DELAY_S = float(ENV.get("DOUBLE_TOKEN_DELAY_S", "0.001"))
FAIL = ENV.get("DOUBLE_FAIL", "")
BATCH_STEP_S = float(ENV.get("DOUBLE_BATCH_STEP_S", "0"))
EXIT_CODE = int(ENV.get("DOUBLE_EXIT_CODE", "1"))


def log(message: str) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"INFO {stamp} [engine_double] {message}", flush=True)


# ---------------------------------------------------------------------------------- vLLM metrics

# Bucket edges copied from a real vLLM 0.32 scrape (shared/reference/vllm-0.32-cpu-metrics.txt).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class VllmMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["engine", "model_name"]
        self.values = {"engine": "0", "model_name": model_name}
        r = self.registry
        self.running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            registry=r,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels,
            registry=r,
        )  # fmt: skip
        self.kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels,
            registry=r,
        )  # fmt: skip
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels,
            registry=r,
        )
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels,
            registry=r,
        )
        self.preemptions = Counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels,
            registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        for finished_reason in ("stop", "length", "abort", "error", "repetition"):
            self.success.labels(**self.values, finished_reason=finished_reason)
        self.waiting.labels(**self.values).set(float(ENV.get("DOUBLE_WAITING", "0")))
        self.kv_usage.labels(**self.values).set(float(ENV.get("DOUBLE_KV_USAGE", "0")))

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


# -------------------------------------------------------------------------------- SGLang metrics


class _Unexposed:
    """A metric vLLM has and SGLang does not: the handler may update it; nothing is exposed."""

    def labels(self, **_: str) -> _Unexposed:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


# SGLang 0.5.21's bucket edges (srt/observability/metrics_collector.py, TokenizerMetricsCollector
# defaults).
SGLANG_TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
SGLANG_ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
                      0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000,
                      8.000)  # fmt: skip
SGLANG_E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400,
                      600, 1200, 1800, 2400)  # fmt: skip


class SglangMetrics:
    """SGLang's `--enable-metrics` names, types and labels at 0.5.21
    (python/sglang/srt/observability/metrics_collector.py): the scheduler's gauges
    `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage` (0..1) and
    `sglang:cache_hit_rate` (0..1), labelled model_name, engine_type, tp_rank, pp_rank,
    moe_ep_rank; the tokenizer manager's counters `sglang:prompt_tokens_total`,
    `sglang:generation_tokens_total`, `sglang:cached_tokens_total{cache_source}`,
    `sglang:num_requests_total` and histograms `sglang:time_to_first_token_seconds`,
    `sglang:inter_token_latency_seconds`, `sglang:e2e_request_latency_seconds`, labelled
    model_name, engine_type (+ is_streaming)."""

    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        self.values = {"model_name": model_name, "engine_type": "unified"}
        sched = {**self.values, "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0"}
        self.sched = sched
        scheduler, tokenizer = list(sched), list(self.values)
        streaming = [*tokenizer, "is_streaming"]
        self._running = Gauge("sglang:num_running_reqs", "The number of running requests.",
                              scheduler, registry=r)  # fmt: skip
        self.waiting = Gauge("sglang:num_queue_reqs",
                             "The number of requests in the waiting queue.", scheduler,
                             registry=r)  # fmt: skip
        self.kv_usage = Gauge("sglang:token_usage", "The token usage.", scheduler, registry=r)
        self.hit_rate = Gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", scheduler,
                              registry=r)  # fmt: skip
        self._prompt = Counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
                               streaming, registry=r)  # fmt: skip
        self._generation = Counter("sglang:generation_tokens_total",
                                   "Number of generation tokens processed.", streaming,
                                   registry=r)  # fmt: skip
        self.cached = Counter("sglang:cached_tokens_total",
                              "Number of cached prompt tokens by source (device/host/storage).",
                              [*tokenizer, "cache_source"], registry=r)  # fmt: skip
        self._requests = Counter("sglang:num_requests_total", "Number of requests processed.",
                                 streaming, registry=r)  # fmt: skip
        self._ttft = Histogram("sglang:time_to_first_token_seconds",
                               "Histogram of time to first token in seconds.", streaming,
                               buckets=SGLANG_TTFT_BUCKETS, registry=r)  # fmt: skip
        self._itl = Histogram("sglang:inter_token_latency_seconds",
                              "Histogram of inter-token latency in seconds.", tokenizer,
                              buckets=SGLANG_ITL_BUCKETS, registry=r)  # fmt: skip
        self._e2e = Histogram("sglang:e2e_request_latency_seconds",
                              "Histogram of End-to-end request latency in seconds", streaming,
                              buckets=SGLANG_E2E_BUCKETS, registry=r)  # fmt: skip
        for gauge in (self._running, self.waiting, self.kv_usage, self.hit_rate):
            gauge.labels(**sched)
        self.waiting.labels(**sched).set(float(ENV.get("DOUBLE_WAITING", "0")))
        self.kv_usage.labels(**sched).set(float(ENV.get("DOUBLE_KV_USAGE", "0")))
        self.cached.labels(**self.values, cache_source="device")
        # What the handler updates under vLLM's attribute names, mapped onto SGLang's series.
        self.running = _Fixed(self._running, sched)
        self.prompt_tokens = _Fixed(self._prompt, {**self.values, "is_streaming": "false"})
        self.generation_tokens = _Fixed(self._generation, {**self.values, "is_streaming": "false"})
        self.success = _Fixed(self._requests, {**self.values, "is_streaming": "false"})
        self.ttft = _Fixed(self._ttft, {**self.values, "is_streaming": "false"})
        self.itl = _Fixed(self._itl, self.values)
        self.e2e = _Fixed(self._e2e, {**self.values, "is_streaming": "false"})
        self.prefix_queries = self.tpot = self.queue_time = self.preemptions = _Unexposed()
        self.prefix_hits = _Unexposed()

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class _Fixed:
    """One SGLang series, whatever labels the (vLLM-shaped) handler passes."""

    def __init__(self, metric: Any, labels: dict[str, str]) -> None:
        self.series = metric.labels(**labels)

    def labels(self, **_: str) -> Any:
        return self.series


# ---------------------------------------------------------------------------------- TEI metrics


def _rust_float(value: float) -> str:
    """A float as Rust's `Display` prints it (TEI's `le` labels): the shortest digits that
    round-trip, never in exponent form, e.g. 0.000015000000000000002."""
    return format(decimal.Decimal(repr(value)), "f")


class TeiMetrics:
    """TEI's router exports through the Rust `metrics` crate: counters have no `_total` suffix."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.request_count = 0
        self.request_success = 0
        self.queue_size = 0
        self.durations: dict[str, list[float]] = {
            "te_request_duration": [],
            "te_request_queue_duration": [],
            "te_request_inference_duration": [],
            "te_request_tokenization_duration": [],
        }
        # TEI's duration buckets: a geometric sequence from 1e-5 times 1.5, 35 buckets.
        value, self.buckets = 0.00001, []
        for _ in range(35):
            value *= 1.5
            self.buckets.append(value)

    def observe(self, seconds: float) -> None:
        with self.lock:
            self.request_count += 1
            self.request_success += 1
            for name, samples in self.durations.items():
                samples.append(seconds if name != "te_request_queue_duration" else seconds / 10)

    def render(self) -> bytes:
        lines = [
            "# TYPE te_request_count counter",
            f'te_request_count{{method="single"}} {self.request_count}',
            "# TYPE te_request_success counter",
            f'te_request_success{{method="single"}} {self.request_success}',
            "# TYPE te_queue_size gauge",
            f"te_queue_size {self.queue_size}",
        ]
        with self.lock:
            for name, samples in self.durations.items():
                lines.append(f"# TYPE {name} histogram")
                for edge in self.buckets:
                    count = sum(1 for s in samples if s <= edge)
                    lines.append(f'{name}_bucket{{le="{_rust_float(edge)}"}} {count}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {len(samples)}')
                lines.append(f"{name}_sum {sum(samples)}")
                lines.append(f"{name}_count {len(samples)}")
        return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------- HTTP


class EngineServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # As vLLM's uvicorn: a deep accept queue for bursts of clients, and no Nagle delay.
    request_queue_size = 2048

    def __init__(self, address: tuple[str, int], role: str, args: argparse.Namespace) -> None:
        super().__init__(address, Handler)
        self.role = role
        self.args = args
        self.started = time.time()
        self.healthy = FAIL != "never-healthy"
        self.lock = threading.Lock()
        # Sleep mode (see the module docstring): tags asleep, whether scheduling is paused, whether
        # the weights in GPU memory are the model's, and an epoch that aborts in-flight requests.
        self.sleep_enabled = bool(getattr(args, "enable_sleep_mode", False))
        self.dev_mode = os.environ.get("VLLM_SERVER_DEV_MODE", "0") == "1"
        self.sleep_changed = threading.Condition(self.lock)
        self.sleeping_tags: set[str] = set()
        self.paused = False
        self.weights_valid = True
        self.abort_epoch = 0
        self.in_flight = 0
        # What tests read: sleeps and wakes done, weights reloaded, requests that arrived asleep.
        self.sleeps = 0
        self.wakes = 0
        self.reloads = 0
        self.arrived_asleep = 0
        # A test may close these gates to hold every /wake_up or /sleep until it opens them.
        self.wake_gate = threading.Event()
        self.wake_gate.set()
        self.sleep_gate = threading.Event()
        self.sleep_gate.set()
        # The batching model (DOUBLE_BATCH_STEP_S): slots for --max-num-seqs, requests generating.
        self.batch_slots = threading.Semaphore(max(1, args.max_num_seqs))
        self.batch_running = 0
        if role == "vllm":
            self.model_name = args.served_model_name or args.model
            self.vllm: VllmMetrics | SglangMetrics = VllmMetrics(self.model_name)
        elif role == "sglang":
            self.model_name = args.served_model_name or args.model_path
            self.vllm = SglangMetrics(self.model_name)
        else:
            self.model_name = args.model_id
            self.tei = TeiMetrics()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: EngineServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(
            status, {"error": {"message": message, "type": kind, "param": None, "code": status}}
        )

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {"inputs": body}

    # -- routes

    def _dev_route(self) -> bool:
        """True when the path is one of vLLM's dev-mode sleep routes (attached only then)."""
        route = self.path.split("?", 1)[0]
        return (
            self.server.role == "vllm"
            and self.server.dev_mode
            and route in ("/sleep", "/wake_up", "/is_sleeping", "/collective_rpc")
        )

    def do_GET(self) -> None:
        server = self.server
        if self._dev_route() and self.path.split("?", 1)[0] == "/is_sleeping":
            with server.lock:
                asleep = server.paused or bool(server.sleeping_tags)
            self._send_json(200, {"is_sleeping": asleep})
        elif self.path == "/health":
            if server.healthy:
                self._send_text(200, b"", "text/plain")
            else:
                self._send_text(503, b"", "text/plain")
        elif self.path == "/metrics":
            data = server.tei.render() if server.role == "tei" else server.vllm.render()
            self._send_text(200, data, "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/v1/models" and server.role != "tei":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": server.model_name,
                            "object": "model",
                            "created": int(server.started),
                            "owned_by": "vllm" if server.role == "vllm" else "sglang",
                            "root": server.args.model,
                            "parent": None,
                            "max_model_len": server.args.max_model_len,
                        }
                    ],
                },
            )
        elif self.path == "/version" and server.role == "vllm":
            self._send_json(200, {"version": "0.32.0"})
        elif self.path == "/info" and server.role == "tei":
            self._send_json(
                200,
                {
                    "model_id": server.model_name,
                    "model_sha": None,
                    "model_dtype": "float16",
                    "model_type": {"embedding": {"pooling": "cls"}},
                    "max_concurrent_requests": 512,
                    "max_input_length": 8192,
                    "max_batch_tokens": server.args.max_batch_tokens,
                    "max_client_batch_size": 32,
                    "version": "1.8.0",
                },
            )
        else:
            self._error(404, f"Not Found: {self.path}")

    def do_POST(self) -> None:
        server = self.server
        body = self._body()
        route = self.path.split("?", 1)[0]  # a query string does not change the route
        if self._dev_route():
            self._sleep_route(body)
        elif server.role != "tei" and route in ("/v1/completions", "/v1/chat/completions"):
            self._generate(body, chat=route.endswith("chat/completions"))
        elif server.role == "tei" and self.path in ("/embed", "/v1/embeddings"):
            self._embed(body, openai=self.path == "/v1/embeddings")
        else:
            self._error(404, f"Not Found: {self.path}")

    # -- vLLM sleep mode (dev routes)

    def _sleep_route(self, body: dict[str, Any]) -> None:
        server = self.server
        route, _, query = self.path.partition("?")
        params = urllib.parse.parse_qs(query)
        if route == "/is_sleeping":
            self._error(405, "Method Not Allowed")
            return
        if not server.sleep_enabled:
            self._error(400, "Sleep mode is not enabled (start the engine with "
                        "--enable-sleep-mode)")  # fmt: skip
            return
        if route == "/sleep":
            self._sleep(params)
        elif route == "/wake_up":
            self._wake_up(params.get("tags") or None)
        else:
            self._collective_rpc(body)

    def _sleep(self, params: dict[str, list[str]]) -> None:
        server = self.server
        try:
            level = int(params.get("level", ["1"])[0])
        except ValueError:
            self._error(422, "level must be an integer")
            return
        mode = params.get("mode", ["abort"])[0]
        if level not in (0, 1, 2) or mode not in ("abort", "wait"):
            self._error(422, "level is 0, 1 or 2; the double models mode abort and wait")
            return
        server.sleep_gate.wait()
        with server.sleep_changed:
            server.paused = True
            if mode == "abort":
                server.abort_epoch += 1
            server.sleep_changed.notify_all()
            while server.in_flight:
                server.sleep_changed.wait(0.05)
            if level >= 1:
                server.sleeping_tags = {"weights", "kv_cache"}
            if level == 2:
                server.weights_valid = False  # discarded, not backed up in host RAM
            server.sleeps += 1
        log(f"engine asleep (level {level}, mode {mode})")
        self._send_text(200, b"", "application/json")

    def _wake_up(self, tags: list[str] | None) -> None:
        server = self.server
        delay = float(os.environ.get("DOUBLE_WAKE_DELAY_S", "0"))
        if delay:
            time.sleep(delay)
        server.wake_gate.wait()
        with server.sleep_changed:
            woken = set(tags) if tags is not None else set(server.sleeping_tags)
            server.sleeping_tags -= woken
            if not server.sleeping_tags:
                server.paused = False
                server.wakes += 1
            server.sleep_changed.notify_all()
        log(f"wake up the engine with tags: {tags}")
        self._send_text(200, b"", "application/json")

    def _collective_rpc(self, body: dict[str, Any]) -> None:
        server = self.server
        method = body.get("method")
        if method is None:
            self._send_json(400, {"detail": "Missing 'method' in request body"})
            return
        if method != "reload_weights":
            self._error(500, f"the double does not model collective_rpc {method!r}")
            return
        with server.lock:
            if "weights" in server.sleeping_tags:
                self._error(500, "reload_weights into weights memory that is not mapped")
                return
            server.weights_valid = True
            server.reloads += 1
        self._send_json(200, {"results": [None]})

    # -- vLLM

    def _generate(self, body: dict[str, Any], *, chat: bool) -> None:
        server = self.server
        if FAIL == "die-after-healthy":
            log("ERROR EngineCore encountered a fatal error: Unsupported CPU attention config")
            self._error(500, "EngineCore died", "InternalServerError")
            self.wfile.flush()
            os._exit(EXIT_CODE)
        model = body.get("model")
        if model != server.model_name:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        if chat:
            messages = body.get("messages") or []
            prompt_text = " ".join(str(m.get("content", "")) for m in messages)
        else:
            prompt_text = str(body.get("prompt", ""))
        prompt_tokens = max(1, len(prompt_text.split()))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        stream = bool(body.get("stream"))
        if not server.sleep_enabled and BATCH_STEP_S > 0:
            with server.batch_slots:  # waiting for one of --max-num-seqs slots
                with server.lock:
                    server.batch_running += 1
                try:
                    self._generate_awake(
                        body, chat=chat, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                        stream=stream, epoch=0, garbage=False,
                    )  # fmt: skip
                finally:
                    with server.lock:
                        server.batch_running -= 1
            return
        if not server.sleep_enabled:
            self._generate_awake(
                body, chat=chat, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                stream=stream, epoch=0, garbage=False,
            )  # fmt: skip
            return
        with server.sleep_changed:
            if server.paused or server.sleeping_tags:
                server.arrived_asleep += 1
            while server.paused or server.sleeping_tags:
                server.sleep_changed.wait()
            server.in_flight += 1
            epoch = server.abort_epoch
            garbage = not server.weights_valid
        try:
            self._generate_awake(
                body, chat=chat, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                stream=stream, epoch=epoch, garbage=garbage,
            )  # fmt: skip
        finally:
            with server.sleep_changed:
                server.in_flight -= 1
                server.sleep_changed.notify_all()

    def _aborted(self, epoch: int) -> bool:
        return self.server.abort_epoch != epoch

    def _generate_awake(
        self,
        body: dict[str, Any],
        *,
        chat: bool,
        prompt_tokens: int,
        max_tokens: int,
        stream: bool,
        epoch: int,
        garbage: bool,
    ) -> None:
        server = self.server
        values = server.vllm.values
        metrics = server.vllm
        metrics.running.labels(**values).inc()
        started = time.monotonic()
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        pieces = [" \ufffd" if garbage else f" tok{i}" for i in range(max_tokens)]
        finish = "length"
        try:
            if stream:
                options = body.get("stream_options") or {}
                usage = (
                    {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                     "total_tokens": prompt_tokens + max_tokens}
                    if isinstance(options, dict) and options.get("include_usage")
                    else None
                )  # fmt: skip
                first, finish = self._stream(
                    request_id, created, obj, pieces, chat=chat, epoch=epoch, usage=usage
                )
            else:
                made = 0
                if not server.sleep_enabled:  # nothing can abort it: one sleep, as before
                    time.sleep(TOKEN_DELAY_S * max_tokens)
                    made = max_tokens
                for _ in pieces[made:]:
                    time.sleep(TOKEN_DELAY_S)
                    if self._aborted(epoch):
                        finish = "abort"
                        break
                    made += 1
                first = started + TOKEN_DELAY_S
                text = "".join(pieces[:made])
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                )  # fmt: skip
                self._send_json(
                    200,
                    {
                        "id": request_id,
                        "object": obj,
                        "created": created,
                        "model": server.model_name,
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": max_tokens,
                            "total_tokens": prompt_tokens + max_tokens,
                        },
                    },
                )
        except (BrokenPipeError, ConnectionResetError):
            metrics.success.labels(**values, finished_reason="abort").inc()
            return
        finally:
            metrics.running.labels(**values).dec()
        ended = time.monotonic()
        metrics.prompt_tokens.labels(**values).inc(prompt_tokens)
        metrics.generation_tokens.labels(**values).inc(max_tokens)
        metrics.prefix_queries.labels(**values).inc(prompt_tokens)
        metrics.success.labels(**values, finished_reason=finish).inc()
        metrics.ttft.labels(**values).observe((first or ended) - started)
        metrics.e2e.labels(**values).observe(ended - started)
        metrics.queue_time.labels(**values).observe(0.0001)
        per_token = (ended - started) / max(1, max_tokens)
        metrics.tpot.labels(**values).observe(per_token)
        for _ in range(max(0, max_tokens - 1)):
            metrics.itl.labels(**values).observe(per_token)

    def _stream(
        self,
        request_id: str,
        created: int,
        obj: str,
        pieces: list[str],
        *,
        chat: bool,
        epoch: int,
        usage: dict[str, int] | None = None,
    ) -> tuple[float | None, str]:
        """Send one SSE event per token as it is made; return when the first one went out and
        the finish reason ("abort" when the engine was put to sleep meanwhile).

        With `usage` (the request's `stream_options.include_usage`), a last event with empty
        `choices` carries it, as vLLM sends it."""
        server = self.server
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        first = None
        finish = "length"
        for index, piece in enumerate(pieces):
            time.sleep(TOKEN_DELAY_S + BATCH_STEP_S * server.batch_running)
            if self._aborted(epoch):
                finish = "abort"
                break
            if first is None:
                first = time.monotonic()
            if chat:
                delta: dict[str, Any] = {"content": piece}
                if index == 0:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None}
            chunk = {
                "id": request_id,
                "object": f"{obj}.chunk" if chat else obj,
                "created": created,
                "model": server.model_name,
                "choices": [choice],
            }
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {
            "id": request_id,
            "object": f"{obj}.chunk" if chat else obj,
            "created": created,
            "model": server.model_name,
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": finish}
                if chat
                else {"index": 0, "text": "", "finish_reason": finish}
            ],
        }
        self._chunk(f"data: {json.dumps(last)}\n\n".encode())
        if usage is not None:
            tail = {key: last[key] for key in ("id", "object", "created", "model")}
            tail.update(choices=[], usage=usage)
            self._chunk(f"data: {json.dumps(tail)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")
        return first, finish

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- TEI

    def _embed(self, body: dict[str, Any], *, openai: bool) -> None:
        started = time.monotonic()
        inputs = body.get("input") if openai else body.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            self._send_json(422, {"error": "`inputs` cannot be empty", "error_type": "Validation"})
            return
        dimensions = int(ENV.get("DOUBLE_DIMENSIONS", "1024"))
        vectors = [_embedding(str(text), dimensions) for text in inputs]
        self.server.tei.observe(time.monotonic() - started)
        if openai:
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "embedding": vector, "index": index}
                        for index, vector in enumerate(vectors)
                    ],
                    "model": self.server.model_name,
                    "usage": {
                        "prompt_tokens": sum(len(str(t).split()) for t in inputs),
                        "total_tokens": sum(len(str(t).split()) for t in inputs),
                    },
                },
            )
        else:
            self._send_json(200, vectors)


def _embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector per text, so equal inputs embed equally."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % len(seed)] + i * 31) % 251) / 125.0 - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def parse_args(argv: list[str]) -> tuple[str, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="engine_double")
    parser.add_argument("--role", choices=["vllm", "sglang", "tei"], required=True)
    # vLLM's flags (the rest of a real command line is accepted and ignored).
    parser.add_argument("--model", default="")
    parser.add_argument("--served-model-name", nargs="*", default=None)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    # SGLang's flags.
    parser.add_argument("--model-path", default="")
    parser.add_argument("--context-length", type=int, default=None)
    # TEI's flags.
    parser.add_argument("--model-id", default="")
    parser.add_argument("--hostname", default=None)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    args, ignored = parser.parse_known_args(argv)
    if args.context_length is not None:  # SGLang's name for the same limit
        args.max_model_len = args.context_length
    if isinstance(args.served_model_name, list):
        args.served_model_name = args.served_model_name[0] if args.served_model_name else None
    if ignored:
        log(f"ignoring flags the double does not model: {' '.join(ignored)}")
    return args.role, args


def main(argv: list[str]) -> None:
    role, args = parse_args(argv)
    port = args.port or {"vllm": 8000, "sglang": 30000}.get(role, 80)
    host = args.hostname or args.host
    log(f"{role} double starting: {' '.join(argv)}")
    delay = float(ENV.get("DOUBLE_STARTUP_DELAY_S", "0"))
    if delay:
        log(f"loading weights ({delay:.1f} s)")
        time.sleep(delay)
    refuse_above = int(ENV.get("DOUBLE_REFUSE_SEQS_ABOVE", "0"))
    if FAIL == "exit-on-start" or (refuse_above and args.max_num_seqs > refuse_above):
        print(
            "ValueError: To serve at least one request with the models's max seq len (32768), "
            "(4.00 GiB KV cache) is needed, which is larger than the available KV cache memory "
            "(1.50 GiB). Based on the available memory, the estimated maximum model length is "
            "12288. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
            "initializing the engine.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_CODE)
    server = EngineServer((host, port), role, args)
    log(f"Uvicorn running on http://{host}:{port} (Press CTRL+C to quit)")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
