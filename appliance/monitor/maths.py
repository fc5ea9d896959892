"""Rates from counters and quantiles from histograms, as Prometheus computes them. Pure: no IO.

What must stay true:
- A counter that goes down was restarted (the engine or its container came back): the new value
  counts from zero, so a rate is never negative and a restart never shows as a huge spike.
- A quantile is PromQL's `histogram_quantile(q, rate(x_bucket[window]))`: bucket increases over
  the window, the bucket holding the q-th observation found by rank, linear interpolation inside
  it, and the highest finite bound when the rank falls into the +Inf bucket.
- No traffic in the window is `None` ("nothing to say"), never 0 seconds or 0 %.

Where this differs from Prometheus, on purpose:
- No extrapolation to the window's edges (Prometheus's `rate` extrapolates): the increase is
  divided by the time between the first and last sample actually in the window.
- A histogram resets as a whole (its count or any bucket went down), not bucket by bucket; the
  buckets of one histogram are written together, so they restart together.
- q = 0 gives the lower bound of the first non-empty bucket (Prometheus can answer NaN there), so
  the quantile is monotone over all of [0, 1].
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

Point = tuple[float, float]
"""(time in seconds, value) of one sample."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """One scrape of a Prometheus histogram.

    `bounds` are the buckets' upper bounds (`le`), ascending, the last one +Inf; `counts` the
    cumulative counts of observations ≤ each bound; `count` is the +Inf count and `sum` the sum
    of all observations.
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float = 0.0
    count: float = 0.0

    @classmethod
    def of(cls, buckets: Sequence[tuple[float, float]], sum: float = 0.0) -> Histogram:
        """From (bound, cumulative count) pairs in any order; `count` is the +Inf bucket's."""
        ordered = sorted(buckets)
        counts = tuple(count for _, count in ordered)
        return cls(
            bounds=tuple(bound for bound, _ in ordered),
            counts=counts,
            sum=sum,
            count=counts[-1] if counts else 0.0,
        )

    @property
    def buckets(self) -> tuple[tuple[float, float], ...]:
        return tuple(zip(self.bounds, self.counts, strict=True))

    def minus(self, older: Histogram) -> Histogram:
        """Observations made since `older` (same bounds, no reset between them)."""
        return Histogram(
            self.bounds,
            tuple(map(operator.sub, self.counts, older.counts)),
            self.sum - older.sum,
            self.count - older.count,
        )

    def plus(self, other: Histogram) -> Histogram:
        return Histogram(
            self.bounds,
            tuple(map(operator.add, self.counts, other.counts)),
            self.sum + other.sum,
            self.count + other.count,
        )


def counter_increase(values: Sequence[float]) -> float:
    """How much a counter grew over consecutive samples, counting from 0 after each reset."""
    increase = 0.0
    for previous, current in pairwise(values):
        increase += current - previous if current >= previous else current
    return increase


def counter_rate(points: Sequence[Point]) -> float | None:
    """Per-second increase over the points (oldest first); None with fewer than two."""
    if len(points) < 2:
        return None
    elapsed = points[-1][0] - points[0][0]
    if elapsed <= 0:
        return None
    return counter_increase([value for _, value in points]) / elapsed


def histogram_reset(older: Histogram, newer: Histogram) -> bool:
    """Whether `newer` restarted counting since `older` (its count or any bucket went down)."""
    return newer.count < older.count or any(map(operator.lt, newer.counts, older.counts))


def histogram_increase(snapshots: Sequence[Histogram]) -> Histogram | None:
    """Observations made over consecutive scrapes (oldest first), counting from 0 after a reset.

    A change of bucket layout (an engine upgraded in place) starts the count again from the
    scrape that has the new layout: bucket counts with different bounds cannot be added.
    None with fewer than two scrapes.
    """
    if len(snapshots) < 2:
        return None
    total: Histogram | None = None
    baseline: Histogram | None = snapshots[0]  # None: the segment counts from zero
    previous = snapshots[0]
    for current in snapshots[1:]:
        if current.bounds != previous.bounds:
            total, baseline = None, None
        elif histogram_reset(previous, current):
            segment = previous if baseline is None else previous.minus(baseline)
            total = segment if total is None else total.plus(segment)
            baseline = None
        previous = current
    segment = previous if baseline is None else previous.minus(baseline)
    return segment if total is None else total.plus(segment)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile (0 ≤ q ≤ 1) of cumulative buckets, as PromQL's `histogram_quantile`.

    None when there is nothing to rank: no observations, fewer than two buckets, or no +Inf
    bucket. Bucket counts that decrease (floating-point noise in a rate) are made monotone first.
    """
    if not 0.0 <= q <= 1.0 or math.isnan(q):
        msg = f"quantile must be within [0, 1], got {q}"
        raise ValueError(msg)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return None
    ordered = sorted(buckets, key=lambda bucket: bucket[0])
    monotone: list[tuple[float, float]] = []
    highest = 0.0
    for bound, count in ordered:
        highest = max(highest, count)
        monotone.append((bound, highest))
    observations = monotone[-1][1]
    if observations <= 0:
        return None
    rank = q * observations
    finite = len(monotone) - 1
    # The first finite bucket holding the rank-th observation; `finite` means the +Inf bucket.
    index = next(
        (i for i in range(finite) if monotone[i][1] >= rank and monotone[i][1] > 0), finite
    )
    if index == finite:
        return monotone[finite - 1][0]
    upper, count = monotone[index]
    if index == 0 and upper <= 0:
        return upper
    lower = 0.0
    if index > 0:
        lower, below = monotone[index - 1]
        count -= below
        rank -= below
    return lower + (upper - lower) * (rank / count)


def quantile_over(q: float, snapshots: Sequence[Histogram]) -> float | None:
    """The q-quantile of the observations made over the scrapes (oldest first)."""
    increase = histogram_increase(snapshots)
    if increase is None:
        return None
    return histogram_quantile(q, increase.buckets)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of exact observations by linear interpolation, as
    `numpy.percentile` and `vllm bench serve`; 0 for none. The one definition for observations
    kept whole (the bench's requests, the gateway's last minute), so their figures compare."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio_pct(part: float | None, whole: float | None) -> float | None:
    """`part` as a percentage of `whole`, within [0, 100]; None when `whole` is not positive."""
    if part is None or whole is None or whole <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * part / whole))
