"""The sweep of `appliance tune` (#18 point 3): which engine settings to try, in which order,
when to stop, which one wins, and how the winner is written into the profile. No IO: the
running of each point (apply, bench) is `appliance.operations.tune`.

The sweep is `max_num_seqs` x `max_num_batched_tokens` (x the KV cache dtype where the GPU has
FP8, compute capability 8.9+, the rule `recommend` uses), within what sizing says fits
(`fit.fit_profile`, the check `apply` runs itself). It is walked row by row, one row per
(KV dtype, max_num_batched_tokens), each row from the fewest sequences up. A row stops at its
first point that misses the SLO or fails: more sequences at once only add to every request's
TTFT and ITL, so the rest of that row cannot meet an SLO the smaller point missed (the early
stop). The winner is the point with the most output tokens/s among those that met the SLO
(the fewer sequences, then the smaller batch, on a tie: less memory for the same speed).

These rules are the appliance's own; vLLM's `benchmarks/auto_tune` likewise maximises
throughput over `max-num-seqs` x `max-num-batched-tokens` under a latency limit, by restarting
the server per combination.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.benchmark import LevelResult, Slo
from appliance.errors import BadInputError
from appliance.profile.yaml_text import with_value
from appliance.vocabulary import KvCacheDtype

MAX_POINTS = 64  # the most points one sweep may list, whatever the flags say
_DEFAULT_SEQS = (8, 16, 32, 64)  # when the profile leaves max_num_seqs to the engine


@dataclass(frozen=True, order=True)
class Point:
    """One engine configuration to measure."""

    kv_cache_dtype: KvCacheDtype
    max_num_batched_tokens: int | None  # None: the engine's default
    max_num_seqs: int

    @property
    def row(self) -> tuple[str, int]:
        return (self.kv_cache_dtype, self.max_num_batched_tokens or 0)

    def label(self) -> str:
        batched = self.max_num_batched_tokens or "default"
        return (
            f"max_num_seqs {self.max_num_seqs}, max_num_batched_tokens {batched}, "
            f"kv_cache_dtype {self.kv_cache_dtype}"
        )


@dataclass(frozen=True)
class Skipped:
    point: Point
    reason: str


@dataclass(frozen=True)
class Sweep:
    """The points that fit, in the order they are measured, and those left out with why."""

    points: tuple[Point, ...]
    skipped: tuple[Skipped, ...]
    original: Point


@dataclass(frozen=True)
class Measured:
    """What one point gave: its bench level, or why it could not be measured."""

    point: Point
    level: LevelResult | None = None
    error: str | None = None
    bench_file: str | None = None

    @property
    def met(self) -> bool:
        return self.level is not None and self.level.meets_slo


def default_seqs(current: int | None) -> tuple[int, ...]:
    """Half, the same, twice and four times the profile's max_num_seqs (8 to 64 when unset)."""
    if current is None:
        return _DEFAULT_SEQS
    return tuple(sorted({max(1, current // 2), current, current * 2, current * 4}))


def default_batched(current: int | None, max_model_len: int | None) -> tuple[int | None, ...]:
    """The profile's max_num_batched_tokens (None: the engine's default), then one and two
    max_model_len: a prompt of max_model_len then always fits one step."""
    base = max_model_len or 8192
    values: list[int | None] = [current]
    for candidate in (base, base * 2):
        if candidate not in values:
            values.append(candidate)
    return tuple(values)


def plan_sweep(
    original: Point,
    *,
    seqs: Sequence[int],
    batched: Sequence[int | None],
    kv_dtypes: Sequence[KvCacheDtype],
    max_model_len: int | None,
    fits: Callable[[Point], str | None],
) -> Sweep:
    """Every combination, rows in the order given, sequences ascending; a point sizing refuses
    (`fits` returns why) or whose batch could not hold one token per sequence is skipped."""
    points: list[Point] = []
    skipped: list[Skipped] = []
    for kv in dict.fromkeys(kv_dtypes):
        for tokens in dict.fromkeys(batched):
            for count in sorted(set(seqs)):
                point = Point(kv, tokens, count)
                reason = _too_small(point, max_model_len) or fits(point)
                if reason is not None:
                    skipped.append(Skipped(point, reason))
                    continue
                points.append(point)
    if len(points) > MAX_POINTS:
        raise BadInputError(
            f"the sweep has {len(points)} points that fit, more than {MAX_POINTS}",
            hint="give fewer values to --max-num-seqs / --max-num-batched-tokens",
        )
    return Sweep(tuple(points), tuple(skipped), original)


def _too_small(point: Point, max_model_len: int | None) -> str | None:
    tokens = point.max_num_batched_tokens
    if tokens is not None and tokens < point.max_num_seqs:
        return "max_num_batched_tokens below max_num_seqs: a step could not give each a token"
    if tokens is not None and max_model_len is not None and tokens < max_model_len:
        return (
            f"max_num_batched_tokens below max_model_len {max_model_len}: a prompt of "
            "max_model_len would not fit one step"
        )
    return None


def next_point(sweep: Sweep, done: Sequence[Measured], *, limit: int) -> Point | None:
    """The next point to measure, or None: `limit` points measured, or every row finished (a
    row is finished at its first point that missed the SLO or failed: the early stop)."""
    if len(done) >= limit:
        return None
    measured = {m.point for m in done}
    stopped = {m.point.row for m in done if not m.met}
    for point in sweep.points:
        if point in measured or point.row in stopped:
            continue
        return point
    return None


def early_stopped(sweep: Sweep, done: Sequence[Measured]) -> tuple[Point, ...]:
    """The points not measured because their row missed the SLO at fewer sequences."""
    measured = {m.point for m in done}
    stopped = {m.point.row for m in done if not m.met}
    return tuple(p for p in sweep.points if p not in measured and p.row in stopped)


def winner(done: Sequence[Measured]) -> Measured | None:
    """The point with the most output tokens/s among those that met the SLO; None if none did."""
    met = [m for m in done if m.met and m.level is not None]
    if not met:
        return None

    def key(m: Measured) -> tuple[float, int, int]:
        speed = m.level.output_throughput if m.level is not None else 0.0
        return (-speed, m.point.max_num_seqs, m.point.max_num_batched_tokens or 0)

    return min(met, key=key)


# ---------------------------------------------------------------------------------- the profile

BLOCK_START = "# --- appliance tune ---"
BLOCK_END = "# --- end appliance tune ---"


def provenance(
    best: Measured, *, when: str, slo: Slo, was: Point, measured: int, of: int, concurrency: int
) -> str:
    """The comment block written above the profile: when, which bench, the numbers."""
    level = best.level
    if level is None:
        raise ValueError("a winner is a measured point")
    lines = [
        BLOCK_START,
        f"# Tuned {when} by `appliance tune`: {best.point.label()}",
        f"# (was {was.label()}).",
        f"# Measured {level.output_throughput:,.1f} output tok/s at {concurrency} users, "
        f"TTFT p95 {level.ttft.p95 * 1000:,.0f} ms, ITL p95 {level.itl.p95 * 1000:,.1f} ms, "
        f"goodput {level.goodput:.2f} req/s",
        f"# (SLO: TTFT p95 <= {slo.ttft_p95_s:g} s, ITL p95 <= {slo.itl_p95_s * 1000:g} ms); "
        f"{measured} of {of} points measured.",
    ]
    if best.bench_file:
        lines.append(f"# Bench result: {best.bench_file}")
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


_BLOCK = re.compile(
    rf"^{re.escape(BLOCK_START)}\n(?:#.*\n)*?{re.escape(BLOCK_END)}\n", re.MULTILINE
)


def with_tuned(text: str, point: Point, block: str) -> str:
    """The profile's text with `point`'s settings under spec.engine and `block` at the top
    (replacing an earlier tune's), every other character as it was. For a valid profile."""
    tokens = point.max_num_batched_tokens
    settings: dict[str, int | str | None] = {
        "max_num_seqs": point.max_num_seqs,
        "max_num_batched_tokens": tokens,
        "kv_cache_dtype": None if point.kv_cache_dtype == "auto" else point.kv_cache_dtype,
    }
    out: str | None = text
    for key, value in settings.items():
        if out is not None:
            out = with_value(out, ("spec", "engine", key), value)
    if out is None:
        raise ValueError("spec.engine of the profile cannot be edited in place")
    out = _BLOCK.sub("", out, count=1)
    return block + out
