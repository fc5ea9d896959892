"""The last `appliance bench` kept on this box: its table, its chart and its headline (#18).

Opened from the command palette ("Last bench result"), closed with Escape. What is shown is
the newest run under the state dir's `bench/` (see `appliance.operations.calibration`); the
same numbers `appliance bench` printed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

if TYPE_CHECKING:
    from appliance.benchmark import BenchRun

NO_RESULT = (
    "No bench result is kept on this box yet: run `appliance bench PROFILE` (or `appliance "
    "tune PROFILE`), then open this again."
)


def bench_table(run: BenchRun) -> Table:
    from appliance.benchmark import table_rows

    rows = table_rows(run)
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
    for index, name in enumerate(rows[0]):
        table.add_column(name, justify="left" if index == len(rows[0]) - 1 else "right")
    for row in rows[1:]:
        table.add_row(*row, style=None if row[-1] == "met" else "yellow")
    return table


class BenchScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss(None)", "Close"),
    ]

    def __init__(self, run: BenchRun | None) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        from appliance.benchmark import headline, text_chart

        with VerticalScroll(classes="dialog", id="bench"):
            run = self.run
            if run is None:
                yield Static(Text(NO_RESULT))
            else:
                title = (
                    f"appliance bench {run.profile} · {run.started_at} · {run.model}, "
                    f"{run.workload} · engine {run.engine_version or 'unknown'}"
                )
                yield Static(Text(title, style="bold"))
                yield Static(bench_table(run))
                yield Static(Text(text_chart(run, width=30)))
                yield Static(Text(headline(run)))
            yield Static(Text("Escape closes this.", style="dim"))
