"""Several chat models behind the gateway (issue #19): vLLM doubles with sleep mode on
127.0.0.1 (threads of this process), the gateway in-process behind httpx's ASGITransport.

Request counts are bounded; nothing asserts wall-clock time. Where a test needs a wake to be
slow, it closes the double's wake gate and opens it again, so the order of events is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig, RemoteConfig, SecretSource, SwitchingConfig
from appliance.gateway.switching import SwitchRules
from appliance.vocabulary import FallbackMode
from tests.doubles import threaded_engine_double

NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(autouse=True)
def _dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")


@contextlib.contextmanager
def engines(count: int) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(
                threaded_engine_double(
                    "--model", f"/m/{name}", "--served-model-name", name, "--enable-sleep-mode"
                )
            )
            for name in NAMES[:count]
        }


def _config(
    tmp_path: Path,
    doubles: dict[str, Any],
    rules: SwitchRules,
    remote: Any = None,
    admin_key: SecretSource | None = None,
) -> GatewayConfig:
    names = list(doubles)
    return GatewayConfig(
        chat_upstream=f"{doubles[names[0]].url}/v1",
        chat_models=tuple(names),
        keys_file=tmp_path / "keys.json",
        state_file=tmp_path / "fallback.json",
        auth_required=False,
        probe_interval_s=0,
        remote=(
            RemoteConfig(f"{remote.url}/v1", None, {"beta": "remote-beta"}) if remote else None
        ),
        default_fallback_mode=FallbackMode.AUTO if remote else FallbackMode.OFF,
        admin_key=admin_key,
        switching=SwitchingConfig(
            upstreams={name: f"{server.url}/v1" for name, server in doubles.items()},
            initially_awake=names[0],
            rules=rules,
        ),
    )


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig) -> AsyncIterator[tuple[GatewayApp, httpx.AsyncClient]]:
    app = GatewayApp(config)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=60
        ) as client:
            yield app, client


async def _chat(client: httpx.AsyncClient, model: str, max_tokens: int = 4) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": max_tokens},
    )  # fmt: skip


def _content(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def _asleep(server: Any) -> bool:
    return server.paused or bool(server.sleeping_tags)


async def _until(condition: Any, tries: int = 400) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 2])
def test_a_request_for_a_sleeping_model_is_answered_after_the_switch(
    tmp_path: Path, level: int
) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        async with gateway(_config(tmp_path, doubles, SwitchRules(sleep_level=level))) as (
            app,
            client,
        ):
            switcher = app.switcher
            assert switcher is not None
            # At start the gateway puts every engine but spec.model's to sleep.
            assert switcher.states == {"alpha": "awake", "beta": f"asleep-{level}"}
            assert _asleep(doubles["beta"])
            first = await _chat(client, "alpha")
            assert first.json()["model"] == "alpha"
            answer = await _chat(client, "beta")
            assert answer.status_code == 200
            assert answer.json()["model"] == "beta"
            assert _content(answer) == " tok0 tok1 tok2 tok3"  # level 2: weights reloaded
            assert switcher.states == {"alpha": f"asleep-{level}", "beta": "awake"}
            assert _asleep(doubles["alpha"])
            assert not _asleep(doubles["beta"])
            assert switcher.switches == 1
            assert doubles["beta"].reloads == (1 if level == 2 else 0)
            assert doubles["alpha"].arrived_asleep == doubles["beta"].arrived_asleep == 0
            # The states, the switch and the wake time show on /metrics and /health.
            metrics = (await client.get("/metrics")).text
            assert 'appliance_gateway_model_state{model="beta",state="awake"} 1.0' in metrics
            assert f'appliance_gateway_model_state{{model="alpha",state="asleep-{level}"}} 1.0' in (
                metrics
            )
            assert "appliance_gateway_model_switches_total 1.0" in metrics
            assert 'appliance_gateway_last_switch_seconds{part="engine"}' in metrics
            health = (await client.get("/health")).json()["switching"]
            assert health["models"]["beta"] == {"state": "awake", "in_flight": 0, "held": 0}
            assert health["switches"] == 1
            assert health["last_switch"]["model"] == "beta"

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_three_models_take_turns_and_each_answers_for_itself(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        async with gateway(_config(tmp_path, doubles, SwitchRules())) as (app, client):
            for model in ("beta", "gamma", "alpha", "gamma", "beta"):
                answer = await _chat(client, model)
                assert answer.status_code == 200
                assert answer.json()["model"] == model
                awake = [name for name, server in doubles.items() if not _asleep(server)]
                assert awake == [model]
            assert app.switcher is not None
            assert app.switcher.switches == 5
            assert all(server.arrived_asleep == 0 for server in doubles.values())

    with engines(3) as doubles:
        asyncio.run(scenario(doubles))


def test_concurrent_requests_to_two_models_never_get_the_other_models_answer(
    tmp_path: Path,
) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        async with gateway(_config(tmp_path, doubles, SwitchRules(drain_grace_s=30))) as (
            app,
            client,
        ):
            wanted = ["alpha", "beta"] * 12
            answers = await asyncio.gather(*(_chat(client, model, 8) for model in wanted))
            for model, answer in zip(wanted, answers, strict=True):
                assert answer.status_code == 200
                body = answer.json()
                assert body["model"] == model
                assert body["choices"][0]["finish_reason"] == "length"  # none aborted
                assert _content(answer) == "".join(f" tok{i}" for i in range(8))
            assert all(server.arrived_asleep == 0 for server in doubles.values())
            assert app.switcher is not None
            assert app.switcher.held_total == 0
            assert sum(app.switcher.in_flight.values()) == 0

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_the_held_queue_is_bounded(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        doubles["beta"].wake_gate.clear()
        rules = SwitchRules(hold_max_requests=2, hold_timeout_s=60)
        async with gateway(_config(tmp_path, doubles, rules)) as (app, client):
            switcher = app.switcher
            assert switcher is not None
            held = [asyncio.ensure_future(_chat(client, "beta")) for _ in range(2)]
            await _until(lambda: switcher.held_total == 2)
            refused = await _chat(client, "beta")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "60"
            assert refused.json()["error"]["code"] == "model_asleep"
            # alpha sleeps now (put to sleep for beta), and the bound counts every held request.
            assert (await _chat(client, "alpha")).status_code == 503
            doubles["beta"].wake_gate.set()
            for answer in await asyncio.gather(*held):
                assert answer.status_code == 200
                assert answer.json()["model"] == "beta"
            assert switcher.refused == {"full": 2, "timeout": 0, "pinned": 0}

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_a_held_request_times_out_into_a_503_or_the_remote_api(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any], remote: Any) -> None:
        doubles["beta"].wake_gate.clear()
        rules = SwitchRules(hold_timeout_s=0.2)
        async with gateway(_config(tmp_path, doubles, rules)) as (_app, client):
            answer = await _chat(client, "beta")
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
        async with gateway(_config(tmp_path, doubles, rules, remote)) as (_app, client):
            answer = await _chat(client, "beta")
            assert answer.status_code == 200
            assert answer.json()["model"] == "remote-beta"
        doubles["beta"].wake_gate.set()

    with (
        engines(2) as doubles,
        threaded_engine_double("--model", "/m/r", "--served-model-name", "remote-beta") as remote,
    ):
        asyncio.run(scenario(doubles, remote))


def test_the_awake_model_drains_then_its_leftovers_are_aborted(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        async with gateway(_config(tmp_path, doubles, SwitchRules(drain_grace_s=0))) as (
            _app,
            client,
        ):
            long = asyncio.ensure_future(_chat(client, "alpha", 100_000))
            await _until(lambda: doubles["alpha"].in_flight == 1)
            switched = await _chat(client, "beta")
            assert switched.json()["model"] == "beta"
            aborted = await long
            assert aborted.json()["choices"][0]["finish_reason"] == "abort"

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_an_idle_model_goes_to_sleep_and_wakes_on_the_next_request(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        async with gateway(_config(tmp_path, doubles, SwitchRules(idle_sleep_s=0.05))) as (
            app,
            client,
        ):
            switcher = app.switcher
            assert switcher is not None
            await _until(lambda: switcher.states["alpha"] == "asleep-1")
            assert _asleep(doubles["alpha"])
            answer = await _chat(client, "alpha")
            assert answer.json()["model"] == "alpha"

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_a_request_during_an_idle_sleep_waits_for_the_sleep_then_the_wake(
    tmp_path: Path,
) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        doubles["alpha"].sleep_gate.clear()  # the idle sleep hangs in the engine
        async with gateway(_config(tmp_path, doubles, SwitchRules(idle_sleep_s=0.05))) as (
            app,
            client,
        ):
            switcher = app.switcher
            assert switcher is not None
            await _until(lambda: switcher.states["alpha"] == "sleeping")
            request = asyncio.ensure_future(_chat(client, "alpha"))
            await _until(lambda: switcher.held_total == 1)
            doubles["alpha"].sleep_gate.set()
            answer = await request
            assert answer.status_code == 200
            assert answer.json()["model"] == "alpha"
            assert not _asleep(doubles["alpha"])  # the wake came after the sleep, not before
            assert doubles["alpha"].arrived_asleep == 0

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


CONTROL = ["/sleep", "/wake_up", "/collective_rpc", "/is_sleeping"]
TRICKS = [
    *CONTROL,
    "/sleep?level=2",
    "/wake_up?tags=weights",
    "/v1/sleep",
    "/v1/../sleep",
    "//sleep",
    "/v1/chat/completions/../../sleep",
    "/v1/chat/completions/../../../collective_rpc",
    "/%2Fsleep",
    "/v1/%2E%2E/sleep",
]


def test_a_client_can_never_reach_the_sleep_routes(tmp_path: Path) -> None:
    async def scenario(doubles: dict[str, Any]) -> None:
        async with gateway(_config(tmp_path, doubles, SwitchRules())) as (app, client):
            before = {n: (s.sleeps, s.wakes, s.reloads) for n, s in doubles.items()}
            for path in TRICKS:
                for method in ("GET", "POST"):
                    answer = await client.request(
                        method, path, json={"method": "reload_weights", "model": "alpha"}
                    )
                    assert answer.status_code in (404, 405), (method, path)
            # The chat route with a query string still reaches only the chat route.
            answer = await client.post(
                "/v1/chat/completions?level=2",
                json={"model": "alpha", "messages": [], "max_tokens": 1},
            )
            assert answer.status_code == 200
            after = {n: (s.sleeps, s.wakes, s.reloads) for n, s in doubles.items()}
            assert after == before
            assert app.switcher is not None
            assert app.switcher.states == {"alpha": "awake", "beta": "asleep-1"}

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


ADMIN = "test-admin-key-0123456789"


def test_an_admin_pins_sleeps_and_wakes_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_ADMIN_KEY", ADMIN)
    admin = {"authorization": f"Bearer {ADMIN}"}

    async def order(client: httpx.AsyncClient, model: str, action: str) -> httpx.Response:
        return await client.post(
            "/admin/models", json={"model": model, "action": action}, headers=admin
        )

    async def scenario(doubles: dict[str, Any]) -> None:
        rules = SwitchRules(idle_sleep_s=0.05)
        config = _config(tmp_path, doubles, rules, admin_key=SecretSource(env="GW_TEST_ADMIN_KEY"))
        async with gateway(config) as (app, client):
            switcher = app.switcher
            assert switcher is not None
            # Pinned: woken at once, never put to sleep for idleness, and a request for the
            # other model is refused with Retry-After instead of switching.
            pinned = await order(client, "beta", "pin")
            assert pinned.status_code == 200, pinned.text
            assert pinned.json()["pinned"] == "beta"
            assert switcher.states == {"alpha": "asleep-1", "beta": "awake"}
            for _ in range(10):
                await asyncio.sleep(0.02)
            assert switcher.states["beta"] == "awake"
            refused = await _chat(client, "alpha")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "60"
            assert "pinned" in refused.json()["error"]["message"]
            assert (await order(client, "beta", "sleep")).status_code == 409
            assert (await order(client, "alpha", "wake")).status_code == 409
            metrics = (await client.get("/metrics")).text
            assert 'appliance_gateway_model_pinned{model="beta"} 1.0' in metrics
            assert 'appliance_gateway_model_wakes_total{model="beta"} 1.0' in metrics
            assert 'appliance_gateway_model_wake_seconds{model="beta"}' in metrics
            assert 'appliance_gateway_held_refused_total{reason="pinned"} 1.0' in metrics
            # Unpinned: an admin's sleep and wake are carried out at once.
            assert (await order(client, "beta", "unpin")).json()["pinned"] is None
            assert (await order(client, "alpha", "wake")).status_code == 200
            assert switcher.states["alpha"] == "awake"
            assert (await order(client, "alpha", "sleep")).status_code == 200
            assert switcher.states["alpha"] == "asleep-1"
            assert _asleep(doubles["alpha"])
            shown = await client.get("/admin/models", headers=admin)
            assert shown.json()["models"]["alpha"]["state"] == "asleep-1"

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))


def test_the_model_admin_route_needs_the_admin_key_and_a_clear_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_ADMIN_KEY", ADMIN)
    admin = {"authorization": f"Bearer {ADMIN}"}

    async def scenario(doubles: dict[str, Any]) -> None:
        config = _config(
            tmp_path, doubles, SwitchRules(), admin_key=SecretSource(env="GW_TEST_ADMIN_KEY")
        )
        async with gateway(config) as (app, client):
            before = {n: (s.sleeps, s.wakes) for n, s in doubles.items()}
            body = {"model": "beta", "action": "wake"}
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic x"}):
                for method in ("GET", "POST"):
                    answer = await client.request(
                        method, "/admin/models", json=body, headers=headers
                    )
                    assert answer.status_code == 401, (method, headers)
            assert {n: (s.sleeps, s.wakes) for n, s in doubles.items()} == before
            for bad, status in (
                (b"not json", 400),
                (b'{"model": "beta"}', 400),
                (b'{"model": "beta", "action": "explode"}', 400),
                (b'{"model": "delta", "action": "wake"}', 404),
            ):
                answer = await client.post("/admin/models", content=bad, headers=admin)
                assert answer.status_code == status, bad
                assert answer.json()["error"]["message"]
            assert (await client.put("/admin/models", headers=admin)).status_code == 404
            assert app.switcher is not None
            assert app.switcher.states == {"alpha": "awake", "beta": "asleep-1"}

    with engines(2) as doubles:
        asyncio.run(scenario(doubles))
