"""What users felt over the last minute, exactly: the gateway's own TTFT and end-to-end latency
of each answer it sent, kept whole for `RECENT_WINDOW_S` and exposed as Prometheus summaries.

The histograms (`appliance_gateway_ttft_seconds`, `..._e2e_seconds`) are for Prometheus and
Grafana, which add them up over time and boxes. A quantile read back from buckets is an
estimate: inside a bucket a tenth of a decade wide it can be a fifth off, and when the slowest
few requests stand apart from the rest (a first token behind a health check or a long prompt),
the p95 of 132 answers fell in an empty stretch between 82 ms and 126 ms and read 135 ms. The
gateway sees every request, so `status` and the Monitor read these instead: the percentiles of
the exact figures, by the definition `appliance bench` uses (`monitor.maths.percentile`).

What must stay true: memory is bounded whatever clients send (at most `RECENT_MAX_POINTS`
answers a metric; a busier minute is summarised by its latest answers), there are no labels for
a client to multiply, the percentiles are computed at most once per `RECOMPUTE_S` however often
anyone (the port is open to the network) asks for /metrics, and an empty window reads NaN (a
Prometheus summary with no observations), never 0 seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from appliance.monitor.maths import percentile
from appliance.monitor.scrape import GATEWAY_RECENT_E2E_METRIC, GATEWAY_RECENT_TTFT_METRIC
from appliance.monitor.series import TimeWindow

RECENT_WINDOW_S: Final = 60.0
"""The last minute: the monitor's quantile window and PromQL's usual `[1m]`."""
RECENT_MAX_POINTS: Final = 16384
"""About 270 answers a second for a whole minute; 16k floats and times are a few hundred KiB."""
RECENT_QUANTILES: Final = (0.5, 0.95, 0.99)
RECOMPUTE_S: Final = 1.0
"""A full window sorts 16k figures (milliseconds of CPU): once a second, as the monitor ticks."""


class _Recent:
    """One latency's answers of the last minute, and its running count and sum."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.window: TimeWindow[float] = TimeWindow(RECENT_WINDOW_S, RECENT_MAX_POINTS)
        self.count = 0
        self.total = 0.0
        self._computed: tuple[float, tuple[float, ...]] | None = None  # (when, the quantiles)

    def observe(self, seconds: float, at: float) -> None:
        self.window.append(at, seconds)
        self.count += 1
        self.total += seconds

    def family(self, now: float) -> Metric:
        family = SummaryMetricFamily(self.name, self.documentation)
        for q, value in zip(RECENT_QUANTILES, self._quantiles(now), strict=True):
            family.samples.append(Sample(self.name, {"quantile": str(q)}, value, None, None))
        family.add_metric([], count_value=self.count, sum_value=self.total)
        return family

    def _quantiles(self, now: float) -> tuple[float, ...]:
        computed = self._computed
        if computed is not None and 0 <= now - computed[0] < RECOMPUTE_S:
            return computed[1]
        recent = [value for _, value in self.window.since(now - RECENT_WINDOW_S)]
        quantiles = tuple(
            percentile(recent, 100.0 * q) if recent else math.nan for q in RECENT_QUANTILES
        )
        self._computed = (now, quantiles)
        return quantiles


class RecentLatency(Collector):
    """The gateway's answers of the last minute: exact TTFT and e2e percentiles at scrape time.

    `observe` is called on the event loop and `collect` from the /metrics handler on the same
    loop, so the windows need no lock.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.ttft = _Recent(
            GATEWAY_RECENT_TTFT_METRIC,
            "Time from a request's arrival to the first body byte sent to the client: the "
            "percentiles of the answers of the last minute, exactly (all destinations and models).",
        )
        self.e2e = _Recent(
            GATEWAY_RECENT_E2E_METRIC,
            "Time from a request's arrival to the last byte sent to the client: the percentiles "
            "of the answers of the last minute, exactly (all destinations and models).",
        )

    def observe(self, ttft_s: float, e2e_s: float) -> None:
        at = self._clock()
        self.ttft.observe(ttft_s, at)
        self.e2e.observe(e2e_s, at)

    def describe(self) -> list[Metric]:
        return []  # read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        yield self.ttft.family(now)
        yield self.e2e.family(now)
