"""The gateway's last minute of user-felt latency, kept whole: exact percentiles for `status` and
the Monitor, where a histogram's bucket can put a p95 a sixth off (CI: 135 ms read against the
client's 82 ms when the slowest answers stood apart from the rest)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.gateway.app import GatewayMetrics
from appliance.gateway.latency import RECENT_MAX_POINTS, RECENT_WINDOW_S, RECOMPUTE_S
from appliance.monitor.maths import histogram_quantile, percentile
from appliance.monitor.monitor import Monitor
from appliance.monitor.scrape import parse_metrics
from tests.unit.test_monitor_loop import GATEWAY, Engines, clock_at, ticks


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# 132 answers, the slowest quarter standing apart from the rest: 100 at 80 ms, 32 at 126.5 ms.
GAP = [0.080] * 100 + [0.1265] * 32


def _page(metrics: GatewayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_the_gateway_exposes_the_exact_percentiles_of_its_last_minute() -> None:
    clock = _Clock()
    metrics = GatewayMetrics(CollectorRegistry(), clock)
    before = parse_metrics(_page(metrics), "gateway")
    assert before.quantiles["ttft"] == {0.5: None, 0.95: None, 0.99: None}  # NaN: none yet
    for ttft in GAP:
        metrics.user_latency("local", "tiny", ttft, ttft + 0.5)
        clock.now += 0.1
    reading = parse_metrics(_page(metrics), "gateway")
    assert reading.sources["ttft"] == "appliance_gateway_recent_ttft_seconds"
    assert reading.quantiles["ttft"][0.5] == pytest.approx(0.080)
    assert reading.quantiles["ttft"][0.95] == pytest.approx(percentile(GAP, 95)) == 0.1265
    assert reading.quantiles["e2e"][0.95] == pytest.approx(0.6265)
    # The histogram of the same answers: the p95 interpolated inside (0.125, 0.15] reads 14 %
    # high, more than the 10 % issue #17 allows between the gateway and its clients.
    estimate = histogram_quantile(0.95, reading.histograms["ttft"].buckets)
    assert estimate is not None
    assert estimate > 1.1 * 0.1265

    clock.now += RECENT_WINDOW_S  # a quiet minute: nothing recent, the running totals stay
    quiet = _page(metrics)
    assert 'appliance_gateway_recent_ttft_seconds{quantile="0.95"} NaN' in quiet
    assert "appliance_gateway_recent_ttft_seconds_count 132.0" in quiet
    assert parse_metrics(quiet, "gateway").quantiles["ttft"][0.95] is None


def test_the_percentiles_are_computed_at_most_once_a_second_however_often_asked() -> None:
    """/metrics is open to the network: asking it in a loop must not sort the window each time."""
    clock = _Clock()
    metrics = GatewayMetrics(CollectorRegistry(), clock)
    metrics.user_latency("local", "tiny", 0.1, 0.2)
    assert parse_metrics(_page(metrics), "gateway").quantiles["ttft"][0.5] == pytest.approx(0.1)
    for _ in range(3):
        metrics.user_latency("local", "tiny", 0.9, 1.0)
    clock.now += RECOMPUTE_S / 2
    assert parse_metrics(_page(metrics), "gateway").quantiles["ttft"][0.5] == pytest.approx(0.1)
    clock.now += RECOMPUTE_S / 2
    assert parse_metrics(_page(metrics), "gateway").quantiles["ttft"][0.5] == pytest.approx(0.9)


def test_a_flood_of_answers_keeps_the_window_bounded() -> None:
    """A client (with a key) sending far more than the window holds: the latest answers count."""
    clock = _Clock()
    metrics = GatewayMetrics(CollectorRegistry(), clock)
    for _ in range(RECENT_MAX_POINTS):
        metrics.user_latency("local", "tiny", 5.0, 6.0)
    for _ in range(RECENT_MAX_POINTS):
        metrics.user_latency("remote", "other", 0.01, 0.02)
    assert len(metrics.recent.ttft.window) == RECENT_MAX_POINTS
    reading = parse_metrics(_page(metrics), "gateway")
    assert reading.quantiles["ttft"][0.99] == pytest.approx(0.01)
    assert reading.counters["requests"] == 0  # the answers were not counted as requests here


def test_the_monitor_shows_the_gateways_exact_figures_from_its_first_scrape() -> None:
    """No histogram window to wait for: one scrape of the gateway already covers its minute,
    and the figures are the answers' own, not a bucket's interpolation."""
    gateway_clock = _Clock()
    metrics = GatewayMetrics(CollectorRegistry(), gateway_clock)
    for ttft in GAP:
        metrics.user_latency("local", "tiny", ttft, 2 * ttft)
    engines, clock = Engines(), clock_at()
    engines.pages["gateway.test"] = _page(metrics)
    (snapshot,) = ticks(Monitor(engines.samplers(GATEWAY), clock=clock), clock, [lambda: None])
    gateway = snapshot.service("gateway")
    assert gateway is not None
    assert gateway.ttft_p50_s == pytest.approx(0.080)
    assert gateway.ttft_p95_s == pytest.approx(0.1265)
    assert gateway.e2e_p95_s == pytest.approx(0.253)
    assert snapshot.latency.gateway.ttft_seconds.p95 == pytest.approx(0.1265)
    assert snapshot.latency.ttft_source == "gateway"


def _without_summaries(page: str) -> str:
    return "".join(
        line + "\n" for line in page.splitlines() if "appliance_gateway_recent_" not in line
    )


def test_a_gateway_without_the_summaries_is_read_from_its_histograms() -> None:
    """An older gateway (or another exporter) with only the histograms: PromQL's estimate
    over the monitor's window, as before."""
    metrics = GatewayMetrics(CollectorRegistry(), _Clock())
    empty = _without_summaries(_page(metrics))
    for ttft in GAP:
        metrics.user_latency("local", "tiny", ttft, 2 * ttft)
    full = _without_summaries(_page(metrics))
    assert parse_metrics(full, "gateway").quantiles == {}
    engines, clock = Engines(), clock_at()

    def serve(page: str) -> Callable[[], None]:
        return lambda: engines.pages.__setitem__("gateway.test", page)

    _, snapshot = ticks(
        Monitor(engines.samplers(GATEWAY), clock=clock), clock, [serve(empty), serve(full)]
    )
    gateway = snapshot.service("gateway")
    assert gateway is not None
    # The series first appears in the second scrape: counted from zero at the first.
    buckets = parse_metrics(full, "gateway").histograms["ttft"].buckets
    assert gateway.ttft_p95_s == pytest.approx(histogram_quantile(0.95, buckets))
    assert gateway.ttft_p95_s != pytest.approx(0.1265)
