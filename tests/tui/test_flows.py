"""The TUI's flows driven with Pilot: navigation, live re-estimates, fallback, logs, quitting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, ProgressBar, Select, TabbedContent

from appliance.catalog import load_catalog
from appliance.clock import ManualClock
from appliance.gateway.state import read_fallback
from appliance.profile import load_profile
from appliance.tui.app import ApplianceApp
from appliance.tui.messages import (
    BoxDetected,
    CostComputed,
    DeployFinished,
    DeployProgressed,
    FallbackSwitched,
    LogLines,
    MetricsSampled,
    PlanComputed,
    RecommendationComputed,
)
from appliance.tui.screens.box import SimulatePicker
from appliance.tui.screens.deploy import DeployScreen
from appliance.tui.screens.logs import LogsScreen
from appliance.tui.screens.recommend import CandidateCard, RecommendScreen
from appliance.tui.services import (
    NO_COST_INPUTS,
    NO_PROFILE_COST,
    SIMULATED_COST,
    profile_cost,
    simulated_services,
)
from tests.tui.conftest import MONITOR_TICKS, FakeCost, FakeGateway, FakeLogs, fake_services


async def until(pilot: Pilot[None], condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.02)


def run(go: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(go())


def test_keys_move_between_every_screen(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            assert app.current_mode == "box"
            for key, mode in [("r", "recommend"), ("d", "deploy"), ("m", "monitor"),
                              ("l", "logs"), ("k", "keys"), ("b", "box")]:  # fmt: skip
                await pilot.press(key)
                await pilot.pause()
                assert app.current_mode == mode, key
            await pilot.press("question_mark")
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape")
            assert app.current_mode == "box"

    run(go)


def test_message_flow_box_then_metrics_then_recommendation(tmp_path: Path) -> None:
    seen: list[Message] = []

    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            await until(
                pilot, lambda: app.snapshot is not None and app.snapshot.tick == MONITOR_TICKS
            )
            await pilot.press("r")
            await until(pilot, lambda: any(isinstance(m, RecommendationComputed) for m in seen))

    run(go)
    kinds = [type(message) for message in seen]
    assert BoxDetected in kinds
    assert kinds.index(BoxDetected) < kinds.index(RecommendationComputed)
    sampled = [m for m in seen if isinstance(m, MetricsSampled)]
    # At 1 Hz a backlog is pointless: ticks may coalesce, but the last one always arrives.
    assert 1 <= len(sampled) <= MONITOR_TICKS
    assert sampled[-1].snapshot.tick == MONITOR_TICKS
    assert sampled[-1].series["vllm.generation_tokens_per_s"]


def test_changing_a_knob_re_estimates_the_candidates(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("r")
            screen = app.screen
            assert isinstance(screen, RecommendScreen)
            await until(pilot, lambda: screen.recommendation is not None)
            assert screen.recommendation is not None
            before = screen.recommendation
            assert before.workload.context == 8192
            screen.query_one("#context", Input).value = "32768"
            await until(
                pilot,
                lambda: (
                    screen.recommendation is not None
                    and screen.recommendation.workload.context == 32768
                ),
            )
            after = screen.recommendation
            assert after is not None
            # Every candidate asks for the new context, or its model's own limit below it
            # (Phi-4 stops at 16384).
            catalog = load_catalog()
            assert all(
                c.max_model_len
                == min(32768, catalog.model(c.model_key).architecture.max_model_len_limit)  # type: ignore[union-attr]
                for c in after.candidates
            )
            cards = list(screen.query(CandidateCard))
            assert [card.candidate for card in cards] == list(after.candidates)
            # A knob that makes no sense says which one, and keeps the last good list.
            screen.query_one("#users", Input).value = ""
            await pilot.pause()
            assert "Users" in str(screen.query_one("#knob-error").render())

    run(go)


def test_simulated_l40s_rag_for_30_users_saves_a_profile_and_plans_it(tmp_path: Path) -> None:
    seen: list[Message] = []

    async def go() -> None:
        services = simulated_services(
            "l40s", clock=ManualClock(), state_dir=tmp_path, profiles_dir=tmp_path, monitor_ticks=3
        )
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            await until(pilot, lambda: app.box is not None)
            await pilot.press("r")
            screen = app.screen
            assert isinstance(screen, RecommendScreen)
            screen.query_one("#kind", Select).value = "rag"
            await pilot.pause()
            screen.query_one("#users", Input).value = "30"
            await until(
                pilot,
                lambda: (
                    screen.recommendation is not None
                    and screen.recommendation.workload.kind == "rag"
                    and screen.recommendation.workload.users == 30
                ),
            )
            await pilot.press("escape", "s")
            await until(pilot, lambda: any(tmp_path.glob("*.yaml")))
            await pilot.press("p")
            await until(pilot, lambda: any(isinstance(m, PlanComputed) for m in seen))
            assert isinstance(app.screen, DeployScreen)

    run(go)
    (saved,) = tmp_path.glob("*.yaml")
    profile = load_profile(saved)
    assert profile.spec.embeddings_enabled  # RAG brings TEI
    plan = next(m for m in seen if isinstance(m, PlanComputed)).plan
    assert {action.kind for action in plan.actions} == {"create"}
    assert {action.role for action in plan.actions} == {"vllm", "tei"}


def test_f_switches_the_gateway_fallback_mode(tmp_path: Path) -> None:
    async def go() -> None:
        services = simulated_services(
            "l40s", clock=ManualClock(), state_dir=tmp_path, profiles_dir=tmp_path, monitor_ticks=3
        )
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("m")
            await until(pilot, lambda: app.fallback_mode == "off")
            await pilot.press("f")
            await until(pilot, lambda: app.fallback_mode == "auto")
            assert read_fallback(tmp_path / "fallback.json").mode.value == "auto"
            await pilot.press("f")
            await until(pilot, lambda: app.fallback_mode == "always")
            assert read_fallback(tmp_path / "fallback.json").mode.value == "always"

    run(go)


def test_f_without_a_gateway_says_so(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path, no_gpu=True))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("m", "f")
            await pilot.pause()
            assert "not configured" in str(app.screen.query_one("#monitor-fallback").render())

    run(go)


def test_quitting_during_a_log_follow_exits_at_once(tmp_path: Path) -> None:
    services = fake_services(tmp_path)
    assert isinstance(services.logs, FakeLogs)
    seen: list[Message] = []

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
            await pilot.press("l")
            assert isinstance(app.screen, LogsScreen)
            await until(pilot, lambda: sum(isinstance(m, LogLines) for m in seen) >= 5)
            await until(pilot, lambda: len(app.screen.lines) == 5)  # type: ignore[attr-defined]
            await pilot.press("q")

    run(go)  # returns only once the app has exited: a follow that kept it alive would hang here
    assert services.logs.stopped.wait(30)  # and the follow thread was told to stop


def test_logs_filter_and_pause(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("l")
            screen = app.screen
            assert isinstance(screen, LogsScreen)
            await until(pilot, lambda: len(screen.lines) == 5)
            await pilot.press("slash", *"preempted")
            await pilot.pause()
            log = screen.query_one("#log")
            shown = "".join(strip.text for strip in log.lines)  # type: ignore[attr-defined]
            assert "preempted" in shown
            assert "POST" not in shown
            await pilot.press("escape", "p")
            assert screen.paused

    run(go)


def test_no_gpu_offers_a_simulated_box(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path, no_gpu=True))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.box is not None)
            assert app.screen.query_one("#box-no-gpu").display
            await pilot.press("s")
            assert isinstance(app.screen, SimulatePicker)
            await pilot.press("down", "down", "enter")  # rtx4090, 2x4090, l40s
            await until(pilot, lambda: app.box is not None and app.box.simulated == "l40s")
            assert app.services.simulate == "l40s"
            assert not app.screen.query_one("#box-no-gpu").display
        await app.workers.wait_for_complete()

    run(go)


def test_keys_create_shows_the_key_once_and_revoke_removes_it(tmp_path: Path) -> None:
    services = fake_services(tmp_path)
    gateway = services.keys
    assert isinstance(gateway, FakeGateway)

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("k")
            await pilot.pause(0.1)
            await pilot.press("n", *"grafana", "enter")
            await until(pilot, lambda: type(app.screen).__name__ == "ShowKeyOnce")
            assert "sk-appliance-test" in str(app.screen.query_one("#new-key", Input).value)
            await pilot.press("escape")
            await pilot.pause(0.1)
            await pilot.press("x", "y")
            await until(pilot, lambda: len(gateway.keys) == 2)

    run(go)
    assert [key.name for key in gateway.keys] == ["ci-runner", "grafana"]
    assert FallbackSwitched  # imported for the message vocabulary


def test_deploy_confirms_then_shows_progress_and_success(tmp_path: Path) -> None:
    seen: list[Message] = []

    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path, deploy=True))
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            await pilot.press("r")
            await until(pilot, lambda: bool(app.screen.query(CandidateCard)))
            await pilot.press("escape", "p")
            await until(pilot, lambda: any(isinstance(m, PlanComputed) for m in seen))
            screen = app.screen
            assert isinstance(screen, DeployScreen)
            await pilot.press("a")
            assert type(app.screen).__name__ == "ConfirmApply"
            await pilot.press("n")  # declining changes nothing
            assert not any(isinstance(m, DeployProgressed) for m in seen)
            await pilot.press("a", "y")
            await until(pilot, lambda: any(isinstance(m, DeployFinished) for m in seen))
            await pilot.pause()
            assert "Deployed" in str(screen.query_one("#deploy-result").render())
            assert screen.query_one("#weights-bar", ProgressBar).percentage == 1.0

    run(go)


def test_a_failed_deploy_shows_the_diagnosis_and_the_log_lines(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path, deploy="fail"))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("r")
            await until(pilot, lambda: bool(app.screen.query(CandidateCard)))
            await pilot.press("escape", "p")
            screen = app.screen
            assert isinstance(screen, DeployScreen)
            await until(pilot, lambda: screen.plan is not None)
            await pilot.press("a", "y")
            await until(pilot, lambda: "failed" in str(screen.query_one("#deploy-result").render()))
            shown = str(screen.query_one("#deploy-result").render())
            assert "did not turn healthy" in shown
            assert "max_model_len: 12000" in shown
            assert "KV cache (12000)" in shown

    run(go)


def test_deploy_is_disabled_with_its_reason_on_a_simulated_box(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("d", "a")
            await pilot.pause()
            assert type(app.screen).__name__ == "DeployScreen"  # no confirm dialog
            assert "simulated" in str(app.screen.query_one("#deploy-disabled").render())

    run(go)


def test_y_shows_the_chosen_candidate_as_profile_yaml(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("r")
            await until(pilot, lambda: bool(app.screen.query(CandidateCard)))
            await pilot.press("escape", "down", "y")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, RecommendScreen)
            assert screen.query_one(TabbedContent).active == "profile"
            assert screen.recommendation is not None
            second = screen.recommendation.candidates[1]
            yaml = str(screen.query_one("#profile-yaml").render())
            assert second.repo in yaml
            assert "Why:" in yaml

    run(go)


def test_monitor_shows_the_gateways_requests_by_destination(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from appliance.tui.widgets.panels import ServicesPanel

    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.tick >= 3)
            await pilot.press("m")
            await pilot.pause()
            snapshot = app.snapshot
            assert snapshot is not None
            gateway = snapshot.service("gateway")
            assert gateway is not None
            assert gateway.local_requests_per_s is not None
            panel = app.screen.query_one(ServicesPanel)
            console = Console(width=60, record=True, file=io.StringIO())
            console.print(panel.service(gateway, 60))
            shown = console.export_text()
            assert "UP  gateway" in shown
            assert f"local     {gateway.local_requests_per_s:,.1f} requests/s" in shown
            # The fake gateway's fallback is off, and the simulated gateway routes by it.
            assert gateway.remote_requests_per_s == 0.0
            assert "remote    0.0 requests/s" in shown
            assert "fallback  0 % sent remote" in shown

    run(go)


def _cost_text(app: ApplianceApp) -> str:
    return str(app.screen.query_one("#monitor-cost").render())


def test_c_shows_the_cost_report_and_w_cycles_its_window(tmp_path: Path) -> None:
    async def go() -> None:
        services = fake_services(tmp_path)
        assert isinstance(services.cost, FakeCost)
        seen: list[Message] = []
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            await pilot.press("m")
            await pilot.pause()
            assert not app.screen.query_one("#monitor-cost").display
            await pilot.press("c")
            await until(pilot, lambda: "Paying for itself" in _cost_text(app))
            assert "window          day (24.0 h recorded)" in _cost_text(app)
            assert "last day" in str(app.screen.query_one("#monitor-cost").border_title)
            await pilot.press("w")
            await until(pilot, lambda: "window          7d" in _cost_text(app))
            await pilot.press("w")
            await until(pilot, lambda: "window          hour" in _cost_text(app))
            assert services.cost.asked == ["day", "7d", "hour"]
            windows = [m.view.window for m in seen if isinstance(m, CostComputed)]
            assert windows == ["day", "7d", "hour"]
            await pilot.press("c")
            await pilot.pause()
            assert not app.screen.query_one("#monitor-cost").display
            await pilot.press("w")  # closed: `w` does nothing
            await pilot.pause()
            assert services.cost.asked == ["day", "7d", "hour"]

    run(go)


def test_c_says_why_there_is_no_cost(tmp_path: Path) -> None:
    async def go() -> None:
        for services, reason in [
            (fake_services(tmp_path, no_gpu=True), NO_PROFILE_COST),
            (
                simulated_services(
                    "l40s", clock=ManualClock(), state_dir=tmp_path, profiles_dir=tmp_path
                ),
                SIMULATED_COST,
            ),
        ]:
            app = ApplianceApp(services=services)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("m", "c")
                await until(pilot, lambda a=app, r=reason: r[:40] in _cost_text(a))

    run(go)


def test_profile_cost_reads_the_profiles_inputs_and_store(tmp_path: Path) -> None:
    profile = load_profile(Path(__file__).parents[2] / "profiles" / "l40s-rag.yaml")
    assert profile.spec.cost is not None
    storage = profile.spec.storage.model_copy(update={"state_dir": tmp_path})
    here = profile.model_copy(update={"spec": profile.spec.model_copy(update={"storage": storage})})
    view = profile_cost(here)("day")
    assert not view.ok
    assert "no usage recorded yet" in view.text
    bare = profile.model_copy(update={"spec": profile.spec.model_copy(update={"cost": None})})
    view = profile_cost(bare)("hour")
    assert (view.ok, view.text, view.window) == (False, NO_COST_INPUTS, "hour")


def _notices(app: ApplianceApp) -> list[str]:
    return [notification.message for notification in app._notifications]


def test_pressing_the_greyed_apply_says_why(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("r")
            await until(pilot, lambda: bool(app.screen.query(CandidateCard)))
            await pilot.press("escape", "p")
            screen = app.screen
            assert isinstance(screen, DeployScreen)
            await until(pilot, lambda: screen.plan is not None)
            assert screen.check_action("apply", ()) is None  # still greyed out in the footer
            await pilot.press("a")
            await until(pilot, lambda: any("simulated" in n for n in _notices(app)))
            assert type(app.screen).__name__ == "DeployScreen"  # and nothing was asked

    run(go)


def test_the_simulate_picker_offers_every_box_the_cli_knows(tmp_path: Path) -> None:
    from textual.widgets import OptionList

    from appliance.catalog import load_catalog
    from appliance.hardware.simulate import EXAMPLES, resolve

    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path, no_gpu=True))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.box is not None)
            await pilot.press("s")
            assert isinstance(app.screen, SimulatePicker)
            options = app.screen.query_one(OptionList)
            names = [options.get_option_at_index(i).id for i in range(options.option_count)]
            await pilot.press("escape")
        catalog = {gpu.key for gpu in load_catalog().gpus}
        assert {resolve(str(name))[1].key for name in names} == catalog
        assert set(EXAMPLES) <= set(names)  # 2x4090 too: a box of several cards
        assert len(names) == len(set(names))

    run(go)


def test_f_does_not_offer_a_fallback_the_profile_cannot_serve(tmp_path: Path) -> None:
    async def go() -> None:
        services = fake_services(tmp_path)
        gateway = services.fallback
        assert isinstance(gateway, FakeGateway)
        gateway.remote_configured = False
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("m")
            await until(pilot, lambda: app.fallback_mode == "off")
            await pilot.press("f")
            await until(pilot, lambda: any("names no remote API" in n for n in _notices(app)))
            assert gateway.switches == []
            assert app.fallback_mode == "off"
            gateway.mode = "auto"  # set by hand in the state file before the remote was removed
            app.read_fallback()
            await until(pilot, lambda: app.fallback_mode == "auto")
            await pilot.press("f")
            await until(pilot, lambda: app.fallback_mode == "off")
            assert gateway.switches == ["off"]

    run(go)


def test_the_profile_given_with_profile_is_what_deploy_shows(tmp_path: Path) -> None:
    import dataclasses

    path = Path(__file__).parents[2] / "profiles" / "l40s-rag.yaml"
    services = dataclasses.replace(
        fake_services(tmp_path), deployed_profile=path, profile=load_profile(path)
    )

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            assert app.current_mode == "monitor"  # what runs, first
            await pilot.press("d")
            screen = app.screen
            assert isinstance(screen, DeployScreen)
            await until(pilot, lambda: screen.plan is not None)
            shown = str(screen.query_one("#deploy-profile").render())
            assert "No profile chosen" not in shown
            assert "l40s-rag" in shown
            assert str(path) in shown

    run(go)


def test_a_simulated_box_monitors_the_chosen_profile_and_a_model_that_cannot_fit(
    tmp_path: Path,
) -> None:
    """`--simulate rtx4090 --profile profiles/h100-70b-fp8.yaml`: 70B in FP8 cannot fit in 24 GB,
    so vLLM is not running (with sizing's reason), the GPU is idle, and the gateway is shown as
    the systemd unit it is, not a container."""
    import io

    from rich.console import Console

    from appliance.tui import build_parser, services_for
    from appliance.tui.widgets.panels import ServicesPanel

    profile = Path(__file__).parents[2] / "profiles" / "h100-70b-fp8.yaml"
    args = build_parser().parse_args(["--simulate", "rtx4090", "--profile", str(profile)])
    services = services_for(args)
    assert services.profile is not None
    assert services.deployed_profile == profile

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            assert app.current_mode == "monitor"
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.tick >= 2)
            snapshot = app.snapshot
            assert snapshot is not None
            vllm = snapshot.service("vllm")
            assert vllm is not None
            assert not vllm.healthy
            assert vllm.health_error is not None
            assert "not running" in vllm.health_error
            assert "does not fit on rtx4090" in vllm.health_error  # sizing's own words
            assert vllm.running_requests is None
            assert all((gpu.utilization_gpu_pct or 0) < 10 for gpu in snapshot.gpus)
            # Apply refuses the whole profile: nothing was started, not TEI, not the gateway.
            assert [(s.name, s.healthy) for s in snapshot.services] == [
                ("vllm", False), ("tei", False), ("gateway", False),
            ]  # fmt: skip
            gateway = snapshot.service("gateway")
            assert gateway is not None
            assert gateway.container_state is None
            panel = app.screen.query_one(ServicesPanel)
            console = Console(width=100, record=True, file=io.StringIO())
            console.print(panel.service(gateway, 100))
            shown = console.export_text()
            assert "systemd" in shown
            assert "container" not in shown

    run(go)


def test_a_simulated_box_with_a_profile_that_fits_serves_its_model(tmp_path: Path) -> None:
    from appliance.tui import build_parser, services_for

    profile = Path(__file__).parents[2] / "profiles" / "rtx4090-chat.yaml"

    args = build_parser().parse_args(["--simulate", "rtx4090", "--profile", str(profile)])
    services = services_for(args)

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.tick >= 2)
            snapshot = app.snapshot
            assert snapshot is not None
            vllm = snapshot.service("vllm")
            assert vllm is not None
            assert vllm.healthy
            assert vllm.model_names == (load_profile(profile).spec.model.served_name,)
            assert vllm.container_state == "running"

    run(go)


def test_a_key_made_on_a_simulated_box_says_it_is_throw_away(tmp_path: Path) -> None:
    # #16.17: a simulated box's gateway state lives in a temporary directory removed on exit,
    # so a key made there serves nothing; the screen and the shown-once dialog both say so.
    services = simulated_services("rtx4090", state_dir=tmp_path / "state")

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("k")
            await pilot.pause(0.1)
            note = app.screen.query_one("#keys-note")
            assert note.display
            assert "throw-away" in str(note.render())
            await pilot.press("n", *"grafana", "enter")
            await until(pilot, lambda: type(app.screen).__name__ == "ShowKeyOnce")
            shown = " ".join(str(widget.render()) for widget in app.screen.query("Static"))
            assert "throw-away" in shown
            await pilot.press("escape")
        await app.workers.wait_for_complete()

    run(go)


def test_the_monitor_shows_switched_models_and_pins_sleeps_and_wakes_them(
    tmp_path: Path,
) -> None:
    from appliance.tui.messages import ModelOrdered
    from appliance.tui.widgets.panels import ServicesPanel
    from tests.tui.conftest import FakeModels

    models = FakeModels()
    seen: list[Message] = []

    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path, ticks=None, models=models))
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.tick >= 3)
            await pilot.press("m")
            await pilot.pause()
            panel = app.screen.query_one(ServicesPanel)
            assert panel.selected_model == "qwen-7b"
            await pilot.press("n")  # select llama-8b, then pin it: woken and pinned
            await pilot.press("p")
            await until(pilot, lambda: any(isinstance(m, ModelOrdered) for m in seen))
            assert models.orders == [("llama-8b", "pin")]
            assert models.pinned == "llama-8b"
            await pilot.press("z")  # a pinned model is not put to sleep: one line says why
            await until(pilot, lambda: any(_refused(m) for m in seen))
            refused = next(m for m in seen if _refused(m))
            assert not refused.ok
            assert "pinned awake" in refused.outcome
            await pilot.press("p")  # pinned: `p` unpins
            await until(pilot, lambda: len(models.orders) == 3)
            await pilot.press("z")
            await until(pilot, lambda: len(models.orders) == 4)
            assert models.orders[2:] == [("llama-8b", "unpin"), ("llama-8b", "sleep")]
            await pilot.press("n", "u")  # phi-4 woken
            await until(pilot, lambda: len(models.orders) == 5)
            assert models.orders[-1] == ("phi-4", "wake")

    run(go)


def _refused(message: Message) -> bool:
    from appliance.tui.messages import ModelOrdered

    return isinstance(message, ModelOrdered) and not message.ok


def test_model_keys_hide_without_several_chat_models(tmp_path: Path) -> None:
    async def go() -> None:
        app = ApplianceApp(services=fake_services(tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.tick >= 3)
            await pilot.press("m")
            await pilot.pause()
            for action in ("next_model", "order"):
                assert not app.screen.check_action(action, ())

    run(go)
