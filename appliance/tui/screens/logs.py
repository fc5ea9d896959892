"""Logs: follow one service's container logs, with a filter and a pause.

The follow runs in a thread worker whose stop event is the worker's own cancel event, so
switching service, leaving the app or quitting ends it at once (`LogSource.follow` returns soon
after its stop event is set).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, RichLog, Select, Static
from textual.worker import Worker, get_current_worker

from appliance.errors import ApplianceError
from appliance.tui.messages import LogLines, LogsEnded
from appliance.tui.notices import notify_worker_failure
from appliance.tui.screens.base import ApplianceScreen, this_screen

if TYPE_CHECKING:
    pass

KEEP_LINES = 5000


class LogsScreen(ApplianceScreen):
    """One service's log, live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause", tooltip="Pause or resume following"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "focus_log", "To log", show=False),
        Binding("c", "clear", "Clear", show=False, tooltip="Clear the lines shown"),
        this_screen("l", "logs", "Logs"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=KEEP_LINES)
        self.paused = False
        self.held = 0
        self.service: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="logs-bar"):
            yield Select[str]([], prompt="service", compact=True, id="logs-service")
            yield Input(placeholder="filter (text in the line)", compact=True, id="logs-filter")
            yield Static(id="logs-state")
        yield RichLog(id="log", max_lines=KEEP_LINES, wrap=True, markup=False, highlight=False)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        if self.appliance.services.logs is None:
            self._state("no log source here", "yellow")
            return
        self.list_services()

    @work(thread=True, exclusive=True, exit_on_error=False, group="log-services")
    def list_services(self) -> None:
        source = self.appliance.services.logs
        assert source is not None
        try:
            names = tuple(source.services())
        except ApplianceError as error:
            self.app.call_from_thread(self._no_services, error.render())
            return
        self.app.call_from_thread(self._services_listed, names)

    def _no_services(self, reason: str) -> None:
        self._state("no logs to follow", "yellow")
        self.query_one(RichLog).write(Text(f"No service logs here: {reason}", style="yellow"))

    def _services_listed(self, names: tuple[str, ...]) -> None:
        select = cast("Select[str]", self.query_one("#logs-service", Select))
        select.set_options([(name, name) for name in names])
        if not names:
            self._state("no service is running", "yellow")
            return
        select.value = names[0]

    @on(Select.Changed, "#logs-service")
    def _service_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.start(event.value)

    def start(self, service: str) -> None:
        self.service = service
        self.lines.clear()
        self.query_one(RichLog).clear()
        self.follow(service)
        self._show_state()

    @work(thread=True, exclusive=True, exit_on_error=False, group="log-follow")
    def follow(self, service: str) -> None:
        source = self.appliance.services.logs
        assert source is not None
        worker = get_current_worker()
        stop: threading.Event = worker.cancelled_event
        for line in source.follow(service, stop):
            if stop.is_set():
                return
            self.post_message(LogLines(service, (line,)))
        if not stop.is_set():
            self.post_message(LogsEnded(service, "the log ended (the container stopped?)"))

    @on(LogLines)
    def _lines(self, message: LogLines) -> None:
        if message.service != self.service:
            return
        log = self.query_one(RichLog)
        wanted = self.query_one("#logs-filter", Input).value.lower()
        for line in message.lines:
            self.lines.append(line)
            if self.paused:
                self.held += 1
            elif wanted in line.lower():
                log.write(Text(line))
        if self.paused:
            self._show_state()

    @on(LogsEnded)
    def _ended(self, message: LogsEnded) -> None:
        if message.service == self.service:
            self._state(message.reason, "yellow")

    @on(Input.Changed, "#logs-filter")
    def _refilter(self) -> None:
        if not self.paused:
            self._redraw()

    def _redraw(self) -> None:
        wanted = self.query_one("#logs-filter", Input).value.lower()
        log = self.query_one(RichLog)
        log.clear()
        for line in self.lines:
            if wanted in line.lower():
                log.write(Text(line))

    def _state(self, text: str, style: str) -> None:
        self.query_one("#logs-state", Static).update(Text(text, style=style))

    def _show_state(self) -> None:
        if self.paused:
            self._state(f"⏸ paused, {self.held} new lines held", "bold yellow")
        else:
            self._state(f"● following {self.service}", "green")

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.held = 0
            self._redraw()
        self._show_state()

    def action_filter(self) -> None:
        self.query_one("#logs-filter", Input).focus()

    def action_focus_log(self) -> None:
        self.query_one(RichLog).focus()

    def action_clear(self) -> None:
        self.lines.clear()
        self.query_one(RichLog).clear()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        notify_worker_failure(event)
