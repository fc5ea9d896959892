"""Keys: the gateway's API keys — list, create (the key is shown once), revoke.

Backed by `appliance.gateway.keys` through `Services.keys` (what `appliance keys …` calls); the
key itself exists only in the dialog that shows it, never in the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import Worker

from appliance.tui.messages import KeyCreated, KeyRevoked, KeysListed
from appliance.tui.notices import notify_worker_failure
from appliance.tui.screens.base import ApplianceScreen, this_screen

if TYPE_CHECKING:
    from appliance.gateway.keys import CreatedKey, KeyInfo


class NameKey(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Name of the new key (who or what uses it, e.g. wiki-bot):")
            yield Input(placeholder="name", id="key-name")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class ShowKeyOnce(ModalScreen[None]):
    """The new key, once: it is not stored anywhere it could be shown from again."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "copy", "Copy to clipboard"),
        Binding("escape,enter", "dismiss(None)", "Done"),
    ]

    def __init__(self, created: CreatedKey, *, throw_away: bool = False) -> None:
        super().__init__()
        self.created = created
        self.throw_away = throw_away

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(
                Text.assemble(
                    ("Key ", "bold"),
                    (self.created.info.name, "bold"),
                    (" created. It is shown only now: copy it into the tool that uses it.", "bold"),
                )
            )
            yield Input(self.created.key, id="new-key")
            if self.throw_away:
                yield Static(_THROW_AWAY, classes="hint")
            yield Static(
                "c copies it (terminals with OSC 52), Enter or Escape closes.", classes="hint"
            )
            yield Footer(compact=True, show_command_palette=False)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.created.key)
        self.notify("Key copied to the clipboard.")


# A simulated box keeps its gateway state in a temporary directory removed when the app quits.
_THROW_AWAY = (
    "Simulated box: keys made here are throw-away. They live in a temporary directory removed "
    "when the app quits and open no real gateway; make real ones on the box."
)


class ConfirmRevoke(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "dismiss(True)", "Revoke"),
        Binding("n,escape", "dismiss(False)", "Keep"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.key_name = name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(
                f"Revoke key {self.key_name!r}? Tools using it get 401 from the next request. (y/n)"
            )
            yield Footer(compact=True, show_command_palette=False)


class KeysScreen(ApplianceScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "create", "New key"),
        Binding("delete,x", "revoke", "Revoke"),
        Binding("g", "reload", "Reload", show=False, tooltip="Read the keys file again"),
        this_screen("k", "keys", "Keys"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            "Gateway API keys: each tool sends its own as `Authorization: Bearer …`. A new key "
            "is shown once; only its hash is kept. Revoking takes effect on the next request.",
            id="keys-intro",
        )
        yield Static(id="keys-note", classes="callout")
        table: DataTable[str] = DataTable(cursor_type="row", id="keys-table")
        table.add_columns("name", "id", "scope", "created", "rate limit")
        yield table
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        note = self.query_one("#keys-note", Static)
        if self.appliance.services.keys is None:
            note.update(
                "The gateway is not configured here: start `llm-appliance --profile PROFILE` "
                "on the box (or `appliance keys …`)."
            )
            return
        if self.appliance.services.simulate is None:
            note.display = False
        else:
            note.update(_THROW_AWAY)
        self.action_reload()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("create", "revoke", "reload") and self.appliance.services.keys is None:
            return None
        return True

    @work(thread=True, exclusive=True, exit_on_error=False, group="keys")
    def action_reload(self) -> None:
        store = self.appliance.services.keys
        assert store is not None
        self.post_message(KeysListed(tuple(store.list())))

    @on(KeysListed)
    def _listed(self, message: KeysListed) -> None:
        self._fill(message.keys)

    def _fill(self, keys: tuple[KeyInfo, ...]) -> None:
        table: DataTable[str] = self.query_one(DataTable)
        table.clear()
        for info in keys:
            table.add_row(
                info.name,
                info.key_id,
                str(info.scope),
                info.created_at,
                "none"
                if info.rate_limit_per_minute is None
                else f"{info.rate_limit_per_minute}/min",
                key=info.name,
            )

    def action_create(self) -> None:
        def named(name: str | None) -> None:
            if name:
                self.create(name)

        self.app.push_screen(NameKey(), named)

    @work(thread=True, exclusive=True, exit_on_error=False, group="keys")
    def create(self, name: str) -> None:
        store = self.appliance.services.keys
        assert store is not None
        self.post_message(KeyCreated(store.create(name)))

    @on(KeyCreated)
    def _created(self, message: KeyCreated) -> None:
        throw_away = self.appliance.services.simulate is not None
        self.app.push_screen(ShowKeyOnce(message.created, throw_away=throw_away))
        self.action_reload()

    def action_revoke(self) -> None:
        table: DataTable[str] = self.query_one(DataTable)
        if table.row_count == 0:
            return
        name = str(table.get_row_at(table.cursor_row)[0])

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.revoke(name)

        self.app.push_screen(ConfirmRevoke(name), confirmed)

    @work(thread=True, exclusive=True, exit_on_error=False, group="keys")
    def revoke(self, name: str) -> None:
        store = self.appliance.services.keys
        assert store is not None
        self.post_message(KeyRevoked(store.revoke(name)))

    @on(KeyRevoked)
    def _revoked(self, message: KeyRevoked) -> None:
        self.notify(f"Key {message.info.name!r} revoked.")
        self.action_reload()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        notify_worker_failure(event)
