"""Pictures of every screen at 80x24 and 120x40, on the simulated L40S with a fixed clock.

Regenerate with `pytest tests/tui/test_snapshots.py --snapshot-update`, then look at them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from appliance.clock import ManualClock
from appliance.tui.app import ApplianceApp
from appliance.tui.screens.recommend import CandidateCard
from appliance.tui.services import simulated_services
from tests.tui.conftest import MONITOR_TICKS, fake_services

PROFILES = Path(__file__).resolve().parents[2] / "profiles"

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


async def _until(pilot: Pilot[None], condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline
        await pilot.pause(0.02)


def _settled(
    *keys: str, extra: Callable[[ApplianceApp], bool] | None = None
) -> Callable[[Pilot[None]], Any]:
    """Wait for the box, the monitor's last tick and the fallback mode, press `keys` (waiting
    for each screen's own workers), then wait for whatever the screen itself needs."""

    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ApplianceApp)
        await _until(pilot, lambda: app.box is not None)
        await _until(pilot, lambda: app.snapshot is not None and app.snapshot.tick == MONITOR_TICKS)
        await _until(pilot, lambda: app.fallback_mode is not None)
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
            if app.current_mode == "recommend" and key == "r":
                await _until(pilot, lambda: _has_cards(app))
            await _quiet(pilot)
        if extra is not None:
            await _until(pilot, lambda: extra(app))
        await _quiet(pilot)

    return run_before


async def _quiet(pilot: Pilot[None]) -> None:
    """Every worker but the log follow and the monitor (they run until the app ends) is done."""
    app = pilot.app
    await _until(
        pilot,
        lambda: all(w.is_finished or w.group in ("log-follow", "monitor") for w in app.workers),
    )
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
def test_box(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(
        ApplianceApp(services=fake_services()), terminal_size=size, run_before=_settled()
    )


@pytest.mark.parametrize("size", SIZES)
def test_box_without_a_gpu(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ApplianceApp)
        await _until(pilot, lambda: app.box is not None)
        await pilot.pause()

    app = ApplianceApp(services=fake_services(no_gpu=True))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


def _has_cards(app: ApplianceApp) -> bool:
    return bool(app.screen.query(CandidateCard))


@pytest.mark.parametrize("size", SIZES)
def test_recommend(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("r"))


@pytest.mark.parametrize("size", SIZES)
def test_recommend_profile_yaml(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("r", "escape", "y"))


@pytest.mark.parametrize("size", SIZES)
def test_deploy_plan(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("r", "escape", "p"))


@pytest.mark.parametrize("size", SIZES)
def test_monitor(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("m"))


def test_monitor_cost(snap_compare: Any) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settled("m", "c"))


@pytest.mark.parametrize("size", SIZES)
def test_logs(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(
        app,
        terminal_size=size,
        run_before=_settled("l", extra=lambda app: len(getattr(app.screen, "lines", ())) == 5),
    )


@pytest.mark.parametrize("size", SIZES)
def test_keys(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("k"))


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("question_mark"))


@pytest.mark.parametrize("keys", [("m",), ("r",)], ids=["monitor", "recommend"])
def test_light_theme(snap_compare: Any, keys: tuple[str, ...]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settled("ctrl+t", *keys))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("outcome", [True, "fail"], ids=["deployed", "failed"])
def test_deploy_progress(snap_compare: Any, size: tuple[int, int], outcome: bool | str) -> None:
    app = ApplianceApp(services=fake_services(deploy=outcome))

    def done(app: ApplianceApp) -> bool:
        # The result is shown, and scrolled into view after the re-plan that follows it.
        screen = app.screen
        shown = bool(str(screen.query_one("#deploy-result").render()))
        return shown and not getattr(screen, "result_to_reveal", True)

    run_before = _settled("r", "escape", "p", "a", "y", extra=done)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_recommend_rejected(snap_compare: Any, size: tuple[int, int]) -> None:
    app = ApplianceApp(services=fake_services())
    assert snap_compare(app, terminal_size=size, run_before=_settled("r", "escape", "x"))


@pytest.mark.parametrize("size", SIZES)
def test_simulate_picker(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ApplianceApp)
        await _until(pilot, lambda: app.box is not None)
        await pilot.press("s")
        await pilot.pause()

    app = ApplianceApp(services=fake_services(no_gpu=True))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_monitor_of_a_profile_that_cannot_fit(
    snap_compare: Any, size: tuple[int, int], tmp_path: Path
) -> None:
    """`--simulate rtx4090 --profile profiles/h100-70b-fp8.yaml`: nothing runs, and why."""
    services = simulated_services(
        "rtx4090",
        profile_path=PROFILES / "h100-70b-fp8.yaml",
        clock=ManualClock(hold_after=MONITOR_TICKS),
        state_dir=tmp_path,
        profiles_dir=tmp_path,
    )
    app = ApplianceApp(services=services)
    assert snap_compare(app, terminal_size=size, run_before=_settled())


def test_monitor_with_sglang(snap_compare: Any) -> None:
    """A profile that runs SGLang names its chat service and trends after it, not vLLM."""
    app = ApplianceApp(services=fake_services(engine="sglang"))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settled("m"))


def test_monitor_with_switched_models(snap_compare: Any) -> None:
    """Several chat models: each one's state, held requests, last wake and wakes per hour under
    the gateway, the selected one marked, and the keys that pin, sleep and wake it."""
    from tests.tui.conftest import FakeModels

    app = ApplianceApp(services=fake_services(models=FakeModels(pinned="qwen-7b")))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settled("m"))
