"""A model update of several chat models (spec.switching, issue #19 point 3), the gateway's
side: apply's rollout file moves one switched model to its new engine (blue/green: requests
and the sleep/wake calls alike), holds that model's requests while its engine is replaced in
place, and pauses switching while apply changes the engines. vLLM doubles with sleep mode on
127.0.0.1 (threads of this process), the gateway in-process.

Request counts are bounded; nothing asserts wall-clock time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.rollout import Rollout, write_rollout
from appliance.gateway.switching import SwitchRules
from tests.doubles import threaded_engine_double
from tests.integration.test_gateway_rollout import _rollout, _until
from tests.integration.test_gateway_switching import (
    _asleep,
    _chat,
    _config,
    engines,
    gateway,
)


@pytest.fixture(autouse=True)
def _dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")


def _new_beta() -> Any:
    return threaded_engine_double(
        "--model", "/m/beta-new", "--served-model-name", "beta", "--enable-sleep-mode"
    )


async def _held(client: Any, count: int) -> None:
    """Until the gateway reports `count` requests held for the update."""

    async def held() -> bool:
        return bool((await _rollout(client))["held"] == count)

    await _until(held)


def _rollout_config(
    tmp_path: Path,
    doubles: dict[str, Any],
    rules: SwitchRules | None = None,
    remote: Any = None,
) -> Any:
    config = _config(tmp_path, doubles, rules or SwitchRules(hold_timeout_s=30.0), remote)
    return dataclasses.replace(config, rollout_file=tmp_path / "rollout.json")


async def _beta_awake(app: Any, client: Any) -> Any:
    """beta made the awake model by a request; the gateway's switcher."""
    switcher = app.switcher
    assert switcher is not None
    assert (await _chat(client, "beta")).status_code == 200
    assert switcher.states["beta"] == "awake"
    return switcher


def test_blue_green_moves_a_switched_model_and_its_sleep_calls_to_the_new_engine(
    tmp_path: Path,
) -> None:
    async def scenario(doubles: dict[str, Any], new: Any) -> None:
        async with gateway(_rollout_config(tmp_path, doubles)) as (app, client):
            switcher = await _beta_awake(app, client)
            write_rollout(
                tmp_path / "rollout.json",
                Rollout(upstreams={"beta": f"{new.url}/v1"}, switching_paused=True),
            )

            async def moved() -> bool:
                report = (await _rollout(client))["models"]
                return bool(report["beta"]["upstream"] == f"{new.url}/v1")

            await _until(moved)
            doubles["beta"].shutdown()  # the old engine is gone: beta still answers
            answers = await asyncio.gather(*(_chat(client, "beta") for _ in range(6)))
            assert [a.status_code for a in answers] == [200] * 6
            assert switcher.states["beta"] == "awake"
            # While apply changes the engines no switch happens: alpha's request waits.
            held = asyncio.ensure_future(_chat(client, "alpha"))
            await _held(client, 1)
            assert _asleep(doubles["alpha"])
            write_rollout(tmp_path / "rollout.json", Rollout(upstreams={"beta": f"{new.url}/v1"}))
            answer = await held
            assert (answer.status_code, answer.json()["model"]) == (200, "alpha")
            # The switch put the *new* engine to sleep.
            assert switcher.states == {"alpha": "awake", "beta": "asleep-1"}
            assert _asleep(new)
            assert new.sleeps == 1

    with engines(2) as doubles, _new_beta() as new:
        asyncio.run(scenario(doubles, new))


def test_in_place_holds_only_the_replaced_models_requests_then_serves_them(
    tmp_path: Path,
) -> None:
    async def scenario(doubles: dict[str, Any], new: Any) -> None:
        async with gateway(_rollout_config(tmp_path, doubles)) as (app, client):
            switcher = await _beta_awake(app, client)
            # apply holds beta (its engine is about to stop); alpha sleeps and waits too.
            write_rollout(tmp_path / "rollout.json", Rollout(held=("beta",), switching_paused=True))

            async def holding() -> bool:
                report = (await _rollout(client))["models"]
                return bool(report["beta"]["updating"] is True)

            await _until(holding)
            waiting = [asyncio.ensure_future(_chat(client, "beta")) for _ in range(3)]
            await _held(client, 3)
            doubles["beta"].shutdown()
            # The new engine is healthy and awake: apply moves beta there and releases it.
            write_rollout(tmp_path / "rollout.json", Rollout(upstreams={"beta": f"{new.url}/v1"}))
            answers = await asyncio.gather(*waiting)
            assert [(a.status_code, a.json()["model"]) for a in answers] == [(200, "beta")] * 3
            assert switcher.states["beta"] == "awake"
            assert switcher.switches == 1  # the one before the update: none during it

    with engines(2) as doubles, _new_beta() as new:
        asyncio.run(scenario(doubles, new))


def test_no_idle_sleep_while_apply_changes_the_engines(tmp_path: Path) -> None:
    """The idle TTL must not put an engine to sleep behind apply's back: it would change the
    state apply leaves the engines in (and the new engine's memory)."""

    async def scenario(doubles: dict[str, Any]) -> None:
        config = _rollout_config(tmp_path, doubles, SwitchRules(idle_sleep_s=0.05))
        write_rollout(tmp_path / "rollout.json", Rollout(switching_paused=True))
        async with gateway(config) as (app, _client):
            switcher = app.switcher
            assert switcher is not None
            await asyncio.sleep(0.5)  # ten TTLs
            assert switcher.states["alpha"] == "awake"
            write_rollout(tmp_path / "rollout.json", Rollout())
            for _ in range(400):
                if switcher.states["alpha"] == "asleep-1":
                    break
                await asyncio.sleep(0.01)
            assert switcher.states["alpha"] == "asleep-1"

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_a_held_models_requests_go_to_the_remote_api_in_auto(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any], remote: Any) -> None:
        config = _rollout_config(tmp_path, doubles, remote=remote)
        async with gateway(config) as (app, client):
            await _beta_awake(app, client)
            write_rollout(tmp_path / "rollout.json", Rollout(held=("beta",), switching_paused=True))

            async def holding() -> bool:
                return bool((await _rollout(client))["models"]["beta"]["updating"])

            await _until(holding)
            answer = await _chat(client, "beta")
            assert (answer.status_code, answer.json()["model"]) == (200, "remote-beta")
            assert doubles["beta"].arrived_asleep == 0

    remote_args = ("--model", "/m/r", "--served-model-name", "remote-beta")
    with engines(2) as doubles, threaded_engine_double(*remote_args) as remote:
        asyncio.run(scenario(doubles, remote))
