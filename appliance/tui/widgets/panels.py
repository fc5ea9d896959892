"""The Monitor screen's panels: each is given a `Snapshot` and the sparkline series, and draws.

Sparklines are the monitor's own (`appliance.monitor.render.sparkline`), sized to the panel's
width on every redraw, so a wide terminal shows a longer history.
"""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Sparkline

from appliance.monitor.render import model_state_text, sparkline
from appliance.units import EN_DASH as DASH
from appliance.units import gib, number, seconds

if TYPE_CHECKING:
    from appliance.monitor.snapshot import GpuStats, ServiceStats, Snapshot, SwitchedModelStats

Series = dict[str, tuple[float | None, ...]]
_LABEL_WIDTH = 9
_VALUE_WIDTH = 24


# The space between a number and its unit ("2.0 s", "85 °C", "93 %"), or a limit's sign and its
# number ("> 2.0 s"): a wrap never breaks it.
_UNIT_SPACE = re.compile(r"(?<=\d) (?=(?:s|ms|°C|%|W|GiB|requests)(?!\w))|(?<=[>≤]) (?=\d)")
_GLUE = "\u2060"  # a word joiner: not whitespace to textwrap, swapped back for a space


def wrap_keeping_units(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` cells, never parting a number from its unit."""
    if width <= 0:
        return [text]
    glued = _UNIT_SPACE.sub(_GLUE, text)
    lines = textwrap.wrap(glued, width, break_long_words=False, break_on_hyphens=False)
    return [line.replace(_GLUE, " ") for line in lines] or [""]


def health_badge(service: ServiceStats) -> Text:
    if service.healthy:
        return Text(" UP ", style="bold black on green")
    return Text(" DOWN ", style="bold white on red")


def _rows(rows: list[tuple[str, str, tuple[float | None, ...]]], width: int, style: str) -> Table:
    """Label | value | sparkline rows; the sparkline takes what the panel's width leaves."""
    spark = max(0, width - _LABEL_WIDTH - _VALUE_WIDTH - 2)
    table = Table.grid(padding=(0, 1))
    table.add_column(width=_LABEL_WIDTH, style="bold", no_wrap=True)
    table.add_column(width=_VALUE_WIDTH, no_wrap=True)
    if spark:
        table.add_column(width=spark, style=style, no_wrap=True)
    for label, value, values in rows:
        cells = [label, value]
        if spark:
            cells.append(sparkline(values, spark))
        table.add_row(*cells)
    return table


class _SnapshotPanel(Widget):
    DEFAULT_CSS = """
    _SnapshotPanel {
        height: auto;
    }
    """

    snapshot: reactive[Snapshot | None] = reactive(None, repaint=False)
    series: reactive[Series] = reactive(dict, repaint=False)

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[object, ...] | None = None

    @staticmethod
    def shape(snapshot: Snapshot | None) -> tuple[object, ...]:
        """What decides the panel's height; a new layout is only needed when it changes."""
        if snapshot is None:
            return ()
        return (
            tuple((gpu.error is None, bool(gpu.throttle_reasons)) for gpu in snapshot.gpus),
            snapshot.gpu_error is None,
            tuple(
                (s.name, s.healthy, s.metrics_error is None, s.health_error, len(s.models))
                for s in snapshot.services
            ),
            # An alert's line grows when it starts clearing: its length may change its height.
            tuple((a.code, a.subject, len(a.headline())) for a in snapshot.alerts),
        )

    def show(self, snapshot: Snapshot | None, series: Series) -> None:
        """Redraw at 1 Hz; re-layout the screen only when the panel's height may change."""
        self.set_reactive(_SnapshotPanel.series, series)
        self.set_reactive(_SnapshotPanel.snapshot, snapshot)
        shape = self.shape(snapshot)
        self.refresh(layout=shape != self._shape)
        self._shape = shape

    def values(self, key: str) -> tuple[float | None, ...]:
        return self.series.get(key, ())


class GpuPanel(_SnapshotPanel):
    """Per GPU: utilisation, memory, temperature and power, each with its sparkline."""

    DEFAULT_CSS = """
    GpuPanel {
        height: auto;
    }
    """

    def gpu(self, gpu: GpuStats, width: int) -> RenderableType:
        subject = f"gpu{gpu.index}"
        title = Text.assemble((f"GPU {gpu.index} ", "bold"), gpu.name or "unnamed GPU")
        if gpu.error is not None:
            return Group(title, Text(f"cannot be read: {gpu.error}", style="red"))
        if gpu.throttle_reasons:
            title.append(f"  clocks limited: {', '.join(gpu.throttle_reasons)}", style="yellow")
        memory = f"{gib(gpu.memory_used_bytes)} / {gib(gpu.memory_total_bytes)}"
        power = f"{number(gpu.power_draw_w)} / {number(gpu.power_limit_w)} W"
        return Group(
            title,
            _rows(
                [
                    (
                        "util",
                        number(gpu.utilization_gpu_pct, 0, "%"),
                        self.values(f"{subject}.utilization_gpu_pct"),
                    ),
                    ("memory", memory, self.values(f"{subject}.memory_used_pct")),
                    (
                        "temp",
                        number(gpu.temperature_c, 0, "°C"),
                        self.values(f"{subject}.temperature_c"),
                    ),
                    ("power", power, self.values(f"{subject}.power_draw_w")),
                ],
                width,
                "green",
            ),
        )

    def render(self) -> RenderableType:
        snapshot = self.snapshot
        if snapshot is None:
            return Text("waiting for the first reading…", style="dim")
        if snapshot.gpu_error is not None:
            return Text(snapshot.gpu_error, style="red")
        if not snapshot.gpus:
            return Text("no GPU readings", style="dim")
        width = self.size.width
        return Group(*(self.gpu(gpu, width) for gpu in snapshot.gpus))


_MODEL_STATE_STYLE = {"awake": "green", "waking": "yellow", "sleeping": "yellow"}


def models_table(models: tuple[SwitchedModelStats, ...], selected: str | None) -> Table:
    """Several chat models, one a row: state, requests held for its wake, its last wake and
    wakes per hour; the selected one (the one `p`, `z`, `u` act on) marked ▸."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)  # name
    table.add_column(no_wrap=True)  # state
    for _ in range(3):  # held, last wake, wakes/h
        table.add_column(no_wrap=True, justify="right")
    table.add_row(*(Text(h, style="dim") for h in ("  model", "state", "held", "wake", "wakes/h")))
    for model in models:
        mark = model.name == selected
        table.add_row(
            Text.assemble(("▸ " if mark else "  ", "bold"), (model.name, "bold")),
            Text(model_state_text(model), style=_MODEL_STATE_STYLE.get(model.state or "", "dim")),
            number(model.held),
            seconds(model.wake_seconds),
            number(model.switches_per_hour, 1),
        )
    return table


class ServicesPanel(_SnapshotPanel):
    """Per engine: health, tokens/s, running/waiting, KV cache, TTFT and ITL, prefix cache; for
    the gateway: requests/s sent to this box's engines and to the remote fallback, and the
    fallback's share; with several chat models, each one's state, held requests, last wake
    and wakes per hour, the `selected_model` marked (the screen sets it)."""

    selected_model: str | None = None

    def service(self, service: ServiceStats, width: int) -> RenderableType:
        name = service.name
        title = Text.assemble(health_badge(service), " ", (service.label, "bold"))
        if service.model_names:
            title.append(f"  {', '.join(service.model_names)}")
        if service.kind == "gateway":  # the appliance's own process, not a container
            title.append("  systemd unit", style="dim")
        elif service.container_state is not None:
            title.append(f"  container {service.container_state}", style="dim")
            if service.restart_count:
                title.append(f", {service.restart_count} restarts", style="yellow")
        parts: list[RenderableType] = [title]
        if not service.healthy:
            parts.append(Text(service.health_error or "unhealthy", style="red"))
        if service.metrics_error is not None and service.healthy:
            parts.append(Text(f"metrics: {service.metrics_error}", style="yellow"))
        v = self.values
        if service.kind == "vllm":
            parts.append(
                _rows(
                    [
                        (
                            "tokens/s",
                            f"in {number(service.prompt_tokens_per_s)} · out "
                            f"{number(service.generation_tokens_per_s)}",
                            v(f"{name}.generation_tokens_per_s"),
                        ),
                        (
                            "requests",
                            f"{number(service.running_requests)} running · "
                            f"{number(service.waiting_requests)} waiting",
                            v(f"{name}.waiting_requests"),
                        ),
                        (
                            "KV cache",
                            number(service.kv_cache_usage_pct, 0, "% used"),
                            v(f"{name}.kv_cache_usage_pct"),
                        ),
                        (
                            "TTFT",
                            f"p50 {seconds(service.ttft_p50_s)} · "
                            f"p95 {seconds(service.ttft_p95_s)}",
                            v(f"{name}.ttft_p95_s"),
                        ),
                        (
                            "ITL",
                            f"p50 {seconds(service.itl_p50_s)} · p95 {seconds(service.itl_p95_s)}",
                            v(f"{name}.itl_p95_s"),
                        ),
                        (
                            "prefix",
                            f"{number(service.prefix_cache_hit_rate_pct, 0, '% hits')} · err "
                            f"{number(service.error_rate_pct, 1, '%')}",
                            v(f"{name}.error_rate_pct"),
                        ),
                    ],
                    width,
                    "cyan",
                )
            )
        elif service.kind == "tei":
            parts.append(
                _rows(
                    [
                        (
                            "requests",
                            f"{number(service.requests_per_s, 1)}/s",
                            v(f"{name}.requests_per_s"),
                        ),
                        (
                            "latency",
                            f"p50 {seconds(service.e2e_p50_s)} · p95 {seconds(service.e2e_p95_s)}",
                            v(f"{name}.e2e_p95_s"),
                        ),
                        (
                            "queue",
                            f"{number(service.running_requests)} running · "
                            f"{number(service.waiting_requests)} waiting",
                            v(f"{name}.waiting_requests"),
                        ),
                    ],
                    width,
                    "cyan",
                )
            )
        elif service.kind == "gateway":
            parts.append(
                _rows(
                    [
                        (
                            "local",
                            number(service.local_requests_per_s, 1, "requests/s"),
                            v(f"{name}.local_requests_per_s"),
                        ),
                        (
                            "remote",
                            number(service.remote_requests_per_s, 1, "requests/s"),
                            v(f"{name}.remote_requests_per_s"),
                        ),
                        (
                            "fallback",
                            number(service.remote_share_pct, 0, "% sent remote"),
                            (),
                        ),
                        (  # what users feel: first/last byte sent to the client
                            "user TTFT",
                            f"p50 {seconds(service.ttft_p50_s)} · "
                            f"p95 {seconds(service.ttft_p95_s)}",
                            v(f"{name}.ttft_p95_s"),
                        ),
                        (
                            "user e2e",
                            f"p50 {seconds(service.e2e_p50_s)} · p95 {seconds(service.e2e_p95_s)}",
                            (),
                        ),
                    ],
                    width,
                    "cyan",
                )
            )
            if service.models:
                parts.append(
                    Text.assemble(
                        ("chat models", "bold"),
                        f"  {number(service.switches_per_hour, 1)} switches/h",
                    )
                )
                parts.append(models_table(service.models, self.selected_model))
        else:
            parts.append(Text(f"{service.url} (health only)", style="dim"))
        return Group(*parts)

    def render(self) -> RenderableType:
        snapshot = self.snapshot
        if snapshot is None:
            return Text("waiting for the first reading…", style="dim")
        if not snapshot.services:
            return Text("no services", style="dim")
        width = self.size.width
        blocks: list[RenderableType] = []
        for index, service in enumerate(snapshot.services):
            if index:
                blocks.append(Text(""))
            blocks.append(self.service(service, width))
        return Group(*blocks)


class AlertsPanel(_SnapshotPanel):
    """Active alerts, worst first, each with the monitor's one-line suggestion."""

    def lines(self, width: int) -> list[Text]:
        """The alerts as lines of at most `width` cells, wrapped by hand so that a figure stays
        whole (the height Textual asks for is counted from the same lines)."""
        snapshot = self.snapshot
        if snapshot is None:
            return [Text(DASH, style="dim")]
        if not snapshot.alerts:
            return [Text("✔ no alerts", style="green")]
        lines: list[Text] = []
        ordered = sorted(snapshot.alerts, key=lambda alert: alert.severity != "critical")
        indent = " " * 9
        for alert in ordered:
            style = "bold red" if alert.severity == "critical" else "bold yellow"
            what = wrap_keeping_units(alert.headline(), width - len(indent))
            lines.append(Text.assemble((f"{alert.severity.upper():<8} ", style), what[0]))
            lines += [Text(indent + line) for line in what[1:]]
            advice = wrap_keeping_units(f"→ {alert.suggestion}", width - len(indent))
            lines += [Text(indent + line, style="italic") for line in advice]
        return lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))

    def render(self) -> RenderableType:
        return Group(*self.lines(self.size.width))


# (history key, title, unit) of the trends drawn large on tall terminals; {engine} is the chat
# role's server as its project writes it (`ServiceStats.engine_title`: vLLM or SGLang).
TRENDS = (
    ("vllm.generation_tokens_per_s", "{engine} generated tokens/s", ""),
    ("vllm.ttft_p95_s", "{engine} time to first token p95", "s"),
    ("vllm.kv_cache_usage_pct", "{engine} KV cache used", "%"),
    ("vllm.waiting_requests", "{engine} requests waiting", ""),
    ("gpu0.utilization_gpu_pct", "GPU 0 utilisation", "%"),
    ("gpu0.power_draw_w", "GPU 0 power", "W"),
)


class TextLine(Widget):
    """One line of text that changes every tick: a repaint, never a re-layout (unlike Static)."""

    DEFAULT_CSS = """
    TextLine {
        height: 1;
        width: 1fr;
    }
    """

    text: reactive[Text] = reactive(Text, layout=False)

    def render(self) -> Text:
        line = self.text.copy()
        line.no_wrap = True
        line.overflow = "ellipsis"
        return line


class Trend(Widget):
    """One history series as a tall sparkline, with its title and its latest, min and max."""

    DEFAULT_CSS = """
    Trend {
        height: 4;
        width: 1fr;
        padding: 0 1;
    }
    Trend > Sparkline {
        height: 3;
    }
    """

    def __init__(self, key: str, title: str, unit: str) -> None:
        super().__init__()
        self.key = key
        self.title = title
        self.unit = unit

    def compose(self) -> ComposeResult:
        yield TextLine()
        yield Sparkline([], summary_function=max)

    def show(self, values: tuple[float | None, ...], engine_title: str = "vLLM") -> None:
        """Draw `values`; `engine_title` names the chat server in the title."""
        known = [value for value in values if value is not None]
        title = Text(self.title.format(engine=engine_title), style="bold")
        if known:
            whole = all(value.is_integer() for value in known)
            digits = 2 if max(known) < 10 and not whole else 0
            unit = f" {self.unit}" if self.unit else ""
            title.append(
                f"  now {known[-1]:,.{digits}f}{unit} · min {min(known):,.{digits}f}"
                f" · max {max(known):,.{digits}f}",
                style="dim",
            )
        self.query_one(TextLine).text = title
        self.query_one(Sparkline).data = known
