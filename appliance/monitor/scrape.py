"""vLLM's, TEI's and the gateway's Prometheus text, read into a few named numbers. Pure.

The text is parsed by `prometheus_client`'s own parser, never by hand. What the engines call
things, checked against their sources and a real scrape:

- vLLM (v1 engine; `shared/reference/vllm-0.32-cpu-metrics.txt` is a real 0.32 scrape):
  gauges `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`
  (0..1; before v0.10 `vllm:gpu_cache_usage_perc`); counters `vllm:prompt_tokens_total`,
  `vllm:generation_tokens_total`, `vllm:prefix_cache_queries_total` / `_hits_total` (earlier v1
  releases `vllm:gpu_prefix_cache_*`), `vllm:num_preemptions_total`,
  `vllm:request_success_total{finished_reason}` (stop, length, abort, error, repetition);
  histograms `vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds` (before
  v0.11 `vllm:time_per_output_token_seconds`), `vllm:e2e_request_latency_seconds`,
  `vllm:request_queue_time_seconds`. Series carry `model_name` and `engine` labels; with data
  parallelism there is one series per engine, and they are added up (KV usage: the fullest).
- SGLang (`spec.engine.kind: sglang`, run with `--enable-metrics`; names, types and labels of
  sglang 0.5.21 python/sglang/srt/observability/metrics_collector.py): scheduler gauges
  `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage` (0..1, the KV pool's
  used share) and `sglang:cache_hit_rate` (0..1), one series per tp/pp/dp rank; tokenizer-side
  counters `sglang:prompt_tokens_total`, `sglang:generation_tokens_total`,
  `sglang:cached_tokens_total{cache_source}` (prompt tokens served from the prefix cache),
  `sglang:num_requests_total`; histograms `sglang:time_to_first_token_seconds`,
  `sglang:inter_token_latency_seconds`, `sglang:e2e_request_latency_seconds`. Series carry
  `model_name`. SGLang fills the chat engine's role, so its reading's kind is "vllm" (the role)
  and the monitor's names mean the same as for vLLM: prefix-cache queries are prompt tokens and
  hits the cached ones, as vLLM counts them.
- TEI (router/src and core/src of text-embeddings-inference 1.x; the Rust `metrics` crate, so
  counters have no `_total` suffix): counters `te_request_count`, `te_request_success`,
  `te_request_failure{err}`; gauge `te_queue_size`; histograms `te_request_duration`,
  `te_request_queue_duration`, `te_request_inference_duration`, `te_batch_next_size`. TEI has
  no gauge of requests in a running batch, so "running" is unknown for it.
- The appliance's gateway (`appliance.gateway.app.GatewayMetrics`): the counter
  `appliance_gateway_requests_total{route,destination,outcome}`, destination `local`, `remote`
  or `none` (refused before routing). Requests of every route and outcome are counted by where
  they were sent; `appliance.usage_store` reads the same family (chat routes only, for pricing).

What must stay true: a metric an engine does not expose is absent from the reading (the monitor
shows "-"), never 0. The one exception is a `_Wanted` marked `zero_when_unseen`: the gateway
creates a labelled series on its first request of that kind, so a family that is there without
the series has counted none yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from appliance.monitor.maths import Histogram
from appliance.vocabulary import EngineKind, Role

_T = TypeVar("_T")

Aggregate = Literal["sum", "max"]

GATEWAY_REQUESTS_METRIC: Final = "appliance_gateway_requests"  # a Counter: exposed with _total
"""The gateway's request counter family; the one place its name is written outside the gateway."""
GATEWAY_TTFT_METRIC: Final = "appliance_gateway_ttft_seconds"
GATEWAY_E2E_METRIC: Final = "appliance_gateway_e2e_seconds"
"""The gateway's user-felt latency histograms (`gateway.app.GatewayMetrics`)."""
GATEWAY_RECENT_TTFT_METRIC: Final = "appliance_gateway_recent_ttft_seconds"
GATEWAY_RECENT_E2E_METRIC: Final = "appliance_gateway_recent_e2e_seconds"
"""The same answers' last minute as summaries, exact (`gateway.latency.RecentLatency`)."""
_GATEWAY_PREFIX: Final = "appliance_gateway_"
# Several chat models (spec.switching; `gateway.app._SwitchingCollector`): per model.
GATEWAY_MODEL_STATE: Final = "appliance_gateway_model_state"  # 1 on the current state
GATEWAY_MODEL_IN_FLIGHT: Final = "appliance_gateway_model_in_flight"
GATEWAY_MODEL_HELD: Final = "appliance_gateway_model_held"
GATEWAY_MODEL_PINNED: Final = "appliance_gateway_model_pinned"
GATEWAY_MODEL_WAKES: Final = "appliance_gateway_model_wakes"  # a Counter
GATEWAY_MODEL_WAKE_SECONDS: Final = "appliance_gateway_model_wake_seconds"
GATEWAY_SWITCHES: Final = "appliance_gateway_model_switches"  # a Counter
MODEL_WAKES_KEY: Final = "model_wakes:"
"""A reading's counter `model_wakes:NAME`: the switches that woke model NAME."""
_SWITCHING_GAUGES: Final = (
    GATEWAY_MODEL_STATE,
    GATEWAY_MODEL_IN_FLIGHT,
    GATEWAY_MODEL_HELD,
    GATEWAY_MODEL_PINNED,
    GATEWAY_MODEL_WAKE_SECONDS,
)


class MetricsFormatError(ValueError):
    """The text is not Prometheus exposition, or holds none of vLLM's, TEI's or the gateway's."""


@dataclass(frozen=True)
class SwitchedModelReading:
    """One of several chat models as the gateway's /metrics shows it; None: not on the page."""

    name: str
    state: str | None = None
    in_flight: float | None = None
    held: float | None = None
    pinned: bool = False
    wake_seconds: float | None = None  # the last switch to it, all of it


@dataclass(frozen=True)
class MetricsReading:
    """One scrape, under the monitor's own names (see `VLLM` and `TEI` for the mapping).

    `sources` says which engine metric each name was read from, for `appliance scrape` and
    for debugging an engine whose metric names changed.
    """

    kind: Role
    model_names: tuple[str, ...] = ()
    gauges: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    # Which server filled the chat role, told from its metric names (None for TEI, gateway).
    engine: EngineKind | None = None
    # The gateway's switched chat models (spec.switching), by name; () without switching.
    switched: tuple[SwitchedModelReading, ...] = ()
    # Quantiles an exporter computed itself over its own recent window (a Prometheus summary),
    # by the monitor's name and then q: exact where a histogram's are estimates, so they win
    # over the histogram of the same name. None: the window held no observation (NaN).
    quantiles: Mapping[str, Mapping[float, float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Wanted:
    """One quantity: the families it may be read from (first found wins) and how to combine."""

    key: str
    names: tuple[str, ...]
    aggregate: Aggregate = "sum"
    labels: Mapping[str, str] = field(default_factory=dict)  # only series with these labels
    zero_when_unseen: bool = False  # a counter family present without these series counts 0


@dataclass(frozen=True)
class _EngineMetrics:
    gauges: tuple[_Wanted, ...]
    counters: tuple[_Wanted, ...]
    histograms: tuple[_Wanted, ...]
    summaries: tuple[_Wanted, ...] = ()


VLLM = _EngineMetrics(
    gauges=(
        _Wanted("running_requests", ("vllm:num_requests_running",)),
        _Wanted("waiting_requests", ("vllm:num_requests_waiting",)),
        _Wanted("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "max"),
    ),
    counters=(
        _Wanted("prompt_tokens", ("vllm:prompt_tokens",)),
        _Wanted("generation_tokens", ("vllm:generation_tokens",)),
        _Wanted("requests", ("vllm:request_success",)),
        _Wanted("requests_failed", ("vllm:request_success",), labels={"finished_reason": "error"}),
        _Wanted(
            "prefix_cache_queries", ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
        ),
        _Wanted("prefix_cache_hits", ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")),
        _Wanted("preemptions", ("vllm:num_preemptions",)),
    ),
    histograms=(
        _Wanted("ttft", ("vllm:time_to_first_token_seconds",)),
        _Wanted("itl", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")),
        _Wanted("e2e", ("vllm:e2e_request_latency_seconds",)),
        _Wanted("queue_time", ("vllm:request_queue_time_seconds",)),
    ),
)

SGLANG = _EngineMetrics(
    gauges=(
        _Wanted("running_requests", ("sglang:num_running_reqs",)),
        _Wanted("waiting_requests", ("sglang:num_queue_reqs",)),
        _Wanted("kv_cache_usage", ("sglang:token_usage",), "max"),
        _Wanted("prefix_cache_hit_rate", ("sglang:cache_hit_rate",), "max"),
    ),
    counters=(
        _Wanted("prompt_tokens", ("sglang:prompt_tokens",)),
        _Wanted("generation_tokens", ("sglang:generation_tokens",)),
        _Wanted("requests", ("sglang:num_requests",)),
        _Wanted("prefix_cache_queries", ("sglang:prompt_tokens",)),
        _Wanted("prefix_cache_hits", ("sglang:cached_tokens",)),
    ),
    histograms=(
        _Wanted("ttft", ("sglang:time_to_first_token_seconds",)),
        _Wanted("itl", ("sglang:inter_token_latency_seconds",)),
        _Wanted("e2e", ("sglang:e2e_request_latency_seconds",)),
    ),
)
_SGLANG_PREFIX: Final = "sglang:"

TEI = _EngineMetrics(
    gauges=(_Wanted("waiting_requests", ("te_queue_size",)),),
    counters=(
        _Wanted("requests", ("te_request_count",)),
        _Wanted("requests_succeeded", ("te_request_success",)),
        _Wanted("requests_failed", ("te_request_failure",)),
    ),
    histograms=(
        _Wanted("e2e", ("te_request_duration",)),
        _Wanted("queue_time", ("te_request_queue_duration",)),
        _Wanted("inference_time", ("te_request_inference_duration",)),
        _Wanted("batch_size", ("te_batch_next_size",)),
    ),
)

GATEWAY = _EngineMetrics(
    gauges=(),
    counters=(
        _Wanted("requests", (GATEWAY_REQUESTS_METRIC,), zero_when_unseen=True),
        _Wanted(
            "local_requests",
            (GATEWAY_REQUESTS_METRIC,),
            labels={"destination": "local"},
            zero_when_unseen=True,
        ),
        _Wanted(
            "remote_requests",
            (GATEWAY_REQUESTS_METRIC,),
            labels={"destination": "remote"},
            zero_when_unseen=True,
        ),
        _Wanted("model_switches", (GATEWAY_SWITCHES,)),
    ),
    # What users feel, measured where their bytes leave (issue #17): all destinations and
    # models together. The monitor's TTFT/e2e quantiles of the gateway service come from these.
    histograms=(
        _Wanted("ttft", (GATEWAY_TTFT_METRIC,)),
        _Wanted("e2e", (GATEWAY_E2E_METRIC,)),
    ),
    # The same answers' last minute, exactly (`gateway.latency.RecentLatency`): what the monitor
    # shows for the gateway, the histograms staying for Prometheus.
    summaries=(
        _Wanted("ttft", (GATEWAY_RECENT_TTFT_METRIC,)),
        _Wanted("e2e", (GATEWAY_RECENT_E2E_METRIC,)),
    ),
)

_SPECS: Final[Mapping[Role, _EngineMetrics]] = {"vllm": VLLM, "tei": TEI, "gateway": GATEWAY}

# vLLM's API server (prometheus-fastapi-instrumentator): what clients saw, 5xx included.
_HTTP_REQUESTS = "http_requests"
_API_PREFIX = "/v1/"


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(name) == value for name, value in wanted.items())


def _first_of(
    families: Mapping[str, Metric],
    wanted: Sequence[_Wanted],
    metric_type: str,
    read: Callable[[Metric, _Wanted], _T | None],
    sources: dict[str, str],
) -> dict[str, _T]:
    """Each wanted figure from the first of its names present with this type; `sources` records
    which name it came from."""
    found: dict[str, _T] = {}
    for want in wanted:
        for name in want.names:
            family = families.get(name)
            value = None if family is None or family.type != metric_type else read(family, want)
            if value is not None:
                found[want.key], sources[want.key] = value, name
                break
    return found


def _gauge(family: Metric, wanted: _Wanted) -> float | None:
    values = [
        sample.value
        for sample in family.samples
        if sample.name == family.name and _matches(sample.labels, wanted.labels)
    ]
    if not values:
        return None
    return max(values) if wanted.aggregate == "max" else math.fsum(values)


def _counter(family: Metric, wanted: _Wanted) -> float | None:
    # The parser names counter families without `_total` and their samples with it, whether the
    # exporter wrote the suffix (vLLM) or not (TEI).
    total = f"{family.name}_total"
    values = [
        sample.value
        for sample in family.samples
        if sample.name == total and _matches(sample.labels, wanted.labels)
    ]
    if values:
        return math.fsum(values)
    return 0.0 if wanted.zero_when_unseen else None


def _histogram(family: Metric) -> Histogram | None:
    buckets: dict[float, float] = {}
    total = count = 0.0
    for sample in family.samples:
        if sample.name.endswith("_bucket") and "le" in sample.labels:
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
        elif sample.name.endswith("_sum"):
            total += sample.value
        elif sample.name.endswith("_count"):
            count += sample.value
    if not buckets or not math.isinf(max(buckets)):
        return None
    bounds = tuple(sorted(buckets))
    return Histogram(bounds, tuple(buckets[bound] for bound in bounds), total, count)


def _wanted_names() -> dict[str, str]:
    """Every name a line of a metric read here may start with → that metric's family name.

    Names in `# TYPE`/`# HELP` lines and sample names both map: a counter `F` may appear as `F`
    or `F_total` (exporters differ), a histogram as `F_bucket`, `F_sum` and `F_count`, a summary
    as `F`, `F_sum` and `F_count`.
    """
    family_of = {_HTTP_REQUESTS: _HTTP_REQUESTS, f"{_HTTP_REQUESTS}_total": _HTTP_REQUESTS}
    family_of.update({name: name for name in _SWITCHING_GAUGES})
    family_of.update({GATEWAY_MODEL_WAKES: GATEWAY_MODEL_WAKES})
    family_of[f"{GATEWAY_MODEL_WAKES}_total"] = GATEWAY_MODEL_WAKES
    for spec in (*_SPECS.values(), SGLANG):
        for wanted in spec.gauges:
            family_of.update({name: name for name in wanted.names})
        for wanted in spec.counters:
            for name in wanted.names:
                family_of.update({name: name, f"{name}_total": name})
        for wanted in spec.histograms:
            for name in wanted.names:
                for suffix in ("", "_bucket", "_sum", "_count"):
                    family_of[f"{name}{suffix}"] = name
        for wanted in spec.summaries:
            for name in wanted.names:
                for suffix in ("", "_sum", "_count"):
                    family_of[f"{name}{suffix}"] = name
    return family_of


_FAMILY_OF = _wanted_names()


def _relevant_blocks(text: str) -> dict[str, str]:
    """The lines of each metric read here, by family, for the parser.

    A vLLM page is about 50 kB of which this monitor reads a tenth; parsing the rest once a
    second would cost more CPU than all the rest of the monitor. Lines are chosen by metric name
    only; every chosen line is parsed by prometheus_client.
    """
    blocks: dict[str, list[str]] = {}
    for line in text.splitlines():
        family = _FAMILY_OF.get(_line_name(line) or "")
        if family is not None:
            blocks.setdefault(family, []).append(line)
    return {family: "\n".join(lines) + "\n" for family, lines in blocks.items()}


def _line_name(line: str) -> str | None:
    """The metric name a sample, `# TYPE` or `# HELP` line is about; None for other comments."""
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) >= 3 and parts[1] in ("TYPE", "HELP") else None
    end = len(line)
    for stop in ("{", " "):
        position = line.find(stop)
        if 0 <= position < end:
            end = position
    return line[:end]


def family_samples(text: str, family: str) -> tuple[Sample, ...] | None:
    """The samples of one metric family on a `/metrics` page; None when the page has none.

    The one reader for callers that need a single family (the gateway's queue probe, the usage
    recorder): only that family's lines reach prometheus_client's parser, so a 50 kB vLLM page
    costs a scan, not a parse. A counter's family is its name without `_total`. Raises
    `MetricsFormatError` when those lines are not Prometheus text.
    """
    lines = [line for line in text.splitlines() if (_line_name(line) or "").startswith(family)]
    for metric in _parse("\n".join(lines) + "\n"):
        if metric.name == family:
            return tuple(metric.samples)
    return None


class ParseCache:
    """The families parsed from an endpoint's previous page, reused while their lines stay the same.

    An idle engine's counters and histograms do not change between scrapes; re-parsing them
    every second would be the monitor's largest cost. One cache per endpoint; it only ever holds
    the families of the last page, so it cannot grow.
    """

    def __init__(self) -> None:
        self._blocks: dict[str, tuple[str, tuple[Metric, ...]]] = {}

    def parse(self, blocks: dict[str, str]) -> dict[str, Metric]:
        kept: dict[str, tuple[str, tuple[Metric, ...]]] = {}
        for family, block in blocks.items():
            cached = self._blocks.get(family)
            if cached is None or cached[0] != block:
                cached = (block, _parse(block))
            kept[family] = cached
        self._blocks = kept
        return {metric.name: metric for _, metrics in kept.values() for metric in metrics}


def _parse(text: str) -> tuple[Metric, ...]:
    try:
        return tuple(text_string_to_metric_families(text))
    except ValueError as error:  # the parser's only complaint about malformed text
        msg = f"not Prometheus text: {error}"
        raise MetricsFormatError(msg) from error


def _summary_quantiles(family: Metric) -> dict[float, float | None] | None:
    """A summary's quantile samples, q to value (NaN, an empty window, as None); None for a
    summary with no quantiles (prometheus_client's own Summary has only a count and a sum)."""
    found: dict[float, float | None] = {}
    for sample in family.samples:
        if sample.name != family.name or "quantile" not in sample.labels:
            continue
        try:
            q = float(sample.labels["quantile"])
        except ValueError:
            continue
        found[q] = None if math.isnan(sample.value) else sample.value
    return found or None


def _families(text: str, cache: ParseCache | None) -> dict[str, Metric]:
    blocks = _relevant_blocks(text)
    if cache is not None:
        return cache.parse(blocks)
    return {metric.name: metric for metric in _parse("".join(blocks.values()))}


def detect_kind(names: Iterable[str]) -> Role | None:
    """vLLM, TEI or the appliance gateway from the metric names, or None for none of them.
    SGLang's names (`sglang:*`) are the chat engine's too: its role is "vllm"."""
    tei = gateway = False
    for name in names:
        if name.startswith(("vllm:", _SGLANG_PREFIX)):
            return "vllm"
        tei = tei or name.startswith("te_")
        gateway = gateway or name.startswith(_GATEWAY_PREFIX)
    if gateway:
        return "gateway"
    return "tei" if tei else None


def parse_metrics(
    text: str, kind: Role | None = None, cache: ParseCache | None = None
) -> MetricsReading:
    """Read a vLLM, TEI or gateway `/metrics` page; `kind` None means tell from the names.

    `cache` (one per endpoint) skips re-parsing the families whose lines did not change since
    that endpoint's previous page; the reading is the same with or without it.

    Raises `MetricsFormatError` for text that is not Prometheus exposition, holds no metric of
    any of them, or holds another's metrics than `kind`'s.
    """
    families = _families(text, cache)
    found = detect_kind(families)
    if found is None or (kind is not None and kind != found):
        expected = {
            "vllm": "vLLM (vllm:*)",
            "tei": "TEI (te_*)",
            "gateway": f"gateway ({_GATEWAY_PREFIX}*)",
            None: "vLLM, TEI or gateway",
        }[kind]
        seen = "" if found is None else f"; they look like {found}'s"
        msg = f"no {expected} metrics in the page{seen}"
        raise MetricsFormatError(msg)
    kind = found
    sglang = kind == "vllm" and any(name.startswith(_SGLANG_PREFIX) for name in families)
    spec = SGLANG if sglang else _SPECS[kind]
    sources: dict[str, str] = {}
    gauges = _first_of(families, spec.gauges, "gauge", _gauge, sources)
    counters = _first_of(families, spec.counters, "counter", _counter, sources)
    histograms = _first_of(
        families, spec.histograms, "histogram", lambda family, _: _histogram(family), sources
    )
    quantiles = _first_of(
        families, spec.summaries, "summary", lambda family, _: _summary_quantiles(family), sources
    )
    if kind == "vllm":
        _read_http_requests(families.get(_HTTP_REQUESTS), counters, sources)
    switched = _read_switched(families, counters) if kind == "gateway" else ()
    models = sorted(
        {
            sample.labels["model_name"]
            for name, family in families.items()
            if name.startswith(("vllm:", _SGLANG_PREFIX))
            for sample in family.samples
            if "model_name" in sample.labels
        }
    )
    return MetricsReading(
        kind=kind,
        model_names=tuple(models),
        gauges=gauges,
        counters=counters,
        histograms=histograms,
        sources=sources,
        engine=("sglang" if sglang else "vllm") if kind == "vllm" else None,
        switched=switched,
        quantiles=quantiles,
    )


def _read_switched(
    families: Mapping[str, Metric], counters: dict[str, float]
) -> tuple[SwitchedModelReading, ...]:
    """Each switched model's figures; its wakes go into `counters` as `model_wakes:NAME`, so
    the monitor's windows rate them like any counter."""
    by_model: dict[str, dict[str, float]] = {}
    states: dict[str, str] = {}
    for family_name in _SWITCHING_GAUGES:
        family = families.get(family_name)
        if family is None or family.type != "gauge":
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None:
                continue
            if family_name == GATEWAY_MODEL_STATE:
                if sample.value >= 1.0 and "state" in sample.labels:
                    states[model] = sample.labels["state"]
                by_model.setdefault(model, {})
            else:
                by_model.setdefault(model, {})[family_name] = sample.value
    wakes = families.get(GATEWAY_MODEL_WAKES)
    if wakes is not None and wakes.type == "counter":
        for sample in wakes.samples:
            model = sample.labels.get("model")
            if model is not None and sample.name == f"{GATEWAY_MODEL_WAKES}_total":
                counters[f"{MODEL_WAKES_KEY}{model}"] = sample.value
                by_model.setdefault(model, {})
    return tuple(
        SwitchedModelReading(
            name=model,
            state=states.get(model),
            in_flight=figures.get(GATEWAY_MODEL_IN_FLIGHT),
            held=figures.get(GATEWAY_MODEL_HELD),
            pinned=figures.get(GATEWAY_MODEL_PINNED, 0.0) >= 1.0,
            wake_seconds=figures.get(GATEWAY_MODEL_WAKE_SECONDS),
        )
        for model, figures in sorted(by_model.items())
    )


def _read_http_requests(
    family: Metric | None, counters: dict[str, float], sources: dict[str, str]
) -> None:
    """API requests and the 5xx among them, from vLLM's HTTP instrumentation when present."""
    if family is None or family.type != "counter":
        return
    total = errors = 0.0
    seen = False
    for sample in family.samples:
        if sample.name != f"{family.name}_total":
            continue
        if not sample.labels.get("handler", "").startswith(_API_PREFIX):
            continue
        seen = True
        total += sample.value
        if sample.labels.get("status", "").startswith("5"):
            errors += sample.value
    if seen:
        counters["http_requests"], counters["http_errors"] = total, errors
        sources["http_requests"] = sources["http_errors"] = f"{_HTTP_REQUESTS}_total"
