"""Several chat models (spec.switching): an admin's orders to the running gateway.

`ModelControl.order(model, action)` pins a model awake, unpins it, puts one to sleep or wakes
one through the gateway's `POST /admin/models`, with the admin key the gateway itself reads
(`gateway.admin_key_env` / `gateway.admin_key_file`, else `<state_dir>/gateway/admin.key`). The
gateway does the engine calls on 127.0.0.1; no face reaches an engine's sleep routes.

It returns the gateway's answer in a line for a person, or raises an `ApplianceError` with the
gateway's own message; it never prints. Blocking: the TUI calls it in a worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import httpx

from appliance.errors import (
    ApplianceError,
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
)

if TYPE_CHECKING:
    from appliance.gateway.config import SecretSource
    from appliance.profile import Profile

ACTIONS: Final = ("pin", "unpin", "sleep", "wake")

# A wake reloads weights: the gateway answers once the switch is done.
_TIMEOUT = httpx.Timeout(10.0, read=600.0)


@dataclass(frozen=True)
class ModelControl:
    """The running gateway's admin route for its switched models."""

    base_url: str
    admin_key: SecretSource | None
    transport: httpx.BaseTransport | None = None

    @classmethod
    def of(cls, profile: Profile) -> ModelControl:
        from appliance.gateway.config import GatewayConfig
        from appliance.operations.status import profile_endpoints

        gateway = next(e for e in profile_endpoints(profile) if e.kind == "gateway")
        config = GatewayConfig.from_profile(profile)
        return cls(gateway.base_url, config.admin_key)

    def order(self, model: str, action: str) -> str:
        """Carry out `action` on `model`; what the gateway reports after it, in one line."""
        if action not in ACTIONS:
            raise BadInputError(f"unknown action {action!r}", hint=f"one of {', '.join(ACTIONS)}")
        if self.admin_key is None:
            raise EnvironmentNotReadyError(
                "the gateway has no admin key, so its models cannot be pinned, slept or woken",
                hint="set gateway.admin_key_env or gateway.admin_key_file in the profile",
            )
        key = self.admin_key.read("gateway admin key")
        try:
            with httpx.Client(
                base_url=self.base_url, transport=self.transport, timeout=_TIMEOUT
            ) as client:
                answer = client.post(
                    "/admin/models",
                    json={"model": model, "action": action},
                    headers={"authorization": f"Bearer {key}"},
                )
        except httpx.HTTPError as error:
            raise EnvironmentNotReadyError(
                f"the gateway at {self.base_url} did not answer: {error}",
                hint="is the gateway running? (`appliance status` shows it)",
            ) from None
        return _outcome(answer, model, action)


def _outcome(answer: httpx.Response, model: str, action: str) -> str:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code != 200:
        message = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        text = str(message or answer.text[:200] or f"HTTP {answer.status_code}")
        if answer.status_code in (400, 404, 409):
            raise BadInputError(f"{action} {model}: {text}")
        raise OperationFailedError(f"{action} {model}: {text} (HTTP {answer.status_code})")
    try:
        models = body["models"]
        pinned = body.get("pinned")
        states = ", ".join(f"{name} {shown['state']}" for name, shown in models.items())
    except (KeyError, TypeError, AttributeError) as error:
        raise ApplianceError(f"{action} {model}: unexpected answer {json.dumps(body)[:200]}") from (
            error
        )
    return f"{action} {model}: done · {states}" + (f" · {pinned} pinned" if pinned else "")
