"""Several chat models (spec.switching): an admin's orders to the running gateway.

`ModelControl.order(model, action)` pins a model awake, unpins it, puts one to sleep or wakes
one through the gateway's `POST /admin/models`, with the admin key the gateway itself reads
(`gateway.admin_key_env` / `gateway.admin_key_file`, else `<state_dir>/gateway/admin.key`). The
gateway does the engine calls on 127.0.0.1; no face reaches an engine's sleep routes.

`report()` is the gateway's own account of them (`GET /admin/models`: each model's state,
requests in flight and held, the pin, the switches). Over TLS the gateway's own certificate is
trusted (`gateway_trust`).

`order` returns the gateway's answer in a line for a person, or raises an `ApplianceError` with
the gateway's own message; nothing here prints. Blocking: the TUI calls it in a worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx

from appliance.errors import (
    ApplianceError,
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
    RefusedError,
)

if TYPE_CHECKING:
    import ssl

    from appliance.gateway.config import SecretSource
    from appliance.profile import Profile

ACTIONS: Final = ("pin", "unpin", "sleep", "wake")

# A wake reloads weights: the gateway answers once the switch is done.
_TIMEOUT = httpx.Timeout(10.0, read=600.0)


@dataclass(frozen=True)
class ModelControl:
    """The running gateway's admin route for its switched models.

    `models`: the served names the profile switches, checked before the gateway is asked (empty:
    the gateway alone judges)."""

    base_url: str
    admin_key: SecretSource | None
    transport: httpx.BaseTransport | None = None
    verify: ssl.SSLContext | bool = True
    models: tuple[str, ...] = ()

    @classmethod
    def of(cls, profile: Profile) -> ModelControl:
        """The control of `profile`'s gateway; `BadInputError` when it switches no models."""
        from appliance.gateway.config import GatewayConfig, gateway_trust
        from appliance.operations.status import profile_endpoints

        spec = profile.spec
        if spec.switching is None:
            raise BadInputError(
                f"profile {profile.metadata.name!r} serves one chat model: it has no "
                "spec.switching, so there is nothing to pin, sleep or wake",
                hint="add spec.switching with its models (README: Several models on one box)",
            )
        gateway = next(e for e in profile_endpoints(profile) if e.kind == "gateway")
        config = GatewayConfig.from_profile(profile)
        names = tuple(model.served_name for model in spec.switched_models)
        return cls(gateway.base_url, config.admin_key, verify=gateway_trust(profile), models=names)

    def report(self) -> dict[str, Any]:
        """The gateway's report of its switched models (`GET /admin/models`)."""
        answer = self._call("GET", None)
        body = _checked(answer, "show models")
        if not isinstance(body.get("models"), dict):
            raise ApplianceError(f"show models: unexpected answer {json.dumps(body)[:200]}")
        return body

    def order(self, model: str, action: str) -> str:
        """Carry out `action` on `model`; what the gateway reports after it, in one line."""
        return _outcome(self.carry_out(model, action), model, action)

    def carry_out(self, model: str, action: str) -> dict[str, Any]:
        """Carry out `action` on `model`; the gateway's report after it (as `report()`)."""
        if action not in ACTIONS:
            raise BadInputError(f"unknown action {action!r}", hint=f"one of {', '.join(ACTIONS)}")
        if self.models and model not in self.models:
            raise BadInputError(
                f"{model!r} is not one of this profile's switched models",
                hint=f"one of {', '.join(self.models)}",
            )
        answer = self._call("POST", {"model": model, "action": action})
        return _checked(answer, f"{action} {model}")

    def _call(self, method: str, order: dict[str, str] | None) -> httpx.Response:
        if self.admin_key is None:
            raise EnvironmentNotReadyError(
                "the gateway has no admin key, so its models cannot be shown, pinned, slept "
                "or woken",
                hint="set gateway.admin_key_env or gateway.admin_key_file in the profile",
            )
        key = self.admin_key.read("gateway admin key")
        try:
            with httpx.Client(
                base_url=self.base_url,
                transport=self.transport,
                timeout=_TIMEOUT,
                verify=self.verify,
                trust_env=False,  # the gateway is on this box, never behind a proxy
            ) as client:
                return client.request(
                    method,
                    "/admin/models",
                    json=order,
                    headers={"authorization": f"Bearer {key}"},
                )
        except httpx.HTTPError as error:
            raise EnvironmentNotReadyError(
                f"the gateway at {self.base_url} did not answer: {error}",
                hint="is the gateway running? (`appliance status` shows it)",
            ) from None


def _checked(answer: httpx.Response, doing: str) -> dict[str, Any]:
    """The gateway's JSON answer, or its refusal as an `ApplianceError` with its exit code."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code == 200 and isinstance(body, dict):
        return body
    message = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
    text = str(message or answer.text[:200] or f"HTTP {answer.status_code}")
    if answer.status_code in (401, 403):
        raise RefusedError(
            f"{doing}: the gateway refused the admin key ({text})",
            hint="the key must be the one the gateway reads: gateway.admin_key_env, "
            "gateway.admin_key_file or <state_dir>/gateway/admin.key",
        )
    if answer.status_code in (400, 404, 409):
        raise BadInputError(f"{doing}: {text}")
    raise OperationFailedError(f"{doing}: {text} (HTTP {answer.status_code})")


def _outcome(body: dict[str, Any], model: str, action: str) -> str:
    try:
        models = body["models"]
        pinned = body.get("pinned")
        states = ", ".join(f"{name} {shown['state']}" for name, shown in models.items())
    except (KeyError, TypeError, AttributeError) as error:
        raise ApplianceError(f"{action} {model}: unexpected answer {json.dumps(body)[:200]}") from (
            error
        )
    return f"{action} {model}: done · {states}" + (f" · {pinned} pinned" if pinned else "")
