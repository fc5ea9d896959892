"""Counter rates, histogram quantiles and bounded history, checked against hand-computed values.

A quantile over a window is PromQL's `histogram_quantile(q, rate(x_bucket[w]))`; since dividing
every bucket by the window's length does not move a quantile, the increase over the window is
used directly and the expected values below are computed from increases.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.monitor.maths import (
    Histogram,
    counter_increase,
    counter_rate,
    histogram_increase,
    histogram_quantile,
    quantile_over,
    ratio_pct,
)
from appliance.monitor.series import History, Series, TimeWindow

INF = math.inf

# ---------------------------------------------------------------------------------- counters


def test_counter_increase_without_reset_is_last_minus_first() -> None:
    assert counter_increase([100.0, 105.0, 112.0]) == 12.0


def test_counter_that_goes_down_restarted_and_counts_from_zero() -> None:
    # 10 → 15 (+5), restart: 3 counted in full (+3), 3 → 8 (+5)
    assert counter_increase([10.0, 15.0, 3.0, 8.0]) == 13.0


def test_counter_rate_is_increase_over_the_time_between_first_and_last_sample() -> None:
    assert counter_rate([(0.0, 100.0), (2.0, 110.0), (4.0, 130.0)]) == 7.5


def test_counter_rate_across_a_restart() -> None:
    # 1000 → 1200 (+200) then the engine restarts and has counted 50 since: 250 over 2 s.
    assert counter_rate([(10.0, 1000.0), (11.0, 1200.0), (12.0, 50.0)]) == 125.0


@pytest.mark.parametrize(
    "points", [[], [(0.0, 5.0)], [(3.0, 5.0), (3.0, 9.0)]], ids=["none", "one", "no-time"]
)
def test_counter_rate_needs_two_samples_apart_in_time(points: list[tuple[float, float]]) -> None:
    assert counter_rate(points) is None


@given(
    st.lists(
        st.tuples(st.floats(min_value=0.001, max_value=60), st.floats(min_value=0, max_value=1e12)),
        min_size=2,
        max_size=50,
    )
)
def test_rate_is_never_negative_whatever_the_restarts(steps: list[tuple[float, float]]) -> None:
    t, points = 0.0, []
    for gap, value in steps:
        t += gap
        points.append((t, value))
    rate = counter_rate(points)
    assert rate is not None
    assert rate >= 0


@given(st.lists(st.floats(min_value=0, max_value=1e9), min_size=2, max_size=50))
def test_increase_of_a_counter_that_never_restarts_is_last_minus_first(
    deltas: list[float],
) -> None:
    values, total = [], 0.0
    for delta in deltas:
        total += delta
        values.append(total)
    assert counter_increase(values) == pytest.approx(values[-1] - values[0], rel=1e-9, abs=1e-6)


# ---------------------------------------------------------------------------------- quantiles

# 40 observations: 10 at ≤ 0.1 s, 20 in (0.1, 0.5], 10 in (0.5, 1].
BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 0.1),  # rank 10: the top of the first bucket
        (0.5, 0.3),  # rank 20: 10 into the 20 of (0.1, 0.5] → 0.1 + 0.4 x 10/20
        (0.95, 0.9),  # rank 38: 8 into the 10 of (0.5, 1] → 0.5 + 0.5 x 8/10
        (0.1, 0.04),  # rank 4 in the first bucket, which starts at 0
        (1.0, 1.0),
    ],
)
def test_quantile_interpolates_linearly_inside_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_rank_in_the_inf_bucket_gives_the_highest_finite_bound() -> None:
    # Half the observations are above 2 s: Prometheus cannot say more than "above 2".
    assert histogram_quantile(0.9, [(1.0, 5.0), (2.0, 5.0), (INF, 10.0)]) == 2.0


def test_a_first_bucket_with_a_negative_bound_is_returned_as_is() -> None:
    assert histogram_quantile(0.25, [(-1.0, 2.0), (1.0, 4.0), (INF, 4.0)]) == -1.0


@pytest.mark.parametrize(
    "buckets",
    [
        [(0.1, 0.0), (INF, 0.0)],  # no observations
        [(INF, 5.0)],  # one bucket
        [(0.1, 1.0), (0.5, 2.0)],  # no +Inf bucket
    ],
    ids=["empty", "one-bucket", "no-inf"],
)
def test_nothing_to_rank_is_none(buckets: list[tuple[float, float]]) -> None:
    assert histogram_quantile(0.5, buckets) is None


def test_quantile_outside_zero_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="within"):
        histogram_quantile(1.5, BUCKETS)


def test_q_zero_is_the_lower_bound_of_the_first_nonempty_bucket() -> None:
    assert histogram_quantile(0.0, [(0.1, 0.0), (0.5, 4.0), (INF, 4.0)]) == 0.1


def test_bucket_counts_that_decrease_are_made_monotone() -> None:
    # Floating-point noise in a rate can make a higher bucket a hair lower; Prometheus fixes it.
    # Made monotone, (0.5, 9) counts as 10: rank 15 is 5 into the 10 of (0.5, 1] → 0.75
    # (unfixed it would be 6 into 11 → 0.77).
    buckets = [(0.1, 10.0), (0.5, 9.0), (1.0, 20.0), (INF, 20.0)]
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.75)


def _h(*counts: float, bounds: tuple[float, ...] = (0.1, 0.5, 1.0, INF)) -> Histogram:
    return Histogram(bounds, tuple(counts), 0.0, counts[-1])


def test_quantile_over_a_window_uses_only_the_observations_made_in_it() -> None:
    # Before the window: 100 fast requests. In it: 10 more at ≤ 0.1 s and 10 in (0.5, 1].
    older = _h(100, 100, 100, 100)
    newer = _h(110, 110, 120, 120)
    # rank 0.5 x 20 = 10 → top of the first bucket; rank 19 → 9 into (0.5, 1] → 0.95.
    assert quantile_over(0.5, [older, newer]) == pytest.approx(0.1)
    assert quantile_over(0.95, [older, newer]) == pytest.approx(0.95)


def test_histogram_reset_in_the_window_counts_the_new_life_from_zero() -> None:
    before = _h(10, 20, 30, 30)
    grown = _h(10, 20, 40, 40)  # +10 in (0.5, 1]
    restarted = _h(5, 5, 5, 5)  # the engine restarted: 5 new observations at ≤ 0.1
    increase = histogram_increase([before, grown, restarted])
    assert increase is not None
    assert increase.counts == (5, 5, 15, 15)
    assert increase.count == 15


def test_new_bucket_layout_forgets_what_came_before() -> None:
    old = _h(1, 2, 3, 3)
    new = _h(4, 4, bounds=(0.2, INF))
    newer = _h(6, 7, bounds=(0.2, INF))
    increase = histogram_increase([old, new, newer])
    assert increase is not None
    assert increase.bounds == (0.2, INF)
    assert increase.counts == (6, 7)  # the new layout's whole life, counted from zero


def test_one_scrape_has_no_increase() -> None:
    assert histogram_increase([_h(1, 2, 3, 3)]) is None
    assert quantile_over(0.5, [_h(1, 2, 3, 3)]) is None


@st.composite
def cumulative_buckets(draw: st.DrawFn) -> list[tuple[float, float]]:
    bounds = sorted(
        draw(
            st.sets(
                st.floats(min_value=-10, max_value=1e4, allow_nan=False), min_size=1, max_size=12
            )
        )
    )
    increments = draw(
        st.lists(
            st.floats(min_value=0, max_value=1e6),
            min_size=len(bounds) + 1,
            max_size=len(bounds) + 1,
        )
    )
    buckets, total = [], 0.0
    for bound, increment in zip([*bounds, INF], increments, strict=True):
        total += increment
        buckets.append((bound, total))
    return buckets


@given(cumulative_buckets(), st.floats(0, 1), st.floats(0, 1))
def test_quantile_is_monotone_in_q(buckets: list[tuple[float, float]], a: float, b: float) -> None:
    low, high = sorted((a, b))
    first, second = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if buckets[-1][1] == 0:
        assert first is None
        assert second is None
        return
    assert first is not None
    assert second is not None
    assert first <= second + 1e-9 * max(1.0, abs(second))


@given(cumulative_buckets(), st.floats(0, 1))
def test_quantile_stays_within_the_finite_bounds(
    buckets: list[tuple[float, float]], q: float
) -> None:
    value = histogram_quantile(q, buckets)
    if value is None:
        return
    finite = [bound for bound, _ in buckets[:-1]]
    assert min(0.0, finite[0]) - 1e-9 <= value <= finite[-1] + 1e-9


@given(st.lists(st.lists(st.integers(0, 100), min_size=3, max_size=3), min_size=2, max_size=20))
def test_histogram_increase_without_resets_is_newest_minus_oldest(
    steps: list[list[int]],
) -> None:
    snapshots, counts = [], [0.0, 0.0, 0.0]
    for step in steps:
        counts = [c + s for c, s in zip(counts, step, strict=True)]
        cumulative = (counts[0], counts[0] + counts[1], counts[0] + counts[1] + counts[2])
        snapshots.append(Histogram((0.1, 1.0, INF), cumulative, 0.0, cumulative[-1]))
    increase = histogram_increase(snapshots)
    assert increase is not None
    assert increase.counts == snapshots[-1].minus(snapshots[0]).counts


def test_ratio_pct() -> None:
    assert ratio_pct(1, 4) == 25.0
    assert ratio_pct(5, 4) == 100.0
    assert ratio_pct(1, 0) is None
    assert ratio_pct(None, 4) is None


# ---------------------------------------------------------------------------------- history


def test_series_keeps_the_last_points_oldest_first() -> None:
    series = Series(3)
    for t in range(5):
        series.append(float(t), float(t * 10))
    assert series.values() == (20.0, 30.0, 40.0)
    assert series.latest == 40.0


def test_history_forgets_the_series_updated_longest_ago() -> None:
    history = History(capacity=2, max_series=2)
    history.record("a", 0.0, 1.0)
    history.record("b", 0.0, 1.0)
    history.record("a", 1.0, 2.0)  # a is now the most recent
    history.record("c", 1.0, 1.0)
    assert sorted(history.keys()) == ["a", "c"]
    assert history.values("b") == ()


@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(allow_nan=False)), max_size=300),
    st.integers(1, 20),
    st.integers(1, 5),
)
def test_history_is_bounded_whatever_is_recorded(
    records: list[tuple[str, float]], capacity: int, max_series: int
) -> None:
    history = History(capacity=capacity, max_series=max_series)
    for t, (key, value) in enumerate(records):
        history.record(key, float(t), value)
    assert len(history) <= max_series
    for key in history:
        assert len(history.values(key)) <= capacity


@given(st.lists(st.floats(min_value=-5, max_value=5), max_size=200), st.integers(1, 30))
def test_time_window_is_bounded_even_when_the_clock_misbehaves(
    gaps: list[float], max_points: int
) -> None:
    window: TimeWindow[int] = TimeWindow(span_s=10.0, max_points=max_points)
    t = 0.0
    for index, gap in enumerate(gaps):
        t += gap
        window.append(t, index)
        assert len(window) <= max_points
        latest = window.latest
        assert latest is not None
        assert all(latest[0] - 10.0 <= at <= latest[0] for at, _ in window.since(-INF))


def test_time_window_keeps_the_span_and_its_edge() -> None:
    window: TimeWindow[float] = TimeWindow(span_s=2.0, max_points=100)
    for t in range(6):
        window.append(float(t), float(t))
    assert window.values() == [3.0, 4.0, 5.0]
    assert window.since(4.0) == [(4.0, 4.0), (5.0, 5.0)]
