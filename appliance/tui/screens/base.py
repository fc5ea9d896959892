"""The base of the app's main screens: typed access to the app and its shared state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.binding import Binding
from textual.screen import Screen

if TYPE_CHECKING:
    from appliance.tui.app import ApplianceApp


class ApplianceScreen(Screen[None]):
    @property
    def appliance(self) -> ApplianceApp:
        # Imported here: the app module imports every screen.
        from appliance.tui.app import ApplianceApp

        assert isinstance(self.app, ApplianceApp)
        return self.app


def this_screen(key: str, mode: str, name: str) -> Binding:
    """The app's key for the screen one is on, hidden from its footer: at 80 columns the
    footer has room only for keys that do something (and Quit must stay in sight)."""
    return Binding(key, f"app.show('{mode}')", name, show=False)
