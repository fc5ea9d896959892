"""The maths and the report of `appliance bench`: percentiles, goodput, tables, charts. No IO.

Definitions follow vLLM's own benchmark so the two agree on the same run (issue #18), as read
in vllm-project/vllm `vllm/benchmarks/serve.py` (`calculate_metrics`) and
`vllm/benchmarks/lib/endpoint_request_func.py` (`async_request_openai_chat_completions`):

* TTFT: from sending the request to the first streamed event whose `choices` is not empty
  (a role-only first delta counts, as it does there).
* ITL: the gaps between consecutive token-bearing events of one request, pooled over all
  requests of a level before taking percentiles.
* E2E latency: from sending the request to the last token-bearing event (the trailing usage
  event and `[DONE]` do not move it).
* TPOT: (E2E - TTFT) / (output tokens - 1), for requests with more than one output token.
* Output tokens: the stream's `usage.completion_tokens` (`stream_options.include_usage`); where
  a server sends no usage, the count of token-bearing events (vLLM would tokenize the text).
* Output throughput: the level's output tokens over its wall-clock duration; request rate:
  completed requests over the same duration.
* Percentiles: linear interpolation between closest ranks (numpy's default `np.percentile`).
* Goodput: completed requests per second whose own TTFT and TPOT are within the SLO (vLLM's
  `--goodput ttft:… tpot:…`); separately, a level *meets* the SLO when its TTFT p95 and ITL p95
  are within it, which is what an operator asks of a box.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.monitor.maths import percentile

SCHEMA = 1
Mode = Literal["concurrency", "rate"]
PERCENTILES = (50.0, 95.0, 99.0)
_ERRORS_KEPT = 5


@dataclass(frozen=True)
class Slo:
    """The service level a level must meet: TTFT p95 and ITL p95, in seconds."""

    ttft_p95_s: float = 2.0
    itl_p95_s: float = 0.1

    def to_json(self) -> dict[str, float]:
        return {"ttft_p95_s": self.ttft_p95_s, "itl_p95_s": self.itl_p95_s}


@dataclass(slots=True)
class RequestOutcome:
    """One request as the load generator saw it; times in seconds from `perf_counter`."""

    ok: bool = False
    start: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""


@dataclass(frozen=True)
class Distribution:
    """Mean and p50/p95/p99 of one latency, in seconds."""

    mean: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        mean = sum(values) / len(values) if values else 0.0
        p50, p95, p99 = (percentile(values, q) for q in PERCENTILES)
        return cls(mean=mean, p50=p50, p95=p95, p99=p99)

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "p50": self.p50, "p95": self.p95, "p99": self.p99}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Distribution:
        return cls(**{key: float(data[key]) for key in ("mean", "p50", "p95", "p99")})


@dataclass(frozen=True)
class LevelResult:
    """What one concurrency (or request-rate) level measured."""

    mode: Mode
    level: float  # concurrent requests, or requests/s offered
    requests: int
    completed: int
    failed: int
    duration_s: float
    request_rate: float
    output_throughput: float  # output tokens/s
    total_token_throughput: float
    mean_input_tokens: float
    mean_output_tokens: float
    ttft: Distribution
    itl: Distribution
    tpot: Distribution
    e2e: Distribution
    goodput: float  # requests/s within the SLO, request by request
    meets_slo: bool
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "level": self.level,
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "duration_s": self.duration_s,
            "request_rate": self.request_rate,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "mean_input_tokens": self.mean_input_tokens,
            "mean_output_tokens": self.mean_output_tokens,
            "ttft_s": self.ttft.to_json(),
            "itl_s": self.itl.to_json(),
            "tpot_s": self.tpot.to_json(),
            "e2e_s": self.e2e.to_json(),
            "goodput": self.goodput,
            "meets_slo": self.meets_slo,
            "errors": list(self.errors),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LevelResult:
        return cls(
            mode=data["mode"],
            level=float(data["level"]),
            requests=int(data["requests"]),
            completed=int(data["completed"]),
            failed=int(data["failed"]),
            duration_s=float(data["duration_s"]),
            request_rate=float(data["request_rate"]),
            output_throughput=float(data["output_throughput"]),
            total_token_throughput=float(data["total_token_throughput"]),
            mean_input_tokens=float(data["mean_input_tokens"]),
            mean_output_tokens=float(data["mean_output_tokens"]),
            ttft=Distribution.from_json(data["ttft_s"]),
            itl=Distribution.from_json(data["itl_s"]),
            tpot=Distribution.from_json(data["tpot_s"]),
            e2e=Distribution.from_json(data["e2e_s"]),
            goodput=float(data["goodput"]),
            meets_slo=bool(data["meets_slo"]),
            errors=tuple(data.get("errors", ())),
        )


def summarize(
    outcomes: Sequence[RequestOutcome], duration_s: float, *, mode: Mode, level: float, slo: Slo
) -> LevelResult:
    """One level's figures from its requests, by vLLM's definitions (see the module's doc)."""
    done = [outcome for outcome in outcomes if outcome.ok]
    ttfts = [outcome.ttft for outcome in done]
    e2es = [outcome.latency for outcome in done]
    itls = [gap for outcome in done for gap in outcome.itl]
    tpots: list[float] = []
    good = 0
    output_total = 0
    input_total = 0
    for outcome in done:
        tokens = outcome.output_tokens
        output_total += tokens
        input_total += outcome.prompt_tokens
        tpot = (outcome.latency - outcome.ttft) / (tokens - 1) if tokens > 1 else 0.0
        if tokens > 1:
            tpots.append(tpot)
        if outcome.ttft <= slo.ttft_p95_s and tpot <= slo.itl_p95_s:
            good += 1
    span = duration_s if duration_s > 0 else math.inf
    ttft, itl = Distribution.of(ttfts), Distribution.of(itls)
    errors = tuple(dict.fromkeys(o.error for o in outcomes if not o.ok and o.error))
    return LevelResult(
        mode=mode,
        level=level,
        requests=len(outcomes),
        completed=len(done),
        failed=len(outcomes) - len(done),
        duration_s=duration_s,
        request_rate=len(done) / span,
        output_throughput=output_total / span,
        total_token_throughput=(output_total + input_total) / span,
        mean_input_tokens=input_total / len(done) if done else 0.0,
        mean_output_tokens=output_total / len(done) if done else 0.0,
        ttft=ttft,
        itl=itl,
        tpot=Distribution.of(tpots),
        e2e=Distribution.of(e2es),
        goodput=good / span,
        meets_slo=bool(done)
        and len(done) == len(outcomes)
        and ttft.p95 <= slo.ttft_p95_s
        and itl.p95 <= slo.itl_p95_s,
        errors=errors[:_ERRORS_KEPT],
    )


@dataclass(frozen=True)
class EngineSetup:
    """What the benchmarked engine ran, from the profile: what `recommend` matches a measurement
    on (the model repo and quantization) and what `tune` varies (the batch knobs, the KV dtype)."""

    repo: str
    quantization: str
    engine: str = "vllm"
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "quantization": self.quantization,
            "engine": self.engine,
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "kv_cache_dtype": self.kv_cache_dtype,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineSetup:
        seqs, batched = data.get("max_num_seqs"), data.get("max_num_batched_tokens")
        return cls(
            repo=str(data["repo"]),
            quantization=str(data["quantization"]),
            engine=str(data.get("engine", "vllm")),
            tensor_parallel_size=int(data.get("tensor_parallel_size", 1)),
            max_num_seqs=None if seqs is None else int(seqs),
            max_num_batched_tokens=None if batched is None else int(batched),
            kv_cache_dtype=str(data.get("kv_cache_dtype", "auto")),
        )


@dataclass(frozen=True)
class BoxFacts:
    """The box a run measured: its GPUs' NVML names (joined as `fit.gpu_target_from_box`
    joins them) and how many; None on a CPU target."""

    gpu_name: str | None = None
    gpu_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"gpu_name": self.gpu_name, "gpu_count": self.gpu_count}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoxFacts:
        name = data.get("gpu_name")
        return cls(gpu_name=None if name is None else str(name), gpu_count=int(data["gpu_count"]))


@dataclass(frozen=True)
class BenchRun:
    """One `appliance bench`: the box, the workload, and every level's result."""

    profile: str
    model: str
    endpoint: str  # chat | completions
    url: str
    started_at: str  # ISO 8601, UTC
    input_len: int
    output_len: int
    slo: Slo
    levels: tuple[LevelResult, ...]
    engine_version: str | None = None
    image: str | None = None
    driver: str | None = None
    setup: EngineSetup | None = None  # absent in results kept before calibration (#18 point 4)
    box: BoxFacts | None = None
    # A recorded sample's file name when the prompts came from one (`bench --prompts`); the
    # lengths are then the measured means.
    prompts: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "profile": self.profile,
            "model": self.model,
            "endpoint": self.endpoint,
            "url": self.url,
            "started_at": self.started_at,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "slo": self.slo.to_json(),
            "engine_version": self.engine_version,
            "image": self.image,
            "driver": self.driver,
            "setup": None if self.setup is None else self.setup.to_json(),
            "box": None if self.box is None else self.box.to_json(),
            "prompts": self.prompts,
            "levels": [level.to_json() for level in self.levels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchRun:
        return cls(
            profile=data["profile"],
            model=data["model"],
            endpoint=data["endpoint"],
            url=data["url"],
            started_at=data["started_at"],
            input_len=int(data["input_len"]),
            output_len=int(data["output_len"]),
            slo=Slo(**data["slo"]),
            levels=tuple(LevelResult.from_json(level) for level in data["levels"]),
            engine_version=data.get("engine_version"),
            image=data.get("image"),
            driver=data.get("driver"),
            setup=EngineSetup.from_json(data["setup"]) if data.get("setup") else None,
            box=BoxFacts.from_json(data["box"]) if data.get("box") else None,
            prompts=data.get("prompts"),
        )

    @property
    def workload(self) -> str:
        """The requests in a few words: "1024 in / 128 out tokens", or the sample's means."""
        lengths = f"{self.input_len} in / {self.output_len} out tokens"
        return lengths if self.prompts is None else f"{self.prompts}: {lengths} on average"

    @property
    def level_name(self) -> str:
        mode = self.levels[0].mode if self.levels else "concurrency"
        return "users" if mode == "concurrency" else "req/s offered"


# ---------------------------------------------------------------------------------- text


def level_label(level: LevelResult) -> str:
    return f"{level.level:g}" if level.mode == "concurrency" else f"{level.level:g}/s"


def table_rows(run: BenchRun) -> list[list[str]]:
    """The report's table as text cells, header first (the CLI draws it with rich)."""
    ms = 1000.0
    rows = [
        [
            run.level_name,
            "req/s",
            "out tok/s",
            "TTFT p50/p95/p99 ms",
            "ITL p50/p95/p99 ms",
            "E2E p50/p95/p99 s",
            "errors",
            "goodput req/s",
            "SLO",
        ]
    ]
    for level in run.levels:
        rows.append(
            [
                level_label(level),
                f"{level.request_rate:.2f}",
                f"{level.output_throughput:,.1f}",
                _three(level.ttft, ms, "{:.0f}"),
                _three(level.itl, ms, "{:.1f}"),
                _three(level.e2e, 1.0, "{:.2f}"),
                f"{level.failed}/{level.requests}",
                f"{level.goodput:.2f}",
                "met" if level.meets_slo else "missed",
            ]
        )
    return rows


def _three(values: Distribution, scale: float, form: str) -> str:
    return " / ".join(form.format(v * scale) for v in (values.p50, values.p95, values.p99))


_BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(value: float, top: float, width: int) -> str:
    """A horizontal bar of `width` cells at most, in eighths of a cell."""
    if top <= 0 or value <= 0 or not math.isfinite(value):
        return ""
    eighths = round(min(1.0, value / top) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_BLOCKS[rest] if rest else "")


def text_chart(run: BenchRun, width: int = 40) -> str:
    """Output tokens/s and TTFT p50 against the level, as two columns of unicode bars."""
    if not run.levels:
        return ""
    top_tps = max(level.output_throughput for level in run.levels)
    top_ttft = max(level.ttft.p50 for level in run.levels)
    label = max(len(level_label(level)) for level in run.levels)
    lines = [f"{'':>{label}}  output tokens/s{'':<{width - 9}}TTFT p50"]
    for level in run.levels:
        tps = f"{bar(level.output_throughput, top_tps, width):<{width}} "
        tps += f"{level.output_throughput:>9,.0f}"
        ttft = f"{bar(level.ttft.p50, top_ttft, width // 2):<{width // 2}} "
        ttft += f"{level.ttft.p50 * 1000:,.0f} ms"
        lines.append(f"{level_label(level):>{label}}  {tps}  {ttft}")
    return "\n".join(lines)


def headline(run: BenchRun) -> str:
    """One line a person can quote: the best level that meets the SLO."""
    meeting = [level for level in run.levels if level.meets_slo]
    if not meeting:
        return f"no level met the SLO (TTFT p95 ≤ {run.slo.ttft_p95_s:g} s, ITL p95 ≤ " + (
            f"{run.slo.itl_p95_s * 1000:g} ms)"
        )
    best = max(meeting, key=lambda level: level.output_throughput)
    unit = "users" if best.mode == "concurrency" else "req/s offered"
    return (
        f"best within the SLO: {best.output_throughput:,.0f} output tokens/s at "
        f"{best.level:g} {unit} (TTFT p95 {best.ttft.p95 * 1000:,.0f} ms, "
        f"ITL p95 {best.itl.p95 * 1000:,.1f} ms)"
    )


# ---------------------------------------------------------------------------------- SVG / HTML

_SVG_W, _SVG_H = 720, 360
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 70, 70, 40, 50
_TPS_COLOUR, _TTFT_COLOUR = "#1f77b4", "#d62728"


def _nice_top(value: float) -> float:
    """A round axis top at or above `value` (1, 2, 2.5, 5 times a power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def svg_chart(run: BenchRun) -> str:
    """Output tokens/s (bars, left axis) and TTFT p50 (line, right axis) against the level."""
    width, height = _SVG_W, _SVG_H
    plot_w = width - _PAD_L - _PAD_R
    plot_h = height - _PAD_T - _PAD_B
    levels = run.levels
    top_tps = _nice_top(max((level.output_throughput for level in levels), default=0.0))
    top_ttft = _nice_top(max((level.ttft.p50 * 1000 for level in levels), default=0.0))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{html.escape(run.profile)}: output tokens/s and TTFT p50</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    for tick in range(5):
        fraction = tick / 4
        y = _PAD_T + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_PAD_L + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{_TPS_COLOUR}">'
            f"{top_tps * fraction:,.0f}</text>"
        )
        parts.append(
            f'<text x="{_PAD_L + plot_w + 6}" y="{y + 4:.1f}" fill="{_TTFT_COLOUR}">'
            f"{top_ttft * fraction:,.0f}</text>"
        )
    slot = plot_w / max(1, len(levels))
    points = []
    for index, level in enumerate(levels):
        centre = _PAD_L + slot * (index + 0.5)
        bar_h = plot_h * level.output_throughput / top_tps
        parts.append(
            f'<rect x="{centre - slot * 0.3:.1f}" y="{_PAD_T + plot_h - bar_h:.1f}" '
            f'width="{slot * 0.6:.1f}" height="{bar_h:.1f}" fill="{_TPS_COLOUR}" '
            f'fill-opacity="0.8"><title>{level.output_throughput:,.1f} tok/s</title></rect>'
        )
        parts.append(
            f'<text x="{centre:.1f}" y="{_PAD_T + plot_h + 18}" text-anchor="middle">'
            f"{html.escape(level_label(level))}</text>"
        )
        y = _PAD_T + plot_h * (1 - level.ttft.p50 * 1000 / top_ttft)
        points.append(f"{centre:.1f},{y:.1f}")
    if points:
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{_TTFT_COLOUR}" '
            'stroke-width="2"/>'
        )
        for point, level in zip(points, levels, strict=True):
            cx, cy = point.split(",")
            parts.append(
                f'<circle cx="{cx}" cy="{cy}" r="4" fill="{_TTFT_COLOUR}">'
                f"<title>TTFT p50 {level.ttft.p50 * 1000:,.0f} ms</title></circle>"
            )
    parts += [
        f'<text x="{_PAD_L}" y="{_PAD_T - 14}" fill="{_TPS_COLOUR}">output tokens/s</text>',
        f'<text x="{_PAD_L + plot_w}" y="{_PAD_T - 14}" text-anchor="end" '
        f'fill="{_TTFT_COLOUR}">TTFT p50 (ms)</text>',
        f'<text x="{_PAD_L + plot_w / 2:.1f}" y="{height - 10}" text-anchor="middle">'
        f"{html.escape(run.level_name)}</text>",
        "</svg>",
    ]
    return "\n".join(parts)


def html_report(run: BenchRun) -> str:
    """A self-contained HTML page: the facts, the chart (inline SVG) and the table; no scripts."""
    rows = table_rows(run)
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows[1:]
    )
    facts = [
        ("profile", run.profile),
        ("model", run.model),
        ("started", run.started_at),
        ("endpoint", f"{run.endpoint} at {run.url}"),
        ("workload", run.workload),
        (
            "SLO",
            f"TTFT p95 ≤ {run.slo.ttft_p95_s:g} s, ITL p95 ≤ {run.slo.itl_p95_s * 1000:g} ms",
        ),
        ("engine", run.engine_version or "unknown"),
        ("image", run.image or "unknown"),
        ("driver", run.driver or "unknown"),
    ]
    fact_rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in facts
    )
    title = html.escape(f"appliance bench {run.profile} {run.started_at}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}"
        "</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(headline(run))}</p>"
        f"<table>{fact_rows}</table>"
        f"{svg_chart(run)}"
        f"<table><tr>{head}</tr>{body}</table>"
        "</body></html>\n"
    )
