"""The base of the app's main screens: typed access to the app and its shared state."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
