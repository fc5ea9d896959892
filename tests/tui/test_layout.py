"""What an 80x24 terminal must still show: Quit in every footer, card figures in one piece, and
checkboxes that can be seen unticked, in the dark and the light theme (#16 items 16 and 17)."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Checkbox
from textual.widgets._footer import FooterKey

from appliance.tui.app import ApplianceApp
from appliance.tui.screens.recommend import CandidateCard
from tests.tui.conftest import fake_services

SCREENS = [
    pytest.param(("b",), id="box"),
    pytest.param(("r",), id="recommend"),
    pytest.param(("d",), id="deploy"),
    pytest.param(("m",), id="monitor"),
    pytest.param(("m", "c"), id="monitor-cost"),
    pytest.param(("l",), id="logs"),
    pytest.param(("k",), id="keys"),
]


async def _until(pilot: Pilot[None], condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.02)


@pytest.mark.parametrize("keys", SCREENS)
def test_every_footer_shows_quit_at_80x24(tmp_path: Path, keys: tuple[str, ...]) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: app.box is not None)
            await pilot.press(*keys)

            def quit_keys() -> list[FooterKey]:
                keys = app.screen.query(FooterKey)
                return [key for key in keys if key.action in ("quit", "app.quit")]

            await _until(pilot, lambda: bool(quit_keys()) and quit_keys()[0].region.width > 0)
            await pilot.pause(0.1)
            shown = [key for key in app.screen.query(FooterKey) if key.display]
            (quit_key,) = quit_keys()
            # The whole key and its word fit inside the 80 columns.
            assert quit_key.region.width >= len("q Quit"), quit_key.region
            assert quit_key.region.right <= 80, [(k.key, k.region) for k in shown]
            # The key of the screen one is on is not repeated in its footer.
            assert app.current_mode not in [k.description.lower() for k in shown]

    asyncio.run(go())


def _lines(widget: object, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(widget.render())  # type: ignore[attr-defined]
    return console.export_text().splitlines()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_card_figures_never_wrap_apart_from_their_units(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=size) as pilot:
            await pilot.press("r")
            await _until(pilot, lambda: bool(app.screen.query(CandidateCard)))
            await pilot.pause(0.2)
            for card in app.screen.query(CandidateCard):
                title = card.query_one(".title")
                lines = _lines(title, title.size.width)
                # Every number is on the line of its unit ("25 tok/s", "44 at once").
                assert any(re.search(r"\d tok/s", line) for line in lines), lines
                assert not any(line.strip().startswith(("tok/s", "at once")) for line in lines)
                assert all(len(line.rstrip()) <= title.size.width for line in lines)

    asyncio.run(go())


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_an_unticked_checkbox_can_be_seen(tmp_path: Path, theme: str) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            app.theme = theme
            await pilot.press("r")
            await pilot.pause(0.2)
            for checkbox in app.screen.query(Checkbox):
                assert not checkbox.value
                button = checkbox.get_component_rich_style("toggle--button")
                behind = checkbox.background_colors[1]
                assert button.bgcolor is not None
                from textual.color import Color

                box = Color.from_rich_color(button.bgcolor)
                # The empty box stands out from the pane it sits on.
                assert abs(box.brightness - behind.brightness) >= 0.15, (theme, box, behind)

    asyncio.run(go())


def test_alert_lines_wrap_between_words_never_inside_a_figure() -> None:
    from appliance.tui.widgets.panels import wrap_keeping_units

    headline = "vllm time to first token p95 is 2.23 s (> 2.0 s) — clearing in 24 s"
    for width in range(12, len(headline) + 1):
        lines = wrap_keeping_units(headline, width)
        assert " ".join(lines) == headline
        for line in lines:
            assert not re.match(r"(s|°C|%)\b", line), (width, lines)
            assert not line.endswith((">", "≤")), (width, lines)
    assert wrap_keeping_units("gpu0 is at 85 °C (> 80 °C)", 14) == [
        "gpu0 is at",
        "85 °C",
        "(> 80 °C)",
    ]
