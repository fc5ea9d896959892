"""`ApplianceApp`: the screens, the keys that move between them, and the app-wide workers.

The app holds what several screens show (the box, the latest monitor snapshot, the fallback
mode, the profile chosen in Recommend) as reactives; screens watch them and render ("attributes
down"). Workers post messages back ("messages up"); the box probe and the fallback switch run in
threads, the monitor loop is an async worker (its HTTP is async, its NVML calls go to threads
inside `Monitor`). A worker that fails becomes a notice, never a traceback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from appliance.errors import ApplianceError
from appliance.tui.messages import (
    BoxDetected,
    FallbackRead,
    FallbackSwitched,
    MetricsSampled,
    MonitorStopped,
    ProfileChosen,
)
from appliance.tui.notices import notify_worker_failure
from appliance.tui.screens.base import AppState
from appliance.tui.screens.box import BoxScreen
from appliance.tui.screens.deploy import DeployScreen
from appliance.tui.screens.help import HelpScreen
from appliance.tui.screens.keys import KeysScreen
from appliance.tui.screens.logs import LogsScreen
from appliance.tui.screens.monitor import MonitorScreen
from appliance.tui.screens.recommend import RecommendScreen
from appliance.tui.services import Services
from appliance.vocabulary import FALLBACK_MODES

if TYPE_CHECKING:
    from appliance.hardware.box import Box
    from appliance.monitor.snapshot import Snapshot
    from appliance.profile import Profile

NO_REMOTE_FALLBACK = (
    "auto and always send requests to a remote API, and this profile names no remote API. Add "
    "spec.gateway.fallback.remote (base_url, api_key_env) to the profile and apply it."
)
SPARK_POINTS = 120  # history handed to the Monitor screen per series: two minutes at 1 Hz


class ApplianceApp(App[None]):
    """The admin's app. Give it its services; it never reaches for the machine by itself."""

    CSS_PATH = "app.tcss"
    TITLE = "llm-appliance"
    MODES: ClassVar[dict[str, str | type]] = {  # type: ignore[assignment]
        "box": BoxScreen,
        "recommend": RecommendScreen,
        "deploy": DeployScreen,
        "monitor": MonitorScreen,
        "logs": LogsScreen,
        "keys": KeysScreen,
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b", "show('box')", "Box", tooltip="GPUs, host, Docker and what to fix"),
        Binding("r", "show('recommend')", "Recommend", tooltip="What to run on this box"),
        Binding("d", "show('deploy')", "Deploy", tooltip="The plan for the chosen profile"),
        Binding("m", "show('monitor')", "Monitor", tooltip="Live GPUs, engines and alerts"),
        Binding("l", "show('logs')", "Logs", tooltip="Follow a service's container logs"),
        Binding("k", "show('keys')", "Keys", tooltip="Gateway API keys"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+t", "toggle_theme", "Light/dark theme", show=False),
        Binding("q", "quit", "Quit"),
    ]

    # State several screens show. The screens watch these and redraw their own widgets; the
    # app itself draws nothing, so a change must not repaint the whole screen (repaint=False).
    box: reactive[Box | None] = reactive(None, repaint=False)
    snapshot: reactive[Snapshot | None] = reactive(None, repaint=False)
    series: reactive[dict[str, tuple[float | None, ...]]] = reactive(dict, repaint=False)
    monitor_state: reactive[str] = reactive("starting", repaint=False)
    fallback_mode: reactive[str | None] = reactive(None, repaint=False)
    chosen: reactive[ProfileChosen | None] = reactive(None, repaint=False)

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        if services.simulate:
            self.sub_title = f"simulated {services.simulate}"

    # -- start-up

    def on_mount(self) -> None:
        profile = self.services.profile
        if profile is not None:  # Deploy shows the applied profile until Recommend picks another
            self.chosen = ProfileChosen(profile, "", self.services.deployed_profile)
        self.start_services()
        self.switch_mode("monitor" if self.services.deployed_profile else "box")

    def start_services(self) -> None:
        self.detect_box()
        if self.services.monitor is not None:
            self.run_monitor()
        else:
            self.monitor_state = "not deployed"
        if self.services.fallback is not None:
            self.read_fallback()

    @property
    def state(self) -> AppState:
        """The app as its screens see it (a static check that it offers what they use)."""
        return self

    def restart_simulated(self, name: str) -> None:
        """Swap to a simulated box (`--simulate NAME`) without leaving the app."""
        from appliance.tui.services import simulated_services

        try:
            services = simulated_services(name, profiles_dir=self.services.profiles_dir)
        except ApplianceError as error:
            self.notify(error.render(), severity="error")
            return
        self.workers.cancel_group(self, "monitor")
        # The other screens hold state of the old box (logs followed, keys listed, a plan):
        # they are rebuilt from scratch when next shown.
        for mode, screen in self.MODES.items():
            if mode != self.current_mode:
                self.remove_mode(mode)
                self.add_mode(mode, screen)
        self.services = services
        self.sub_title = f"simulated {name}"
        self.box = None
        self.snapshot = None
        self.series = {}
        self.chosen = None
        self.fallback_mode = None
        self.start_services()
        self.notify(f"Now simulating {name}: nothing on this machine is probed or changed.")

    def watch_deployed(self, profile: Profile, source: Path | None) -> None:
        """After a deploy on a real box: monitor what now runs, and make Monitor the default."""
        from appliance.tui.services import watching

        if self.services.simulate is not None:
            return
        self.workers.cancel_group(self, "monitor")
        applied = dataclasses.replace(self.services, deployed_profile=source, profile=profile)
        self.services = watching(applied, profile)
        self.run_monitor()
        self.read_fallback()

    # -- workers

    @work(thread=True, exclusive=True, exit_on_error=False, group="detect")
    def detect_box(self) -> None:
        box = self.services.detect_box()
        if not get_current_worker().is_cancelled:
            self.post_message(BoxDetected(box))

    @work(exclusive=True, exit_on_error=False, group="monitor")
    async def run_monitor(self) -> None:
        factory = self.services.monitor
        assert factory is not None
        self.monitor_state = "running"
        async with factory() as monitor:
            async for snapshot in monitor.run(self.services.monitor_ticks):
                history = monitor.history
                series = {key: history.values(key)[-SPARK_POINTS:] for key in history}
                self.post_message(MetricsSampled(snapshot, series))
        self.post_message(MonitorStopped("the monitor stopped after its last tick"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="fallback")
    def read_fallback(self) -> None:
        control = self.services.fallback
        assert control is not None
        self.post_message(FallbackRead(control.read()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="fallback")
    def switch_fallback(self, mode: str) -> None:
        control = self.services.fallback
        assert control is not None
        self.post_message(FallbackSwitched(control.switch(mode)))

    # -- messages

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "monitor" and event.state is WorkerState.ERROR:
            self.monitor_state = "failed"
        notify_worker_failure(event)

    @on(BoxDetected)
    def _box_detected(self, message: BoxDetected) -> None:
        self.box = message.box

    @on(MetricsSampled)
    def _metrics_sampled(self, message: MetricsSampled) -> None:
        self.series = message.series
        self.snapshot = message.snapshot

    @on(MonitorStopped)
    def _monitor_stopped(self, message: MonitorStopped) -> None:
        self.monitor_state = "stopped"

    @on(FallbackRead)
    def _fallback_read(self, message: FallbackRead) -> None:
        self.fallback_mode = message.mode

    @on(FallbackSwitched)
    def _fallback_switched(self, message: FallbackSwitched) -> None:
        self.fallback_mode = message.mode
        self.notify(f"Gateway fallback is now {message.mode}.")

    # -- actions

    def next_fallback_mode(self) -> str | None:
        """off → auto → always → off, skipping the modes the profile cannot serve (auto and
        always need a remote API); None when the gateway is not configured or not read yet."""
        control = self.services.fallback
        if control is None or self.fallback_mode is None:
            return None
        modes = FALLBACK_MODES if control.remote_configured else ("off",)
        index = FALLBACK_MODES.index(self.fallback_mode) if self.fallback_mode in modes else -1
        following = FALLBACK_MODES[index + 1 :] + FALLBACK_MODES[: index + 1]
        return next(mode for mode in following if mode in modes)

    def action_cycle_fallback(self) -> None:
        mode = self.next_fallback_mode()
        if mode is None:
            if self.services.fallback is None:
                self.notify("The gateway is not configured here: there is no fallback to switch.")
            else:
                self.notify("Still reading the gateway's fallback mode; try again in a moment.")
            return
        if mode == self.fallback_mode:
            self.notify(NO_REMOTE_FALLBACK, title="Fallback stays off", severity="warning")
            return
        self.switch_fallback(mode)

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette's commands, with the last bench result (a view without a key of its
        own: the footer and Help stay as they are)."""
        yield from super().get_system_commands(screen)
        if self.services.last_bench is not None:
            yield SystemCommand(
                "Last bench result",
                "The newest `appliance bench` kept on this box: table and chart",
                self.action_last_bench,
            )

    def action_last_bench(self) -> None:
        from appliance.tui.screens.bench import BenchScreen

        read = self.services.last_bench
        if read is not None and not isinstance(self.screen, BenchScreen):
            self.push_screen(BenchScreen(read()))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"
