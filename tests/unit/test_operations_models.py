"""`ModelControl`: an admin's orders to the gateway's switched models (the route itself is
tested against the real gateway in tests/integration/test_gateway_switching.py), and every
refusal in one line with an exit code."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from appliance.errors import BadInputError, EnvironmentNotReadyError, ExitCode, RefusedError
from appliance.gateway.config import SecretSource
from appliance.operations.models import ACTIONS, ModelControl
from appliance.profile import load_profile

KEY = "admin-key-for-tests-0123456789"


def gateway(answers: dict[str, tuple[int, object]], seen: list[dict[str, object]]) -> ModelControl:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/models"
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"error": {"message": "needs the admin key"}})
        order = json.loads(request.content)
        seen.append(order)
        status, body = answers[order["action"]]
        return httpx.Response(status, json=body)

    return ModelControl(
        "http://gateway.test",
        SecretSource(env="MODELS_TEST_ADMIN_KEY"),
        httpx.MockTransport(handler),
    )


REPORT = {"models": {"alpha": {"state": "asleep-1"}, "beta": {"state": "awake"}}, "pinned": "beta"}


def test_an_order_is_sent_with_the_admin_key_and_its_outcome_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELS_TEST_ADMIN_KEY", KEY)
    seen: list[dict[str, object]] = []
    control = gateway({"pin": (200, REPORT)}, seen)
    assert control.order("beta", "pin") == (
        "pin beta: done · alpha asleep-1, beta awake · beta pinned"
    )
    assert seen == [{"model": "beta", "action": "pin"}]


def test_refusals_are_one_clear_line_with_an_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_TEST_ADMIN_KEY", KEY)
    pinned = {"error": {"message": "beta is pinned awake: unpin it first"}}
    control = gateway({"sleep": (409, pinned)}, [])
    with pytest.raises(BadInputError, match="beta is pinned awake") as caught:
        control.order("beta", "sleep")
    assert caught.value.exit_code is ExitCode.BAD_INPUT
    with pytest.raises(BadInputError, match="unknown action 'explode'"):
        control.order("beta", "explode")


def test_no_admin_key_or_no_gateway_is_an_environment_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(EnvironmentNotReadyError, match="no admin key"):
        ModelControl("http://gateway.test", None).order("beta", "wake")
    monkeypatch.setenv("MODELS_TEST_ADMIN_KEY", KEY)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    control = ModelControl(
        "http://gateway.test", SecretSource(env="MODELS_TEST_ADMIN_KEY"), httpx.MockTransport(down)
    )
    with pytest.raises(EnvironmentNotReadyError, match="did not answer") as caught:
        control.order("beta", "wake")
    assert KEY not in caught.value.render()


def test_the_report_and_a_wrong_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_TEST_ADMIN_KEY", KEY)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"error": {"message": "needs the admin key"}})
        assert (request.method, request.url.path) == ("GET", "/admin/models")
        return httpx.Response(200, json=REPORT)

    source = SecretSource(env="MODELS_TEST_ADMIN_KEY")
    control = ModelControl("http://gateway.test", source, httpx.MockTransport(handler))
    assert control.report() == REPORT
    monkeypatch.setenv("MODELS_TEST_ADMIN_KEY", "a-wrong-key-0123456789")
    with pytest.raises(RefusedError, match="refused the admin key") as caught:
        control.report()
    assert "a-wrong-key" not in caught.value.render()


def test_a_model_the_profile_does_not_switch_is_refused_before_the_gateway_is_asked() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError(request)

    control = ModelControl(
        "http://gateway.test",
        SecretSource(env="MODELS_TEST_ADMIN_KEY"),
        httpx.MockTransport(never),
        models=("alpha", "beta"),
    )
    with pytest.raises(BadInputError, match="'gamma' is not one of") as caught:
        control.order("gamma", "pin")
    assert caught.value.hint == "one of alpha, beta"


def test_a_profile_without_switching_has_no_models_to_control() -> None:
    profile = load_profile(Path(__file__).parents[2] / "profiles" / "rtx4090-chat.yaml")
    with pytest.raises(BadInputError, match=r"no spec\.switching"):
        ModelControl.of(profile)


def test_the_cli_offers_the_actions_the_operation_carries_out() -> None:
    from appliance.cli import models

    assert models.ACTIONS == ACTIONS
