"""The base of the app's main screens: typed access to the app's shared state.

Screens see the app through `AppState`, a protocol, rather than the `ApplianceApp` class: the
app module imports every screen, so a screen importing the app closed an import circle. The app
states that it satisfies the protocol (`ApplianceApp.state`), so mypy checks both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from textual.binding import Binding
from textual.screen import Screen

if TYPE_CHECKING:
    from pathlib import Path

    from appliance.hardware.box import Box
    from appliance.monitor.snapshot import Snapshot
    from appliance.profile import Profile
    from appliance.tui.messages import ProfileChosen
    from appliance.tui.services import Services


class AppState(Protocol):
    """What the screens read and drive on the app."""

    services: Services
    box: Box | None
    series: dict[str, tuple[float | None, ...]]
    monitor_state: str
    snapshot: Snapshot | None
    chosen: ProfileChosen | None

    def detect_box(self) -> object: ...  # a worker: returns at once

    def restart_simulated(self, name: str) -> None: ...

    def watch_deployed(self, profile: Profile, source: Path | None) -> None: ...

    def action_show(self, mode: str) -> None: ...

    def action_cycle_fallback(self) -> None: ...


class ApplianceScreen(Screen[None]):
    @property
    def appliance(self) -> AppState:
        return cast("AppState", self.app)


def this_screen(key: str, mode: str, name: str) -> Binding:
    """The app's key for the screen one is on, hidden from its footer: at 80 columns the
    footer has room only for keys that do something (and Quit must stay in sight)."""
    return Binding(key, f"app.show('{mode}')", name, show=False)
