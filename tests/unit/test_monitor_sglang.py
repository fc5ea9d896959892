"""The monitor reads SGLang's Prometheus names (issue #21 point 4) onto its own vocabulary.

The page comes from the SGLang engine double, whose names, types and labels follow sglang
0.5.21's metrics_collector.py (see `tests/doubles/engine_double.py` `SglangMetrics`), and from
`tests/fixtures/sglang-0.4-metrics-excerpt.txt`: a verbatim excerpt of a real SGLang page
(DeepSeek-R1, SGLang main of July 2025) published in sgl-project/sglang PR #7944; its header
says what it holds and what it lacks. No whole real scrape is kept: none was recorded on a GPU
machine, and no complete one (>= 0.4) could be read verbatim from a public source.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from appliance.monitor.maths import histogram_quantile
from appliance.monitor.scrape import detect_kind, parse_metrics
from tests.doubles import local_engine_double
from tests.doubles.engine_double import SglangMetrics

NAMES = (
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    "sglang:token_usage",
    "sglang:cache_hit_rate",
    "sglang:time_to_first_token_seconds",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
)


def test_an_sglang_page_reads_as_the_chat_engine() -> None:
    metrics = SglangMetrics("qwen")
    metrics.prompt_tokens.labels().inc(100)
    metrics.generation_tokens.labels().inc(40)
    metrics.cached.labels(model_name="qwen", engine_type="unified", cache_source="device").inc(60)
    metrics.success.labels().inc(2)
    metrics.ttft.labels().observe(0.15)
    metrics.ttft.labels().observe(0.5)
    metrics.waiting.labels(**metrics.sched).set(3)
    metrics.kv_usage.labels(**metrics.sched).set(0.42)
    metrics.running.labels().inc()
    text = metrics.render().decode()
    for name in NAMES:
        assert f"\n{name}" in text or f"# TYPE {name}" in text, name
    assert detect_kind(["sglang:num_queue_reqs"]) == "vllm"
    reading = parse_metrics(text, "vllm")
    assert reading.kind == "vllm"
    assert reading.model_names == ("qwen",)
    assert reading.gauges["running_requests"] == 1
    assert reading.gauges["waiting_requests"] == 3
    assert reading.gauges["kv_cache_usage"] == 0.42
    assert reading.counters["prompt_tokens"] == 100
    assert reading.counters["generation_tokens"] == 40
    assert reading.counters["requests"] == 2
    assert reading.counters["prefix_cache_queries"] == 100
    assert reading.counters["prefix_cache_hits"] == 60
    assert reading.sources["waiting_requests"] == "sglang:num_queue_reqs"
    assert reading.sources["kv_cache_usage"] == "sglang:token_usage"
    ttft = reading.histograms["ttft"]
    assert ttft.count == 2
    p50 = histogram_quantile(0.5, ttft.buckets)
    assert p50 is not None
    assert 0.1 <= p50 <= 0.2


def test_the_sglang_double_serves_sglangs_endpoints() -> None:
    args = ("--model-path", "/models/q", "--served-model-name", "qwen", "--context-length", "8192")
    with local_engine_double("sglang", *args) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [("qwen", 8192)]
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "qwen",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
            },
        ).json()
        assert answer["usage"]["completion_tokens"] == 3
        reading = parse_metrics(httpx.get(f"{url}/metrics").text)
    assert reading.counters["generation_tokens"] == 3
    assert reading.counters["requests"] == 1
    assert reading.histograms["ttft"].count == 1


def test_a_real_sglang_page_maps_onto_the_monitors_names() -> None:
    """The published excerpt: what it holds maps, what it lacks stays absent (never zero)."""
    path = Path(__file__).resolve().parents[1] / "fixtures" / "sglang-0.4-metrics-excerpt.txt"
    text = path.read_text()
    assert 'sglang:num_running_reqs{engine_type="unified"' in text
    reading = parse_metrics(text)  # told from the names alone, as `appliance scrape` does
    assert reading.kind == "vllm"
    assert reading.engine == "sglang"
    assert reading.model_names == ("/home/moyun.zty/models/deepseek-ai__DeepSeek-R1",)
    assert reading.gauges == {"running_requests": 0.0, "kv_cache_usage": 0.0}
    assert reading.counters == {"requests": 217.0, "prefix_cache_hits": 2688.0}
    assert reading.sources == {
        "running_requests": "sglang:num_running_reqs",
        "kv_cache_usage": "sglang:token_usage",
        "requests": "sglang:num_requests",
        "prefix_cache_hits": "sglang:cached_tokens",
    }
    # Not in the excerpt: the queue gauge, the token counters, the latency histograms.
    assert "waiting_requests" not in reading.gauges
    assert "prompt_tokens" not in reading.counters
    assert reading.histograms == {}
