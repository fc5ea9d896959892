"""The fallback mode, persisted so that it survives restarts of the gateway and of the box.

One small JSON file (`{"mode": "auto", "changed_at": …, "changed_by": "cli"}`) written
atomically. Anyone may switch the mode (the CLI, the TUI, the admin endpoint); the running
gateway re-reads the file when it changes, so a switch made by the CLI takes effect in about a
second without a restart. With no file yet, the profile's mode applies.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.gateway.files import atomic_write, locked
from appliance.vocabulary import FallbackMode


@dataclass(frozen=True)
class FallbackState:
    mode: FallbackMode
    changed_at: str | None  # None: never switched, the profile's default applies
    changed_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "changed_at": self.changed_at,
            "changed_by": self.changed_by,
        }


def read_fallback(state_file: Path, default: FallbackMode = FallbackMode.OFF) -> FallbackState:
    """The persisted mode, or `default` when it was never switched."""
    try:
        raw = state_file.read_bytes()
    except FileNotFoundError:
        return FallbackState(default, None, None)
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot read fallback state {state_file}: {error.strerror or error}",
            hint="run as the user that owns the gateway's state directory",
        ) from error
    try:
        document = json.loads(raw)
        return FallbackState(
            FallbackMode(document["mode"]), document.get("changed_at"), document.get("changed_by")
        )
    except (ValueError, KeyError, TypeError) as error:
        raise BadInputError(
            f"fallback state {state_file} is damaged ({type(error).__name__})",
            hint="set the mode again: `appliance fallback off|auto|always`",
        ) from error


def write_fallback(state_file: Path, mode: FallbackMode | str, *, changed_by: str) -> FallbackState:
    """Persist `mode` (a `FallbackMode` or its name); raises `BadInputError` for a bad name."""
    parsed = mode if isinstance(mode, FallbackMode) else FallbackMode.parse(mode)
    state = FallbackState(parsed, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), changed_by)
    with locked(state_file):
        atomic_write(state_file, (json.dumps(state.to_json()) + "\n").encode(), mode=0o600)
    return state


def set_fallback(
    state_file: Path, mode: str, *, remote_configured: bool, changed_by: str = "cli"
) -> FallbackState:
    """Switch the mode for the running gateway and for every later start (`appliance fallback`).

    Raises `BadInputError` for an unknown mode, or for `auto`/`always` without a remote API.
    """
    parsed = FallbackMode.parse(mode)
    if parsed is not FallbackMode.OFF and not remote_configured:
        raise BadInputError(
            f"fallback mode {parsed.value} needs a remote API, and the profile names none",
            hint="add gateway.fallback.remote (base_url, api_key_env or api_key_file) to the "
            "profile, or keep the mode off",
        )
    return write_fallback(state_file, parsed, changed_by=changed_by)
