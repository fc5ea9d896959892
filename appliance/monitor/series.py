"""Bounded history: the last N points of each quantity, so memory stays flat over days. Pure.

`Series` is one ring buffer of (time, value); `History` is the named series a monitor keeps for
sparklines (`gpu0.temperature_c`, `vllm.generation_tokens_per_s`, …); `TimeWindow` keeps the samples
of the last few seconds that a rate or a quantile is computed over.

What must stay true: nothing here grows without bound. A series holds at most `capacity` points;
a history holds at most `max_series` series and forgets the one updated longest ago first; a
window holds at most `max_points` samples whatever the clock does.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Series:
    """The last `capacity` points of one quantity; None is a gap (the value could not be read)."""

    __slots__ = ("_points",)

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            msg = f"a series holds at least one point, got capacity {capacity}"
            raise ValueError(msg)
        self._points: deque[tuple[float, float | None]] = deque(maxlen=capacity)

    @property
    def capacity(self) -> int:
        maxlen = self._points.maxlen
        assert maxlen is not None
        return maxlen

    def append(self, at: float, value: float | None) -> None:
        self._points.append((at, value))

    def values(self) -> tuple[float | None, ...]:
        """Oldest first, as a sparkline draws them."""
        return tuple(value for _, value in self._points)

    def points(self) -> tuple[tuple[float, float | None], ...]:
        return tuple(self._points)

    @property
    def latest(self) -> float | None:
        return self._points[-1][1] if self._points else None

    def __len__(self) -> int:
        return len(self._points)


class History:
    """Named series of one capacity, at most `max_series` of them (least recently updated go)."""

    def __init__(self, capacity: int = 300, max_series: int = 512) -> None:
        if max_series < 1:
            msg = f"a history holds at least one series, got max_series {max_series}"
            raise ValueError(msg)
        self.capacity = capacity
        self.max_series = max_series
        self._series: OrderedDict[str, Series] = OrderedDict()

    def record(self, key: str, at: float, value: float | None) -> None:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(self.capacity)
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        series.append(at, value)

    def series(self, key: str) -> Series | None:
        return self._series.get(key)

    def values(self, key: str) -> tuple[float | None, ...]:
        """The series' values oldest first; empty for a key never recorded."""
        series = self._series.get(key)
        return () if series is None else series.values()

    def keys(self) -> Iterator[str]:
        return iter(tuple(self._series))

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __len__(self) -> int:
        return len(self._series)


class TimeWindow(Generic[T]):
    """The samples of the last `span_s` seconds (by the sample's own time), oldest first."""

    __slots__ = ("_samples", "span_s")

    def __init__(self, span_s: float, max_points: int) -> None:
        self.span_s = span_s
        self._samples: deque[tuple[float, T]] = deque(maxlen=max_points)

    def append(self, at: float, value: T) -> None:
        if self._samples and at < self._samples[-1][0]:
            self._samples.clear()  # time went backwards: what we held is not comparable
        self._samples.append((at, value))
        horizon = at - self.span_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def since(self, start: float) -> list[tuple[float, T]]:
        """Samples taken at or after `start`, oldest first."""
        return [sample for sample in self._samples if sample[0] >= start]

    def values(self) -> list[T]:
        """Every value held, oldest first."""
        return [value for _, value in self._samples]

    def clear(self) -> None:
        self._samples.clear()

    @property
    def latest(self) -> tuple[float, T] | None:
        return self._samples[-1] if self._samples else None

    def __len__(self) -> int:
        return len(self._samples)
