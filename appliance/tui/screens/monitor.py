"""Monitor: the GPUs and engines once a second, alerts with what to do, and the fallback switch.

It draws the monitor's `Snapshot` (the one `appliance status` prints) and the history the app's
monitor worker keeps; `f` switches the gateway's fallback mode off → auto → always; `c` shows
what the box costs against the API it replaces (`appliance cost`), `w` its window. With several
chat models (spec.switching), `n` selects one, `p` pins it awake (or unpins), `z` puts it to
sleep and `u` wakes it, through the gateway's admin route; those keys show only then.
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

from appliance.errors import ApplianceError
from appliance.tui.messages import CostComputed, ModelOrdered
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
        Binding("n", "next_model", "Model", tooltip="Select the next chat model"),
        Binding("p", "order('pin')", "Pin", tooltip="Pin the selected model awake, or unpin it"),
        Binding("z", "order('sleep')", "Sleep", tooltip="Put the selected model to sleep"),
        Binding("u", "order('wake')", "Wake", tooltip="Wake the selected model now"),
    ]
    _MODEL_ACTIONS = frozenset({"next_model", "order"})

    cost_window = "day"
    _pinned: str | None = None  # the model pinned awake, as last read or ordered

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
        gateway = snapshot.service("gateway") if snapshot is not None else None
        if gateway is not None and gateway.models:
            self._pinned = next((m.name for m in gateway.models if m.pinned), None)
        services = self.query_one(ServicesPanel)
        if services.selected_model is None and self._switched_models():
            services.selected_model = self._selected_model()
            self.refresh_bindings()
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
        if action in self._MODEL_ACTIONS:  # only with several chat models to act on
            return bool(self._switched_models())
        return True

    # -- several chat models

    def _switched_models(self) -> tuple[str, ...]:
        snapshot = self.appliance.snapshot
        gateway = snapshot.service("gateway") if snapshot is not None else None
        return tuple(m.name for m in gateway.models) if gateway is not None else ()

    def _selected_model(self) -> str | None:
        names = self._switched_models()
        selected = self.query_one(ServicesPanel).selected_model
        return selected if selected in names else (names[0] if names else None)

    def action_next_model(self) -> None:
        names = self._switched_models()
        selected = self._selected_model()
        if selected is None:
            return
        panel = self.query_one(ServicesPanel)
        panel.selected_model = names[(names.index(selected) + 1) % len(names)]
        panel.refresh()

    def action_order(self, action: str) -> None:
        model = self._selected_model()
        if model is None:
            return
        if self.appliance.services.models is None:
            self.notify("The gateway's admin route is not configured here.", severity="warning")
            return
        if action == "pin" and self._pinned == model:
            action = "unpin"
        self.notify(f"{action} {model} …")
        self.order_model(model, action)

    @work(thread=True, exclusive=True, exit_on_error=False, group="models")
    def order_model(self, model: str, action: str) -> None:
        orders = self.appliance.services.models
        assert orders is not None
        try:
            self.post_message(ModelOrdered(model, action, orders(model, action)))
        except ApplianceError as error:
            self.post_message(ModelOrdered(model, action, error.render(), ok=False))

    @on(ModelOrdered)
    def _model_ordered(self, message: ModelOrdered) -> None:
        if message.ok:
            # Known before the next reading shows it: `p` on it again unpins.
            if message.action in ("pin", "unpin"):
                self._pinned = message.model if message.action == "pin" else None
            self.notify(message.outcome)
        else:
            self.notify(message.outcome, title="Not done", severity="error")

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
