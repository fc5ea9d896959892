"""Model updates without an outage, the gateway's side (issue #19 point 3): apply's rollout
file moves the chat requests to a new engine (blue/green) or holds them while the engine is
replaced in place. vLLM doubles on 127.0.0.1 (threads of this process), the gateway in-process.

Request counts are bounded; nothing asserts wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig, RemoteConfig
from appliance.gateway.rollout import Rollout, write_rollout
from appliance.vocabulary import FallbackMode
from tests.doubles import threaded_engine_double


def _config(tmp_path: Path, blue: Any, remote: Any = None, hold_s: float = 30.0) -> GatewayConfig:
    return GatewayConfig(
        chat_upstream=f"{blue.url}/v1",
        chat_models=("chat",),
        keys_file=tmp_path / "keys.json",
        state_file=tmp_path / "fallback.json",
        auth_required=False,
        probe_interval_s=0,
        remote=RemoteConfig(f"{remote.url}/v1", None, {"chat": "remote-chat"}) if remote else None,
        default_fallback_mode=FallbackMode.AUTO if remote else FallbackMode.OFF,
        rollout_file=tmp_path / "rollout.json",
        update_hold_timeout_s=hold_s,
    )


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig) -> AsyncIterator[tuple[GatewayApp, httpx.AsyncClient]]:
    app = GatewayApp(config, refresh_interval_s=0.02)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=60
        ) as client:
            yield app, client


async def _chat(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )


async def _rollout(client: httpx.AsyncClient) -> dict[str, Any]:
    report: dict[str, Any] = (await client.get("/health")).json()["rollout"]
    return report


async def _until(check: Any, tries: int = 500) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def double(name: str) -> Any:
    return threaded_engine_double("--model", f"/m/{name}", "--served-model-name", "chat")


def test_blue_green_moves_new_requests_to_the_new_engine(tmp_path: Path) -> None:
    async def scenario(blue: Any, green: Any) -> None:
        async with gateway(_config(tmp_path, blue)) as (_app, client):
            assert (await _chat(client)).status_code == 200
            write_rollout(tmp_path / "rollout.json", Rollout(f"{green.url}/v1"))

            async def switched() -> bool:
                return (await _rollout(client))["chat_upstream"] == f"{green.url}/v1"

            await _until(switched)
            report = await _rollout(client)
            assert report == {
                "chat_upstream": f"{green.url}/v1",
                "updating": False,
                "held": 0,
                "in_flight": 0,
                "retired_in_flight": 0,
            }
            blue.shutdown()  # the old engine is gone: every request still answers
            answers = await asyncio.gather(*(_chat(client) for _ in range(8)))
            assert [a.status_code for a in answers] == [200] * 8

    with double("blue") as blue, double("green") as green:
        asyncio.run(scenario(blue, green))


def test_an_update_in_place_holds_requests_then_serves_them(tmp_path: Path) -> None:
    async def scenario(blue: Any) -> None:
        async with gateway(_config(tmp_path, blue)) as (_app, client):
            write_rollout(tmp_path / "rollout.json", Rollout(None, updating=True))

            async def holding() -> bool:
                return bool((await _rollout(client))["updating"])

            await _until(holding)
            held = [asyncio.ensure_future(_chat(client)) for _ in range(4)]

            async def all_held() -> bool:
                return int((await _rollout(client))["held"]) == 4

            await _until(all_held)
            write_rollout(tmp_path / "rollout.json", Rollout(None, updating=False))
            answers = await asyncio.gather(*held)
            assert [a.status_code for a in answers] == [200] * 4

    with double("blue") as blue:
        asyncio.run(scenario(blue))


def test_during_an_update_in_place_a_request_gets_the_remote_api_or_a_503(
    tmp_path: Path,
) -> None:
    async def scenario(blue: Any, remote: Any) -> None:
        write_rollout(tmp_path / "rollout.json", Rollout(None, updating=True))
        async with gateway(_config(tmp_path, blue, hold_s=0.05)) as (_app, client):
            answer = await _chat(client)
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "model_updating"
        async with gateway(_config(tmp_path, blue, remote)) as (_app, client):
            answer = await _chat(client)
            assert answer.status_code == 200
            assert answer.json()["model"] == "remote-chat"

    with (
        double("blue") as blue,
        threaded_engine_double("--model", "/m/r", "--served-model-name", "remote-chat") as remote,
    ):
        asyncio.run(scenario(blue, remote))
