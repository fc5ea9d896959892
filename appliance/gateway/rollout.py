"""Model updates without an outage (issue #19 point 3): what apply tells the running gateway.

`apply` writes one small JSON file beside the fallback state (`<state dir>/gateway/rollout.json`)
and the gateway re-reads it when it changes, as it does the fallback mode:

- blue/green (both engines fit the GPUs): the new chat engine starts beside the old one on the
  profile's other chat port; once it is healthy apply writes `chat_upstream` (its OpenAI base
  URL), the gateway sends every new request there, and apply stops the old engine once the
  gateway reports none of its requests left (`/health`'s `rollout`).
- in place (they do not fit): apply writes `updating: true` before it stops the old engine; the
  gateway then sends chat requests to the remote API (fallback auto or always) or holds them,
  bounded, and answers 503 with Retry-After beyond; `updating: false` once the new one is
  healthy releases them.

Several chat models (spec.switching) say the same per served name: `upstreams` holds each
switched model's engine that a blue/green update moved (its requests and its sleep/wake calls
go there), `held` the models whose requests wait while apply replaces their engine or puts it
to sleep to start another, and `switching_paused` that apply is changing the engines: no model
is woken meanwhile (a request for a sleeping one waits, bounded), since a wake would take the
GPU memory the new engine starts in and leave two engines awake.

What must stay true: with no file, the profile's own port is the chat engine's; a damaged file
changes nothing (the gateway keeps what it had, and says so once).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.gateway.files import atomic_write, locked

ROLLOUT_FILE: Final = "rollout.json"


@dataclass(frozen=True)
class Rollout:
    """The chat engine's current OpenAI base URL (None: the profile's port), and whether it is
    being replaced in place right now; for several chat models, the same per served name."""

    chat_upstream: str | None = None
    updating: bool = False
    upstreams: Mapping[str, str] = field(default_factory=dict)
    held: tuple[str, ...] = ()
    switching_paused: bool = False

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "chat_upstream": self.chat_upstream,
            "updating": self.updating,
        }
        if self.upstreams or self.held or self.switching_paused:
            document |= {
                "upstreams": dict(self.upstreams),
                "held": list(self.held),
                "switching_paused": self.switching_paused,
            }
        return document


def read_rollout(path: Path) -> Rollout:
    """The rollout apply last wrote; `Rollout()` when it never wrote one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Rollout()
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot read the rollout state {path}: {error.strerror or error}",
            hint="run as the user that owns the gateway's state directory",
        ) from error
    try:
        document = json.loads(raw)
        upstream = document.get("chat_upstream")
        if upstream is not None and not isinstance(upstream, str):
            raise TypeError("chat_upstream")
        upstreams = document.get("upstreams") or {}
        held = document.get("held") or []
        if not all(isinstance(v, str) for v in (*upstreams, *upstreams.values(), *held)):
            raise TypeError("upstreams")
        return Rollout(
            upstream,
            bool(document.get("updating", False)),
            dict(upstreams),
            tuple(held),
            bool(document.get("switching_paused", False)),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise BadInputError(
            f"rollout state {path} is damaged ({type(error).__name__})",
            hint="run `appliance apply` again: it rewrites it",
        ) from error


def write_rollout(path: Path, rollout: Rollout) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        atomic_write(path, (json.dumps(rollout.to_json()) + "\n").encode(), mode=0o600)
