"""`appliance export grafana`: one dashboard over vLLM, TEI, the gateway and the GPUs (DCGM).

Every query names metrics by the names the services really export: vLLM 0.32's (`vllm:*`; note
`vllm:kv_cache_usage_perc`, which replaced `gpu_cache_usage_perc`), TEI's router (`te_*`, whose
counters have no `_total`), SGLang 0.5.21's (`sglang:*`, for a profile with `engine.kind: sglang`;
each chat-engine query is `vLLM's or SGLang's`, so one dashboard serves either engine), the
gateway's (`appliance_gateway_*`) and dcgm-exporter's default
counters (`DCGM_FI_DEV_*`). The tests parse every expression and check each metric against those
sources. The data source is a dashboard variable, so the file imports into any Grafana.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.fileio import write_output as write_text

__all__ = [
    "DASHBOARD_UID",
    "PANELS",
    "Panel",
    "dashboard",
    "grafana_export",
    "queries",
]

DASHBOARD_UID: Final = "llm-appliance"
_DS: Final = {"type": "prometheus", "uid": "${datasource}"}
_CHAT_ROUTES: Final = 'route=~"/v1/chat/completions|/v1/completions"'
_RATE: Final = "[$__rate_interval]"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{_RATE})))"


def _engine(vllm: str, sglang: str) -> str:
    """The chat engine's figure, from vLLM's series or, where there are none, SGLang's."""
    return f"{vllm} or {sglang}"


def _engine_quantile(q: float, vllm: str, sglang: str) -> str:
    return _engine(_quantile(q, vllm), _quantile(q, sglang))


@dataclass(frozen=True)
class Panel:
    """One time-series (or stat) panel: a title, a unit, and (expression, legend) pairs."""

    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]
    description: str = ""
    kind: str = "timeseries"
    max_value: float | None = None


PANELS: Final[tuple[Panel, ...]] = (
    Panel(
        "Time to first token (p50, p95)",
        "s",
        (
            (_quantile(0.5, "appliance_gateway_ttft_seconds"), "users p50 (gateway)"),
            (_quantile(0.95, "appliance_gateway_ttft_seconds"), "users p95 (gateway)"),
            (
                _engine_quantile(
                    0.5, "vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"
                ),
                "engine p50",
            ),
            (
                _engine_quantile(
                    0.95, "vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"
                ),
                "engine p95",
            ),
        ),
        "What users feel as the model thinking, measured where the gateway sends the first byte, "
        "beside vLLM's server-side figure (the gap is queueing and transport before the engine); "
        "interactive use wants p95 under a second or two.",
    ),
    Panel(
        "End-to-end latency at the gateway (p50, p95)",
        "s",
        (
            (_quantile(0.5, "appliance_gateway_e2e_seconds"), "users p50 (gateway)"),
            (_quantile(0.95, "appliance_gateway_e2e_seconds"), "users p95 (gateway)"),
            (
                _engine_quantile(
                    0.5, "vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"
                ),
                "engine p50",
            ),
            (
                _engine_quantile(
                    0.95, "vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"
                ),
                "engine p95",
            ),
        ),
        "A request's arrival at the gateway to its last byte sent, beside vLLM's own e2e.",
    ),
    Panel(
        "Inter-token latency (p50, p95)",
        "s",
        (
            (
                _engine_quantile(
                    0.5, "vllm:inter_token_latency_seconds", "sglang:inter_token_latency_seconds"
                ),
                "p50",
            ),
            (
                _engine_quantile(
                    0.95, "vllm:inter_token_latency_seconds", "sglang:inter_token_latency_seconds"
                ),
                "p95",
            ),
        ),
        "Time between streamed tokens; spikes mean KV-cache pressure or scheduler contention.",
    ),
    Panel(
        "Tokens per second",
        "short",
        (
            (
                _engine(
                    f"sum(rate(vllm:prompt_tokens_total{_RATE}))",
                    f"sum(rate(sglang:prompt_tokens_total{_RATE}))",
                ),
                "prompt",
            ),
            (
                _engine(
                    f"sum(rate(vllm:generation_tokens_total{_RATE}))",
                    f"sum(rate(sglang:generation_tokens_total{_RATE}))",
                ),
                "generated",
            ),
        ),
        "Throughput; the cost per token falls as this rises on the same box.",
    ),
    Panel(
        "Requests waiting and running",
        "short",
        (
            (_engine("sum(vllm:num_requests_waiting)", "sum(sglang:num_queue_reqs)"), "waiting"),
            (_engine("sum(vllm:num_requests_running)", "sum(sglang:num_running_reqs)"), "running"),
        ),
        "A queue that keeps growing means the box is saturated: the gateway's auto fallback and "
        "KEDA scale on `vllm:num_requests_waiting`.",
    ),
    Panel(
        "KV cache usage",
        "percentunit",
        ((_engine("max(vllm:kv_cache_usage_perc)", "max(sglang:token_usage)"), "KV cache used"),),
        "Share of vLLM's KV cache in use (1 = full); near 1, requests are preempted.",
        max_value=1.0,
    ),
    Panel(
        "End-to-end latency and queue time (p95)",
        "s",
        (
            (
                _engine_quantile(
                    0.95, "vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"
                ),
                "end-to-end p95",
            ),
            (_quantile(0.95, "vllm:request_queue_time_seconds"), "queue time p95"),
        ),
    ),
    Panel(
        "GPU utilisation",
        "percent",
        (("DCGM_FI_DEV_GPU_UTIL", "GPU {{gpu}}"),),
        "Idle GPU is money spent on capacity, not usage (see `appliance cost`).",
        max_value=100.0,
    ),
    Panel(
        "GPU memory used",
        "percentunit",
        (("DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)", "GPU {{gpu}}"),),
        "vLLM takes gpu_memory_utilization of each GPU by design; above that, something else "
        "is filling it.",
        max_value=1.0,
    ),
    Panel(
        "GPU temperature",
        "celsius",
        (("DCGM_FI_DEV_GPU_TEMP", "GPU {{gpu}}"),),
        "Above about 80 °C GPUs throttle and throughput drops.",
    ),
    Panel(
        "GPU power draw",
        "watt",
        (("DCGM_FI_DEV_POWER_USAGE", "GPU {{gpu}}"),),
        "Measured power: what electricity costs in `appliance cost` are based on.",
    ),
    Panel(
        "Fallback share",
        "percentunit",
        (
            (
                f'sum(rate(appliance_gateway_requests_total{{destination="remote",{_CHAT_ROUTES}}}'
                f"{_RATE})) / sum(rate(appliance_gateway_requests_total"
                f'{{destination=~"local|remote",{_CHAT_ROUTES}}}{_RATE}))',
                "sent to the remote API",
            ),
        ),
        "Share of chat requests the gateway sent to the remote API: paid per token.",
        max_value=1.0,
    ),
    Panel(
        "Fallbacks by reason",
        "reqps",
        ((f"sum by (reason) (rate(appliance_gateway_fallbacks_total{_RATE}))", "{{reason}}"),),
        "Why requests left the box: queue, unhealthy, connect_failed, mode_always, …",
    ),
    Panel(
        "Gateway requests by destination and outcome",
        "reqps",
        (
            (
                f"sum by (destination, outcome) (rate(appliance_gateway_requests_total{_RATE}))",
                "{{destination}} {{outcome}}",
            ),
        ),
    ),
    Panel(
        "Embeddings (TEI)",
        "short",
        (
            (f"sum(rate(te_request_count{_RATE}))", "requests/s"),
            ("sum(te_queue_size)", "queued"),
        ),
    ),
)


def _panel(index: int, panel: Panel) -> dict[str, Any]:
    width, height = 12, 8
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0}
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(_DS),
        "gridPos": {"h": height, "w": width, "x": (index % 2) * width, "y": (index // 2) * height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "datasource": dict(_DS),
                "expr": expr,
                "legendFormat": legend,
                "refId": chr(ord("A") + position),
            }
            for position, (expr, legend) in enumerate(panel.targets)
        ],
    }


def dashboard(title: str = "llm-appliance") -> dict[str, Any]:
    """The dashboard JSON model (Grafana 10+/11, schemaVersion 39)."""
    return {
        "uid": DASHBOARD_UID,
        "title": title,
        "description": "vLLM, TEI, the llm-appliance gateway and the GPUs (DCGM exporter).",
        "tags": ["llm-appliance", "vllm", "gpu"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": [_panel(index, panel) for index, panel in enumerate(PANELS)],
    }


def queries(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard document."""
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def grafana_export(*, output: Path | None = None, title: str = "llm-appliance") -> str:
    """`appliance export grafana [-o FILE]`: the dashboard JSON text; also written to `output`."""
    text = json.dumps(dashboard(title), indent=2, ensure_ascii=False) + "\n"
    if output is not None:
        write_text(output, text)
    return text
