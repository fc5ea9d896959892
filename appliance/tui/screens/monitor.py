"""Monitor: the GPUs and engines once a second, alerts with what to do, and the fallback switch.

It draws the monitor's `Snapshot` (the one `appliance status` prints) and the history the app's
monitor worker keeps; `f` switches the gateway's fallback mode off → auto → always; `c` shows
what the box costs against the API it replaces (`appliance cost`), `w` its window.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Static

from appliance.tui.messages import CostComputed
from appliance.tui.screens.base import ApplianceScreen, this_screen
from appliance.tui.services import NO_PROFILE_COST, CostView
from appliance.tui.widgets.panels import (
    TRENDS,
    AlertsPanel,
    GpuPanel,
    ServicesPanel,
    TextLine,
    Trend,
)
from appliance.vocabulary import COST_WINDOWS

if TYPE_CHECKING:
    from appliance.monitor.snapshot import Snapshot

WIDE = 110  # columns from which GPUs and engines sit side by side
TALL = 36  # rows from which the large trends are drawn

_MODE_STYLE = {
    "off": "bold black on grey70",
    "auto": "bold black on green",
    "always": "bold white on dark_orange3",
}


def fallback_badge(mode: str | None, configured: bool) -> Text:
    if not configured:
        return Text("gateway not configured", style="dim")
    if mode is None:
        return Text("fallback …", style="dim")
    return Text.assemble("fallback ", (f" {mode.upper()} ", _MODE_STYLE.get(mode, "bold")))


def status_line(snapshot: Snapshot | None, state: str) -> Text:
    if snapshot is None:
        return Text(f"monitor {state}", style="dim")
    taken = dt.datetime.fromtimestamp(snapshot.taken_at.wall, tz=dt.UTC)
    text = Text.assemble(
        (f"{taken:%H:%M:%S} UTC", "bold"),
        f" · tick {snapshot.tick} · every {snapshot.interval_s:g} s",
    )
    if snapshot.simulated:
        text.append("  SIMULATED ", style="bold reverse")
    if state not in ("running", "starting"):
        text.append(f"  monitor {state}", style="yellow")
    return text


class MonitorScreen(ApplianceScreen):
    """Live view of the deployed (or simulated) appliance."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "f", "fallback", "Fallback", tooltip="Switch the gateway fallback: off → auto → always"
        ),
        Binding("c", "cost", "Cost", tooltip="What the box costs against the API it replaces"),
        # The cost panel's title shows `w`, so the 80-column footer need not.
        Binding(
            "w",
            "cost_window",
            "Window",
            show=False,
            tooltip="Cost over the last hour → day → 7 days",
        ),
        this_screen("m", "monitor", "Monitor"),
    ]

    cost_window = "day"

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="monitor-status"):
            yield TextLine(id="monitor-clock")
            yield Static(id="monitor-fallback")
        yield Static(id="monitor-idle", classes="callout")
        yield Static(id="monitor-cost", classes="panel")
        with VerticalScroll(id="monitor-body"):
            with Horizontal(id="monitor-columns"):
                with Vertical(id="monitor-left"):
                    with Vertical(classes="panel", id="monitor-gpus") as panel:
                        panel.border_title = "GPUs"
                        yield GpuPanel()
                    with Vertical(classes="panel", id="monitor-alerts") as panel:
                        panel.border_title = "Alerts"
                        yield AlertsPanel()
                with Vertical(classes="panel", id="monitor-services") as panel:
                    panel.border_title = "Services"
                    yield ServicesPanel()
            with Grid(classes="panel", id="monitor-trends") as trends:
                trends.border_title = "Last two minutes"
                for key, title, unit in TRENDS:
                    yield Trend(key, title, unit)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.watch(self.app, "snapshot", self._redraw)
        self.watch(self.app, "monitor_state", self._redraw_state)
        self.watch(self.app, "fallback_mode", self._redraw_fallback)

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width >= WIDE, "-wide")
        self.set_class(event.size.height >= TALL, "-tall")

    def _redraw(self, snapshot: Snapshot | None) -> None:
        series = self.appliance.series
        for panel in (
            self.query_one(GpuPanel),
            self.query_one(ServicesPanel),
            self.query_one(AlertsPanel),
        ):
            panel.show(snapshot, series)
        chat = snapshot.engine("vllm") if snapshot is not None else None
        engine_title = chat.engine_title if chat is not None else "vLLM"
        for trend in self.query(Trend):
            trend.show(series.get(trend.key, ()), engine_title)
        self._redraw_state(self.appliance.monitor_state)
        if snapshot is not None:
            alerts = self.query_one("#monitor-alerts")
            title = f"Alerts ({len(snapshot.alerts)})"
            if alerts.border_title != title:
                alerts.border_title = title
                alerts.set_class(bool(snapshot.alerts), "-alerting")

    def _redraw_state(self, state: str) -> None:
        app = self.appliance
        self.query_one("#monitor-clock", TextLine).text = status_line(app.snapshot, state)
        idle = self.query_one("#monitor-idle", Static)
        deployed = state != "not deployed"
        if idle.display == deployed:  # set only on change: each set re-lays the screen out
            idle.display = not deployed
            self.query_one("#monitor-body").display = deployed
        if not deployed:
            idle.update(
                Text.assemble(
                    ("Nothing is deployed here yet, so there is nothing to watch. ", "bold"),
                    "Choose a model in Recommend (",
                    ("r", "bold reverse"),
                    "), see its plan in Deploy (",
                    ("d", "bold reverse"),
                    "), then `appliance apply PROFILE`. Start `llm-appliance --profile PROFILE` "
                    "to watch what runs, or `--simulate l40s` to see a simulated one.",
                )
            )

    def _redraw_fallback(self, mode: str | None) -> None:
        configured = self.appliance.services.fallback is not None
        self.query_one("#monitor-fallback", Static).update(fallback_badge(mode, configured))

    def action_fallback(self) -> None:
        self.appliance.action_cycle_fallback()

    # -- cost

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cost_window":  # only while the cost view is open
            return self.query_one("#monitor-cost").display
        return True

    def action_cost(self) -> None:
        panel = self.query_one("#monitor-cost", Static)
        panel.display = not panel.display
        self.refresh_bindings()
        if panel.display:
            self._show_cost()

    def action_cost_window(self) -> None:
        index = COST_WINDOWS.index(self.cost_window) if self.cost_window in COST_WINDOWS else -1
        self.cost_window = COST_WINDOWS[(index + 1) % len(COST_WINDOWS)]
        self._show_cost()

    def _show_cost(self) -> None:
        panel = self.query_one("#monitor-cost", Static)
        panel.border_title = f"Cost · last {self.cost_window} · w: window"
        if self.appliance.services.cost is None:
            panel.update(Text(NO_PROFILE_COST, style="dim"))
            return
        panel.update(Text("computing …", style="dim"))
        self.compute_cost(self.cost_window)

    @work(thread=True, exclusive=True, exit_on_error=False, group="cost")
    def compute_cost(self, window: str) -> None:
        cost = self.appliance.services.cost
        assert cost is not None
        self.post_message(CostComputed(cost(window)))

    @on(CostComputed)
    def _cost_computed(self, message: CostComputed) -> None:
        view: CostView = message.view
        if view.window != self.cost_window:
            return  # an older window's answer, overtaken by `w`
        text = Text(view.text) if view.ok else Text(view.text, style="italic")
        if view.ok:  # the verdict first, in bold
            text.stylize("bold", 0, len(view.text.split("\n", 1)[0]))
        self.query_one("#monitor-cost", Static).update(text)
