"""Per-key requests-per-minute limits: a token bucket per key, pure (the caller passes `now`).

A key limited to N requests/min may burst N requests, then gets one more every 60/N seconds.
A refused request is told how many whole seconds to wait (`Retry-After`), never zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token buckets keyed by key id. Buckets of keys no longer used are dropped by `forget`."""

    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def check(self, key_id: str, per_minute: int, now: float) -> float | None:
        """Take one request from `key_id`'s bucket; `None` if allowed, else seconds to wait."""
        if per_minute <= 0:
            return None
        rate = per_minute / 60.0
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(float(per_minute), now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(per_minute), bucket.tokens + elapsed * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate

    def forget(self, keep: set[str]) -> None:
        for key_id in set(self._buckets) - keep:
            del self._buckets[key_id]


def retry_after_header(seconds: float) -> str:
    """`Retry-After` in whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
