"""The gateway in-process: httpx's ASGITransport in front, MockTransport upstreams behind.

The same paths run over real sockets in tests/integration/test_gateway.py; here every branch of
routing, auth and fallback is driven exactly, with no timing involved.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig, RemoteConfig, SecretSource, Timeouts
from appliance.gateway.keys import create_key, revoke_key
from appliance.gateway.state import read_fallback, set_fallback
from appliance.gateway.upstream import HttpxPool
from appliance.vocabulary import FallbackMode

REMOTE_KEY = "sk-remote-SECRET-0123456789"
ADMIN_KEY = "admin-SECRET-abcdef"


@dataclass
class Signal:
    """A LoadSignal the test sets by hand."""

    waiting: int | None = None
    is_healthy: bool | None = None
    age: float | None = None

    def waiting_requests(self) -> int | None:
        return self.waiting

    def healthy(self) -> bool | None:
        return self.is_healthy

    @property
    def age_seconds(self) -> float | None:
        return self.age


class _Stream(httpx.AsyncByteStream):
    """An event stream that sends `chunks` and then breaks like a dying engine."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset")


class _Silent(httpx.AsyncByteStream):
    """An event stream that sends one event and then nothing, like an engine that froze."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'data: {"n": 1}\n\n'
        await asyncio.Event().wait()


@dataclass
class Upstream:
    """A programmable MockTransport handler that records what it was sent."""

    name: str
    behaviour: str = "ok"  # ok | 500 | 404 | connect | timeout | broken | midstream | silent
    requests: list[httpx.Request] = field(default_factory=list)
    respond: Callable[[httpx.Request], httpx.Response] | None = None  # overrides `behaviour`

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.respond is not None:
            return self.respond(request)
        if self.behaviour == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if self.behaviour == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if self.behaviour == "500":
            return httpx.Response(500, json={"error": {"message": "engine died"}})
        if self.behaviour in ("broken", "midstream"):
            chunks = [b'data: {"n": 1}\n\n'] if self.behaviour == "midstream" else []
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, stream=_Stream(chunks))
        if self.behaviour == "silent":
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, stream=_Silent())
        if self.behaviour == "404":
            return httpx.Response(404, json={"error": {"message": "no such model"}})
        body = json.loads(request.content or b"{}")
        return httpx.Response(
            200,
            json={"served_by": self.name, "model": body.get("model")},
            headers={"date": "yesterday", "server": "double", "x-request-id": "abc"},
        )

    def body(self, index: int = -1) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.requests[index].content)
        return loaded


@dataclass
class Harness:
    app: GatewayApp
    client: httpx.AsyncClient
    local: Upstream
    embeddings: Upstream
    remote: Upstream
    signal: Signal
    key: str
    config: GatewayConfig

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.key}"}

    async def chat(self, model: str = "tiny", **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return await self.client.post(
            "/v1/chat/completions", json=body, headers={**self.auth(), **extra.pop("h", {})}
        )


def _config(
    tmp_path: Path,
    *,
    remote: bool = True,
    mode: FallbackMode = FallbackMode.OFF,
    embeddings_mapped: bool = True,
) -> GatewayConfig:
    model_map = {"tiny": "gpt-remote"}
    if embeddings_mapped:
        model_map["bge"] = "remote-embed"
    return GatewayConfig(
        chat_upstream="http://127.0.0.1:9/v1",
        chat_models=("tiny",),
        embeddings_upstream="http://127.0.0.1:10/v1",
        embeddings_model="bge",
        keys_file=tmp_path / "keys.json",
        state_file=tmp_path / "fallback.json",
        remote=RemoteConfig(
            "https://remote.example/v1", SecretSource(env="GW_TEST_REMOTE_KEY"), model_map
        )
        if remote
        else None,
        admin_key=SecretSource(env="GW_TEST_ADMIN_KEY"),
        default_fallback_mode=mode,
        queue_threshold=16,
        probe_interval_s=0,
    )


Body = Callable[[Harness], Coroutine[Any, Any, None]]


def run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: Body,
    *,
    clock: Callable[[], float] | None = None,
    **config: Any,
) -> Harness:
    monkeypatch.setenv("GW_TEST_REMOTE_KEY", REMOTE_KEY)
    monkeypatch.setenv("GW_TEST_ADMIN_KEY", ADMIN_KEY)
    key = create_key(tmp_path / "keys.json", "alice").key
    local, embeddings, remote = Upstream("local"), Upstream("embeddings"), Upstream("remote")
    signal = Signal()
    cfg = _config(tmp_path, **config)

    async def main() -> Harness:
        def pool(url: str, handler: Upstream) -> HttpxPool:
            return HttpxPool(url, Timeouts(), transport=httpx.MockTransport(handler))

        app = GatewayApp(
            cfg,
            load_signal=signal,
            chat_upstream=pool(cfg.chat_upstream, local),
            embeddings_upstream=pool(cfg.embeddings_upstream or "", embeddings),
            remote_upstream=pool("https://remote.example/v1", remote),
            **({"clock": clock} if clock is not None else {}),
        )
        async with (
            app.running(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway"
            ) as client,
        ):
            harness = Harness(app, client, local, embeddings, remote, signal, key, cfg)
            await body(harness)
            return harness

    return asyncio.run(main())


def _error(response: httpx.Response) -> dict[str, Any]:
    document = response.json()
    assert set(document) == {"error"}
    assert set(document["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = document["error"]
    return error


# ---------------------------------------------------------------------------------- auth


def test_requests_without_a_valid_key_are_refused(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        for headers in ({}, h.auth("sk-appl-000000000000-wrong"), {"authorization": "Basic x"}):
            response = await h.client.post("/v1/chat/completions", json={}, headers=headers)
            assert response.status_code == 401
            assert response.headers["x-appliance-route"] == "local"
            assert _error(response)["code"] == "invalid_api_key"
        models = await h.client.get("/v1/models")
        assert models.status_code == 401
        assert (await h.client.get("/health")).status_code == 200
        assert not h.local.requests

    run(tmp_path, monkeypatch, body)


def test_a_revoked_key_is_refused_once_the_file_is_reread(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        assert (await h.chat()).status_code == 200
        revoke_key(h.config.keys_file, "alice")
        h.app.refresh_files()
        assert (await h.chat()).status_code == 401

    run(tmp_path, monkeypatch, body)


def test_rate_limit_answers_429_with_retry_after(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        limited = create_key(h.config.keys_file, "batch", rate_limit_per_minute=2).key
        h.app.refresh_files()
        statuses = []
        for _ in range(3):
            response = await h.client.post(
                "/v1/chat/completions", json={"model": "tiny"}, headers=h.auth(limited)
            )
            statuses.append(response.status_code)
        assert statuses == [200, 200, 429]
        assert int(response.headers["retry-after"]) >= 1
        assert _error(response)["code"] == "rate_limit_exceeded"
        assert (await h.chat()).status_code == 200  # other keys are not limited

    run(tmp_path, monkeypatch, body)


# ---------------------------------------------------------------------------------- pass-through


def test_chat_goes_to_the_local_engine_untouched(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        raw = b'{"model":"tiny","messages":[],"odd":  1}'
        response = await h.client.post(
            "/v1/chat/completions?x=1",
            content=raw,
            headers={**h.auth(), "content-type": "application/json", "openai-project": "p"},
        )
        assert response.status_code == 200
        assert response.headers["x-appliance-route"] == "local"
        assert response.headers["x-request-id"] == "abc"
        assert "server" not in response.headers
        assert response.json()["served_by"] == "local"
        sent = h.local.requests[0]
        assert sent.url.path == "/v1/chat/completions"
        assert sent.url.query == b"x=1"
        assert sent.content == raw  # forwarded byte for byte, not re-serialised
        assert "authorization" not in sent.headers
        assert sent.headers["openai-project"] == "p"
        completion = await h.client.post("/v1/completions", json={}, headers=h.auth())
        assert completion.json()["served_by"] == "local"
        embedding = await h.client.post("/v1/embeddings", json={"model": "bge"}, headers=h.auth())
        assert embedding.json()["served_by"] == "embeddings"

    run(tmp_path, monkeypatch, body)


def test_models_lists_local_and_remote_names(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        response = await h.client.get("/v1/models", headers=h.auth())
        owners = {m["id"]: m["owned_by"] for m in response.json()["data"]}
        assert owners == {
            "tiny": "llm-appliance",
            "bge": "llm-appliance",
            "gpt-remote": "remote",
            "remote-embed": "remote",
        }
        assert response.headers["x-appliance-route"] == "local"

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


async def _model_ids(h: Harness) -> set[str]:
    response = await h.client.get("/v1/models", headers=h.auth())
    return {m["id"] for m in response.json()["data"]}


def test_models_lists_only_what_can_be_served_now(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        # Off: the remote API is out of reach; a known-down engine's model is not servable.
        assert await _model_ids(h) == {"tiny", "bge"}
        h.signal.is_healthy, h.signal.age = False, 0.5
        assert await _model_ids(h) == {"bge"}
        h.signal.age = 60.0  # a stale reading says nothing
        assert await _model_ids(h) == {"tiny", "bge"}
        # Auto with the engine down: its name still answers, mapped to the remote API.
        h.signal.age = 0.5
        set_fallback(h.config.state_file, "auto", remote_configured=True)
        h.app.refresh_files()
        assert await _model_ids(h) == {"tiny", "bge", "gpt-remote", "remote-embed"}
        set_fallback(h.config.state_file, "always", remote_configured=True)
        h.app.refresh_files()
        assert await _model_ids(h) == {"tiny", "bge", "gpt-remote", "remote-embed"}

    run(tmp_path, monkeypatch, body, embeddings_mapped=True)


def test_unknown_paths_and_methods_are_openai_errors(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        missing = await h.client.get("/v1/nothing", headers=h.auth())
        assert missing.status_code == 404
        assert _error(missing)["code"] == "not_found"
        wrong = await h.client.get("/v1/chat/completions", headers=h.auth())
        assert wrong.status_code == 405
        assert wrong.headers["x-appliance-route"] == "local"

    run(tmp_path, monkeypatch, body)


# ---------------------------------------------------------------------------------- fallback


def test_off_with_the_local_engine_down_is_a_503(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        h.local.behaviour = "connect"
        response = await h.chat()
        assert response.status_code == 503
        assert response.headers["x-appliance-route"] == "local"
        error = _error(response)
        assert error["type"] == "server_error"
        assert error["code"] == "local_engine_unavailable"
        assert "Fallback to the remote API is off" in error["message"]
        h.local.behaviour = "500"
        passed = await h.chat()
        assert passed.status_code == 500  # off: the engine's own error, passed through
        assert not h.remote.requests

    run(tmp_path, monkeypatch, body)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("connect", "connect_failed"), ("500", "server_error"), ("timeout", "timeout")],
)
def test_auto_falls_back_when_the_engine_fails(
    tmp_path, monkeypatch, behaviour: str, reason: str
) -> None:
    async def body(h: Harness) -> None:
        h.local.behaviour = behaviour
        response = await h.chat()
        assert response.status_code == 200
        assert response.headers["x-appliance-route"] == "remote"
        assert response.json()["served_by"] == "remote"
        assert len(h.local.requests) == 1
        # Within the cool-down the engine is not tried again.
        assert (await h.chat()).headers["x-appliance-route"] == "remote"
        assert len(h.local.requests) == 1
        metrics = (await h.client.get("/metrics")).text
        assert f'appliance_gateway_fallbacks_total{{reason="{reason}"}} 1.0' in metrics
        assert 'appliance_gateway_fallbacks_total{reason="recent_failure"} 1.0' in metrics

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


def test_an_engine_that_breaks_before_its_first_byte_is_a_failure_like_a_5xx(
    tmp_path, monkeypatch
) -> None:
    async def body(h: Harness) -> None:
        h.local.behaviour = "broken"
        response = await h.chat(stream=True)
        assert response.headers["x-appliance-route"] == "remote"
        assert response.status_code == 200

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


def test_a_stream_that_breaks_midway_ends_with_an_error_event_and_no_retry(
    tmp_path, monkeypatch
) -> None:
    async def body(h: Harness) -> None:
        h.local.behaviour = "midstream"
        response = await h.chat(stream=True)
        assert response.headers["x-appliance-route"] == "local"
        first, error, rest = response.text.split("\n\n")
        assert first == 'data: {"n": 1}'
        assert json.loads(error.removeprefix("data: "))["error"]["code"] == "upstream_broken"
        assert rest == ""
        assert not h.remote.requests

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


def test_a_silent_stream_of_an_engine_known_down_is_ended_with_upstream_broken(
    tmp_path, monkeypatch
) -> None:
    async def body(h: Harness) -> None:
        h.local.behaviour = "silent"
        h.signal.is_healthy, h.signal.age = False, 0.0  # the monitor reads it down, freshly
        response = await asyncio.wait_for(h.chat(stream=True), 30)  # a bound, not a timing
        events = [e for e in response.text.split("\n\n") if e.startswith("data: ")]
        assert events[0] == 'data: {"n": 1}'
        error = json.loads(events[-1][6:])["error"]
        assert error["code"] == "upstream_broken"
        assert "local chat engine is down" in error["message"]
        assert not h.app._chat or not h.app._chat.streams  # nothing left registered

    run(tmp_path, monkeypatch, body)


def test_auto_follows_the_load_signal_only_while_it_is_fresh(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        h.signal.waiting, h.signal.is_healthy, h.signal.age = 17, True, 0.5
        assert (await h.chat()).headers["x-appliance-route"] == "remote"
        h.signal.waiting = 16
        assert (await h.chat()).headers["x-appliance-route"] == "local"
        h.signal.is_healthy = False
        assert (await h.chat()).headers["x-appliance-route"] == "remote"
        h.signal.age = 60.0  # a stalled monitor must not pin traffic to the remote API
        assert (await h.chat()).headers["x-appliance-route"] == "local"

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


def test_always_sends_everything_remote_with_the_remote_key_and_name(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        response = await h.chat(h={"openai-organization": "org-client"})
        assert response.headers["x-appliance-route"] == "remote"
        sent = h.remote.requests[0]
        assert sent.url == "https://remote.example/v1/chat/completions"
        assert sent.headers["authorization"] == f"Bearer {REMOTE_KEY}"
        assert "openai-organization" not in sent.headers
        assert h.remote.body()["model"] == "gpt-remote"  # mapped
        assert h.remote.body()["messages"] == [{"role": "user", "content": "hi"}]
        assert not h.local.requests

    run(tmp_path, monkeypatch, body, mode=FallbackMode.ALWAYS)


def test_a_failing_remote_is_a_502_from_the_remote_route(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        h.remote.behaviour = "connect"
        response = await h.chat()
        assert response.status_code == 502
        assert response.headers["x-appliance-route"] == "remote"
        assert _error(response)["code"] == "remote_unavailable"
        assert REMOTE_KEY not in response.text

    run(tmp_path, monkeypatch, body, mode=FallbackMode.ALWAYS)


def test_a_model_only_the_remote_serves_goes_remote_in_auto(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        h.local.behaviour = "404"
        moved = await h.chat(model="gpt-remote")
        assert moved.headers["x-appliance-route"] == "remote"
        unknown = await h.chat(model="nobody-serves-this")
        assert unknown.status_code == 404
        assert unknown.headers["x-appliance-route"] == "local"
        # A missing model says nothing about the engine's health: no circuit opened.
        h.local.behaviour = "ok"
        assert (await h.chat()).headers["x-appliance-route"] == "local"

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


def test_embeddings_fall_back_only_to_a_mapped_model(tmp_path, monkeypatch) -> None:
    async def mapped(h: Harness) -> None:
        h.embeddings.behaviour = "connect"
        response = await h.client.post("/v1/embeddings", json={"model": "bge"}, headers=h.auth())
        assert response.headers["x-appliance-route"] == "remote"
        assert h.remote.body()["model"] == "remote-embed"

    run(tmp_path, monkeypatch, mapped, mode=FallbackMode.AUTO)

    async def unmapped(h: Harness) -> None:
        h.embeddings.behaviour = "connect"
        response = await h.client.post("/v1/embeddings", json={"model": "bge"}, headers=h.auth())
        assert response.status_code == 503  # vectors of another model would poison an index
        assert not h.remote.requests
        # `always` moves chat, and leaves embeddings on the engine that made the index.
        h.embeddings.behaviour = "ok"
        set_fallback(h.config.state_file, "always", remote_configured=True)
        h.app.refresh_files()
        emb = await h.client.post("/v1/embeddings", json={"model": "bge"}, headers=h.auth())
        assert emb.headers["x-appliance-route"] == "local"
        assert (await h.chat()).headers["x-appliance-route"] == "remote"

    run(
        tmp_path / "unmapped",
        monkeypatch,
        unmapped,
        mode=FallbackMode.AUTO,
        embeddings_mapped=False,
    )


# ---------------------------------------------------------------------------------- admin


def test_admin_endpoint_switches_and_persists_the_mode(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        assert (await h.client.get("/admin/fallback", headers=h.auth())).status_code == 401
        admin = h.auth(ADMIN_KEY)
        current = await h.client.get("/admin/fallback", headers=admin)
        assert current.json()["mode"] == "off"
        switched = await h.client.put("/admin/fallback", json={"mode": "always"}, headers=admin)
        assert switched.status_code == 200
        assert switched.json()["mode"] == "always"
        assert read_fallback(h.config.state_file).mode is FallbackMode.ALWAYS
        assert (await h.chat()).headers["x-appliance-route"] == "remote"
        bad = await h.client.put("/admin/fallback", json={"mode": "never"}, headers=admin)
        assert bad.status_code == 400
        assert _error(bad)["param"] == "mode"
        # An admin-scope key from the keys file works too; an API key never does.
        ops = create_key(h.config.keys_file, "ops", admin=True).key
        h.app.refresh_files()
        put = await h.client.put("/admin/fallback", json={"mode": "off"}, headers=h.auth(ops))
        assert put.json()["mode"] == "off"
        chat_with_admin = await h.client.post("/v1/chat/completions", json={}, headers=h.auth(ops))
        assert chat_with_admin.status_code == 401

    run(tmp_path, monkeypatch, body)


def test_admin_cannot_enable_fallback_without_a_remote(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        response = await h.client.put(
            "/admin/fallback", json={"mode": "auto"}, headers=h.auth(ADMIN_KEY)
        )
        assert response.status_code == 409
        assert _error(response)["code"] == "no_remote_configured"

    run(tmp_path, monkeypatch, body, remote=False)


def test_a_mode_switched_by_the_cli_reaches_the_running_gateway(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        assert h.app.mode is FallbackMode.OFF
        set_fallback(h.config.state_file, "always", remote_configured=True, changed_by="cli")
        h.app.refresh_files()
        assert h.app.mode is FallbackMode.ALWAYS
        metrics = (await h.client.get("/metrics")).text
        assert 'appliance_gateway_fallback_mode{mode="always"} 1.0' in metrics

    run(tmp_path, monkeypatch, body)


# ---------------------------------------------------------------------------------- secrets


def test_metrics_count_by_route_destination_and_outcome(tmp_path, monkeypatch) -> None:
    async def body(h: Harness) -> None:
        await h.chat()
        await h.client.post("/v1/chat/completions", json={})
        h.local.behaviour = "connect"
        await h.chat()
        text = (await h.client.get("/metrics")).text
        for line in (
            'route="/v1/chat/completions",destination="local",outcome="ok"',
            'route="/v1/chat/completions",destination="none",outcome="unauthorized"',
            'route="/v1/chat/completions",destination="remote",outcome="ok"',
        ):
            ordered = dict(part.split("=", 1) for part in line.split(","))
            assert any(
                all(f"{k}={v}" in sample for k, v in ordered.items())
                for sample in text.splitlines()
                if sample.startswith("appliance_gateway_requests_total{")
            ), line
        assert "appliance_gateway_request_duration_seconds_bucket" in text
        assert "appliance_gateway_time_to_first_byte_seconds_bucket" in text
        assert h.key not in text
        assert REMOTE_KEY not in text

    run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)


def test_no_key_reaches_the_logs(tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(h: Harness) -> None:
        await h.chat()
        await h.client.post("/v1/chat/completions", json={}, headers=h.auth(h.key + "x"))
        h.local.behaviour = "connect"
        await h.chat()
        h.remote.behaviour = "timeout"
        h.app.refresh_files()
        await h.chat()
        await h.client.put("/admin/fallback", json={"mode": "always"}, headers=h.auth(ADMIN_KEY))

    harness = run(tmp_path, monkeypatch, body, mode=FallbackMode.AUTO)
    assert caplog.records  # the fallbacks and failures were logged
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for secret in (harness.key, REMOTE_KEY, ADMIN_KEY, "Bearer", "authorization"):
        assert secret not in text


def test_health_says_when_the_monitor_has_gone_stale(tmp_path, monkeypatch) -> None:
    """#13 item 17: a dead monitor task used to leave /health at 200 "ok" with an old reading."""

    async def body(h: Harness) -> None:
        h.signal.age = None  # no reading yet: starting, not a fault
        starting = await h.client.get("/health")
        assert starting.status_code == 200
        assert starting.json()["monitor"] == "starting"

        h.signal.age, h.signal.is_healthy = 1.0, True
        fresh = await h.client.get("/health")
        assert fresh.status_code == 200
        assert (fresh.json()["status"], fresh.json()["monitor"]) == ("ok", "ok")

        h.signal.age = 98.0  # far past metrics_max_age_seconds
        stale = await h.client.get("/health")
        assert stale.status_code == 503
        document = stale.json()
        assert (document["status"], document["monitor"]) == ("degraded", "stale")
        assert document["local"]["reading_age_seconds"] == 98.0
        assert document["monitor_max_age_seconds"] == h.config.rules.max_signal_age_s

    run(tmp_path, monkeypatch, body)


# ---------------------------------------------------------------------------------- user latency


class _Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class _SlowStream(httpx.AsyncByteStream):
    """A stand-in engine that thinks `first_s` before its first token and `rest_s` after."""

    def __init__(self, clock: _Clock, first_s: float, rest_s: float) -> None:
        self.clock, self.first_s, self.rest_s = clock, first_s, rest_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.clock.now += self.first_s
        yield b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        self.clock.now += self.rest_s
        yield b"data: [DONE]\n\n"


def _sample(h: Harness, name: str, destination: str, model: str) -> float | None:
    labels = {"destination": destination, "model": model}
    return h.app.metrics.registry.get_sample_value(name, labels)


def test_user_ttft_and_e2e_reflect_the_engines_delays_per_destination(
    tmp_path, monkeypatch
) -> None:
    clock = _Clock()

    def slow(first_s: float, rest_s: float) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, stream=_SlowStream(clock, first_s, rest_s))

        return handler

    async def body(h: Harness) -> None:
        h.local.respond = slow(2.0, 3.0)
        await h.chat(stream=True)
        h.remote.respond = slow(4.0, 1.0)
        h.local.respond = None
        h.local.behaviour = "connect"
        await h.chat(stream=True)
        await h.chat(model="mallory-{i}", stream=True)
        for destination, ttft, e2e in (("local", 2.0, 5.0), ("remote", 4.0, 5.0)):
            got_ttft = _sample(h, "appliance_gateway_ttft_seconds_sum", destination, "tiny")
            got_e2e = _sample(h, "appliance_gateway_e2e_seconds_sum", destination, "tiny")
            assert got_ttft == pytest.approx(ttft), destination
            assert got_e2e == pytest.approx(e2e), destination
        text = (await h.client.get("/metrics")).text
        models = {
            line.split('model="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith(("appliance_gateway_ttft_seconds", "appliance_gateway_e2e_seconds"))
            and 'model="' in line
        }
        assert models <= {"tiny", "bge", "gpt-remote", "remote-embed", "other"}
        assert not any("mallory" in line for line in text.splitlines())

    run(tmp_path, monkeypatch, body, clock=clock, mode=FallbackMode.AUTO)
