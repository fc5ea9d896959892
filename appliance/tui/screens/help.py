"""Help: every key of every screen, from the bindings themselves (so it cannot drift)."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = (
    "llm-appliance turns this GPU box into a private OpenAI-compatible endpoint: Box shows what "
    "the machine has, Recommend what to run on it, Deploy what `appliance apply` would change, "
    "Monitor how it runs, Logs what the engines say, Keys who may call it. Everything here is "
    "also an `appliance …` command."
)


def _rows(table: Table, where: str, bindings: list[BindingType]) -> None:
    for binding in bindings:
        # `app.` actions on a screen only shadow an app-wide key (listed under "anywhere").
        if (
            not isinstance(binding, Binding)
            or not binding.description
            or binding.action.startswith("app.")
        ):
            continue
        keys = binding.key_display or binding.key.replace("question_mark", "?")
        does = binding.description
        if binding.tooltip:
            does += f": {binding.tooltip}"
        table.add_row(where, keys, does)
        where = ""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss(None)", "Close help"),
    ]

    def compose(self) -> ComposeResult:
        from appliance.tui.screens.box import BoxScreen
        from appliance.tui.screens.deploy import DeployScreen
        from appliance.tui.screens.keys import KeysScreen
        from appliance.tui.screens.logs import LogsScreen
        from appliance.tui.screens.monitor import MonitorScreen
        from appliance.tui.screens.recommend import RecommendScreen

        table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
        table.add_column("screen", no_wrap=True, style="bold")
        table.add_column("key", no_wrap=True, style="bold cyan")
        table.add_column("does", ratio=1)
        _rows(table, "anywhere", self.app.BINDINGS)  # the app's own keys
        table.add_row("", "ctrl+p", "Command palette (every action by name)")
        table.add_row("", "tab", "Next field or list")
        for name, screen in (
            ("Box", BoxScreen),
            ("Recommend", RecommendScreen),
            ("Deploy", DeployScreen),
            ("Monitor", MonitorScreen),
            ("Logs", LogsScreen),
            ("Keys", KeysScreen),
        ):
            _rows(table, name, screen.BINDINGS)
        with VerticalScroll(classes="dialog", id="help"):
            yield Static(Text(INTRO))
            yield Static(table)
            yield Static(Text("Escape closes this help.", style="dim"))
