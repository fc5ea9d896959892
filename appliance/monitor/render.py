"""A snapshot as text for a terminal: `appliance status` prints it, `--watch` redraws it in place.

Plain text with Unicode sparklines, no colour codes, so it reads the same in a log file, over
SSH and inside rich's `Live` (which the CLI wraps it in). Pure: no IO.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence

from appliance.monitor.series import History
from appliance.monitor.snapshot import GpuStats, ServiceStats, Snapshot, SwitchedModelStats
from appliance.units import number, seconds

SPARK = "▁▂▃▄▅▆▇█"
DASH = "-"


def sparkline(values: Sequence[float | None], width: int = 20) -> str:
    """The last `width` values as bars scaled to their own range; gaps are spaces."""
    shown = list(values[-width:])
    known = [value for value in shown if value is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    span = high - low
    bars = []
    for value in shown:
        if value is None:
            bars.append(" ")
        elif span <= 0:
            bars.append(SPARK[0] if high == 0 else SPARK[len(SPARK) // 2])
        else:
            bars.append(SPARK[min(len(SPARK) - 1, int((value - low) / span * len(SPARK)))])
    return "".join(bars)


# A missing value prints as this text's own DASH, not the screens' en dash.
_number = functools.partial(number, missing=DASH)
_seconds = functools.partial(seconds, missing=DASH)


def _gib(value: int | None) -> str:
    return DASH if value is None else f"{value / 2**30:.1f}"


def _spark(history: History | None, key: str, width: int) -> str:
    if history is None:
        return ""
    line = sparkline(history.values(key), width)
    return f" {line}" if line else ""


def _gpu_lines(gpu: GpuStats, history: History | None, spark: int) -> list[str]:
    subject = f"gpu{gpu.index}"
    if gpu.error is not None:
        return [f"  {subject}  cannot be read: {gpu.error}"]
    memory = (
        f"mem {_gib(gpu.memory_used_bytes)}/{_gib(gpu.memory_total_bytes)} GiB "
        f"({_number(gpu.memory_used_pct, 0, '%')})"
    )
    power = f"{_number(gpu.power_draw_w)}/{_number(gpu.power_limit_w)} W"
    clocks = (
        f"SM {_number(gpu.sm_clock_mhz, 0, 'MHz')}, mem {_number(gpu.memory_clock_mhz, 0, 'MHz')}"
    )
    lines = [
        f"  {subject}  {gpu.name or 'unnamed GPU'}",
        f"        util {_number(gpu.utilization_gpu_pct, 0, '%')}"
        f"{_spark(history, f'{subject}.utilization_gpu_pct', spark)}   {memory}",
        f"        {_number(gpu.temperature_c, 0, '°C')}"
        f"{_spark(history, f'{subject}.temperature_c', spark)}"
        f"   {power}{_spark(history, f'{subject}.power_draw_w', spark)}   {clocks}",
    ]
    notes = []
    if gpu.throttle_reasons:
        notes.append(f"clocks limited by {', '.join(gpu.throttle_reasons)}")
    if gpu.ecc_errors_uncorrected:
        notes.append(f"{gpu.ecc_errors_uncorrected} uncorrectable ECC errors")
    if gpu.processes:
        names = ", ".join(
            f"{process.name or process.pid} ({_gib(process.used_memory_bytes)} GiB)"
            for process in gpu.processes
        )
        notes.append(f"processes: {names}")
    lines += [f"        {note}" for note in notes]
    return lines


def _service_lines(service: ServiceStats, history: History | None, spark: int) -> list[str]:
    name = service.name
    label = service.label
    health = "● healthy" if service.healthy else f"✗ DOWN: {service.health_error or 'unhealthy'}"
    models = f"   {', '.join(service.model_names)}" if service.model_names else ""
    container = ""
    if service.container_state is not None or service.restart_count is not None:
        container = (
            f"   container {service.container_state or DASH}, "
            f"{_number(service.restart_count)} restarts"
        )
    lines = [f"  {label:<8} {health}{models}   {service.url}{container}"]
    indent = " " * 11
    if service.metrics_error is not None and service.healthy:
        lines.append(f"{indent}metrics: {service.metrics_error}")
    if service.kind == "gateway":
        lines.append(
            f"{indent}requests/s local {_number(service.local_requests_per_s, 2)}"
            f"{_spark(history, f'{name}.local_requests_per_s', spark)}"
            f"   remote {_number(service.remote_requests_per_s, 2)}"
            f"{_spark(history, f'{name}.remote_requests_per_s', spark)}"
            f"   sent remote {_number(service.remote_share_pct, 1, '%')}"
        )
        lines.append(
            f"{indent}users feel TTFT p50 {_seconds(service.ttft_p50_s)}"
            f" p95 {_seconds(service.ttft_p95_s)}"
            f"{_spark(history, f'{name}.ttft_p95_s', spark)}"
            f"   e2e p50 {_seconds(service.e2e_p50_s)} p95 {_seconds(service.e2e_p95_s)}"
        )
        if service.models:
            lines.append(
                f"{indent}chat models: {len(service.models)} switched, "
                f"{_number(service.switches_per_hour, 1)} switches/h"
            )
            width = max(len(model.name) for model in service.models)
            lines += [f"{indent}  {model_line(model, width)}" for model in service.models]
    if not service.is_engine:
        return lines
    load = (
        f"{indent}running {_number(service.running_requests)}"
        f"   waiting {_number(service.waiting_requests)}"
        f"{_spark(history, f'{name}.waiting_requests', spark)}"
    )
    if service.kind == "vllm":
        load += (
            f"   KV cache {_number(service.kv_cache_usage_pct, 0, '%')}"
            f"{_spark(history, f'{name}.kv_cache_usage_pct', spark)}"
        )
    lines.append(load)
    if service.kind == "vllm":
        lines.append(
            f"{indent}tokens/s prompt {_number(service.prompt_tokens_per_s)}"
            f"   generation {_number(service.generation_tokens_per_s)}"
            f"{_spark(history, f'{name}.generation_tokens_per_s', spark)}"
            f"   requests/s {_number(service.requests_per_s, 2)}"
        )
        lines.append(
            f"{indent}TTFT p50 {_seconds(service.ttft_p50_s)} p95 {_seconds(service.ttft_p95_s)}"
            f"{_spark(history, f'{name}.ttft_p95_s', spark)}"
            f"   ITL p50 {_seconds(service.itl_p50_s)} p95 {_seconds(service.itl_p95_s)}"
            f"   e2e p95 {_seconds(service.e2e_p95_s)}"
            f"   queue p95 {_seconds(service.queue_time_p95_s)}"
        )
        lines.append(
            f"{indent}errors {_number(service.error_rate_pct, 1, '%')}"
            f"   prefix cache hits {_number(service.prefix_cache_hit_rate_pct, 0, '%')}"
            f"   preemptions/s {_number(service.preemptions_per_s, 2)}"
        )
    else:
        lines.append(
            f"{indent}requests/s {_number(service.requests_per_s, 2)}"
            f"{_spark(history, f'{name}.requests_per_s', spark)}"
            f"   latency p50 {_seconds(service.e2e_p50_s)} p95 {_seconds(service.e2e_p95_s)}"
            f"   queue p95 {_seconds(service.queue_time_p95_s)}"
            f"   errors {_number(service.error_rate_pct, 1, '%')}"
        )
    return lines


def model_state_text(model: SwitchedModelStats) -> str:
    """A switched model's state in words: "awake", "asleep (level 2)", "waking", "pinned awake"."""
    state = model.state
    if state is None:
        return DASH
    text = f"asleep (level {state[-1]})" if state.startswith("asleep-") else state
    return f"pinned {text}" if model.pinned else text


def model_line(model: SwitchedModelStats, width: int = 0) -> str:
    """One switched model on one line (status, and the TUI's models card)."""
    return (
        f"{model.name:<{width}}  {model_state_text(model):<16}"
        f"   in flight {_number(model.in_flight)}   held {_number(model.held)}"
        f"   last wake {_seconds(model.wake_seconds)}"
        f"   wakes/h {_number(model.switches_per_hour, 1)}"
    )


def render_status(snapshot: Snapshot, history: History | None = None, *, spark: int = 20) -> str:
    """The snapshot as lines of text; with `history`, sparklines of the last `spark` ticks."""
    taken = dt.datetime.fromtimestamp(snapshot.taken_at.wall, tz=dt.UTC)
    title = f"llm-appliance status · {taken:%Y-%m-%d %H:%M:%S} UTC · tick {snapshot.tick}"
    if snapshot.simulated:
        title += " · SIMULATED"
    lines = [title, "", "GPUs"]
    if snapshot.gpu_error is not None:
        lines.append(f"  {snapshot.gpu_error}")
    elif not snapshot.gpus:
        lines.append("  none")
    for gpu in snapshot.gpus:
        lines += _gpu_lines(gpu, history, spark)
    lines += ["", "Services"]
    if not snapshot.services:
        lines.append("  none")
    for service in snapshot.services:
        lines += _service_lines(service, history, spark)
    lines += ["", f"Alerts ({len(snapshot.alerts)})"]
    if not snapshot.alerts:
        lines.append("  none")
    for alert in snapshot.alerts:
        lines.append(f"  [{alert.severity}] {alert.headline()}")
        lines.append(f"      → {alert.suggestion}")
    return "\n".join(lines)
