"""The TUI's view of the last `appliance bench` (#18): opened from the command palette, it
shows the newest kept run's table, chart and headline, or says how to make one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from appliance.tui.app import ApplianceApp
from appliance.tui.screens.bench import NO_RESULT, BenchScreen
from appliance.tui.services import simulated_services
from tests.tui.test_flows import until
from tests.unit.test_calibration import _run


def _shown(app: ApplianceApp) -> str:
    return " ".join(str(widget.render()) for widget in app.screen.query("Static"))


def test_the_newest_kept_run_is_shown_from_the_palette(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = state / "bench" / "box"
    folder.mkdir(parents=True)
    older = _run(started_at="2026-12-01T10:00:00+00:00", model="older-model")
    (folder / "2026-12-01T100000Z.json").write_text(json.dumps(older.to_json()))
    (folder / "2026-12-05T100000Z.json").write_text(json.dumps(_run().to_json()))
    services = simulated_services("rtx4090", state_dir=state)

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(140, 40)) as pilot:
            titles = [command.title for command in app.get_system_commands(app.screen)]
            assert "Last bench result" in titles
            app.action_last_bench()
            await until(
                pilot, lambda: isinstance(app.screen, BenchScreen) and "Escape" in _shown(app)
            )
            shown = _shown(app)
            assert "2026-12-05T10:00:00+00:00" in shown
            assert "qwen" in shown
            assert "older-model" not in shown
            assert "best within the SLO: 1,840 output tokens/s at 16 users" in shown
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, BenchScreen))
        await app.workers.wait_for_complete()

    asyncio.run(go())


def test_without_a_kept_run_it_says_how_to_make_one(tmp_path: Path) -> None:
    services = simulated_services("rtx4090", state_dir=tmp_path / "state")

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            app.action_last_bench()
            await until(
                pilot, lambda: isinstance(app.screen, BenchScreen) and "Escape" in _shown(app)
            )
            assert NO_RESULT[:40] in _shown(app)
        await app.workers.wait_for_complete()

    asyncio.run(go())
