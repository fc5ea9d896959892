"""The gateway for real: uvicorn in its own process on 127.0.0.1, the engine doubles behind it
(another vLLM double stands in for the remote API), and the official `openai` package in front.

No assertion here is about wall-clock time: streaming is checked by how many pieces arrive and
in which order, and waits for background effects (the engine probe, a revoked key, an aborted
upstream request) poll with a bound and then check the state itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from appliance.gateway.keys import create_key, revoke_key
from tests.doubles import DOUBLE, free_port

ROOT = Path(__file__).resolve().parents[2]
REMOTE_KEY = "sk-remote-NEVER-LOG-ME-4f1c2e"
ADMIN_KEY = "admin-NEVER-LOG-ME-93ab"

# The doubles run through this launcher: the stdlib server under them listens with a backlog of
# 5 and leaves Nagle on, where vLLM's uvicorn listens with 2048 and sets TCP_NODELAY. The load
# test opens 500 connections at once, which a backlog of 5 turns into kernel resets.
LAUNCHER = textwrap.dedent(
    """
    import runpy, socketserver, sys
    socketserver.TCPServer.request_queue_size = 2048
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)

RUNNER = textwrap.dedent(
    """
    import json, logging, sys
    from pathlib import Path
    from appliance.gateway import config as gateway_config
    from appliance.gateway.config import GatewayConfig, RemoteConfig, SecretSource
    from appliance.vocabulary import FallbackMode
    from appliance.gateway.server import run_gateway

    spec = json.loads(Path(sys.argv[1]).read_text())
    remote = spec.pop("remote")
    if remote:
        remote = RemoteConfig(remote["base_url"], SecretSource(env=remote["key_env"]),
                              remote["model_map"])
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    client = spec.pop("client")
    limits = {"client": gateway_config.ClientLimits(**client)} if client else {}
    config = GatewayConfig(
        **limits,
        chat_upstream=spec["chat"], chat_models=("tiny",),
        embeddings_upstream=spec["embeddings"], embeddings_model="bge",
        keys_file=Path(spec["state"]) / "keys.json",
        state_file=Path(spec["state"]) / "fallback.json",
        remote=remote, admin_key=SecretSource(env="GW_ADMIN_KEY"),
        default_fallback_mode=FallbackMode(spec["mode"]),
        queue_threshold=16, probe_interval_s=0.2, failure_cooldown_s=spec["cooldown"],
    )
    run_gateway(config, host="127.0.0.1", port=int(sys.argv[2]), log_level="debug")
    """
)


@dataclass
class Engine:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0


def _wait_for(check: Callable[[], bool], what: str, bound_s: float = 20.0) -> None:
    deadline = time.monotonic() + bound_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True


@contextmanager
def engine(role: str, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Engine]:
    port = free_port()
    argv = [sys.executable, "-c", LAUNCHER, str(DOUBLE), "--role", role, "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*argv, "--port", str(port), *args],
        env={**dict(env or {}), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
    )
    double = Engine(f"http://127.0.0.1:{port}", process)
    try:
        _wait_for(lambda: _answers(f"{double.url}/metrics"), f"the {role} double")
        yield double
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def vllm(name: str = "tiny", **env: str) -> Any:
    return engine("vllm", "--model", f"/models/{name}", "--served-model-name", name, env=env)


@dataclass
class Remote:
    """A stand-in remote API that is not an engine double (only its /v1 base URL matters)."""

    v1: str


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    key: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or self.key, base_url=f"{self.url}/v1", max_retries=0)

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = httpx.get(f"{self.url}/health", timeout=5).json()
        return health


@pytest.fixture(scope="module")
def remote() -> Iterator[Engine]:
    with vllm("gpt-remote") as double:
        yield double


@contextmanager
def gateway(
    state: Path,
    key: str,
    chat: Engine,
    tei: Engine,
    remote: Engine | Remote | None,
    *,
    mode: str = "off",
    cooldown: float = 2.0,
    client: Mapping[str, float] | None = None,
    open_files: int | None = None,
) -> Iterator[Gateway]:
    """The gateway in its own process; `client` sets `ClientLimits` fields, `open_files` its
    RLIMIT_NOFILE (soft and hard, as systemd's LimitNOFILE= would)."""
    spec = {
        "client": dict(client or {}),
        "chat": chat.v1,
        "embeddings": tei.v1,
        "state": str(state),
        "mode": mode,
        "cooldown": cooldown,
        "remote": {
            "base_url": remote.v1,
            "key_env": "GW_REMOTE_KEY",
            "model_map": {"tiny": "gpt-remote"},
        }
        if remote
        else None,
    }
    state.mkdir(parents=True, exist_ok=True)
    spec_file = state.parent / "gateway.json"
    spec_file.write_text(json.dumps(spec))
    port = free_port()
    log = state.parent / f"gateway-{port}.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GW_REMOTE_KEY": REMOTE_KEY,
        "GW_ADMIN_KEY": ADMIN_KEY,
    }
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(spec_file), str(port)],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    if open_files is not None:
        # Set from outside (prlimit) rather than in a preexec_fn, which is unsafe with threads.
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (open_files, open_files))
    running = Gateway(f"http://127.0.0.1:{port}", process, log, key)
    try:
        _wait_for(
            lambda: process.poll() is None and _answers(f"{running.url}/health"), "the gateway"
        )
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang is a bug; do not leak it
            process.kill()
            process.wait()


CHAT = [{"role": "user", "content": "hello there"}]


# ---------------------------------------------------------------------------------- the API


def test_the_openai_sdk_works_through_the_gateway(state, api_key, tei, remote) -> None:
    with (
        vllm(DOUBLE_TOKEN_DELAY_S="0.02") as chat,
        gateway(state, api_key, chat, tei, remote) as gw,
    ):
        client = gw.client()
        reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3)
        assert reply.choices[0].message.content == " tok0 tok1 tok2"
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=CHAT, max_tokens=1
        )
        assert raw.headers["x-appliance-route"] == "local"

        pieces = [
            chunk.choices[0].delta.content
            for chunk in client.chat.completions.create(
                model="tiny", messages=CHAT, max_tokens=5, stream=True
            )
            if chunk.choices and chunk.choices[0].delta.content
        ]
        assert pieces == [" tok0", " tok1", " tok2", " tok3", " tok4"]

        completion = client.completions.create(model="tiny", prompt="once", max_tokens=2)
        assert completion.choices[0].text == " tok0 tok1"
        vectors = client.embeddings.create(model="bge", input=["a", "b"])
        assert [len(item.embedding) for item in vectors.data] == [8, 8]
        # Fallback is off: the remote model is not servable through this gateway now.
        assert {m.id for m in client.models.list()} == {"tiny", "bge"}


def test_a_stream_is_forwarded_as_it_is_made_not_buffered(state, api_key, tei) -> None:
    tokens = 8
    body = {"model": "tiny", "messages": CHAT, "max_tokens": tokens, "stream": True}
    with vllm(DOUBLE_TOKEN_DELAY_S="0.05") as chat, gateway(state, api_key, chat, tei, None) as gw:
        reads: list[bytes] = []
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=30,
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-appliance-route"] == "local"
            reads.extend(response.iter_raw())
    # The double writes one event per token with a pause between them; a buffering proxy hands
    # them over in one piece, a pass-through in (at least) as many pieces as there are tokens.
    assert len(reads) >= tokens
    assert reads[0].startswith(b"data: ")
    assert reads[-1].endswith(b"data: [DONE]\n\n")
    events = b"".join(reads).split(b"\n\n")
    contents = [
        json.loads(event[6:])["choices"][0]["delta"].get("content")
        for event in events
        if event.startswith(b"data: {")
    ]
    assert contents[:tokens] == [f" tok{i}" for i in range(tokens)]


# ---------------------------------------------------------------------------------- keys


def test_keys_unknown_revoked_and_rate_limited(state, api_key, tei) -> None:
    limited = create_key(state / "keys.json", "batch", rate_limit_per_minute=2).key
    with vllm() as chat, gateway(state, api_key, chat, tei, None) as gw:
        with pytest.raises(openai.AuthenticationError) as refused:
            gw.client("sk-appl-000000000000-nothing").models.list()
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"
        missing = httpx.post(f"{gw.url}/v1/chat/completions", json={})
        assert missing.status_code == 401
        assert missing.headers["x-appliance-route"] == "local"

        batch = gw.client(limited)
        batch.models.list()
        batch.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as limited_error:
            batch.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
        assert int(limited_error.value.response.headers["retry-after"]) >= 1

        gw.client().models.list()
        revoke_key(state / "keys.json", "team")

        def refused_now() -> bool:
            try:
                gw.client().models.list()
            except openai.AuthenticationError:
                return True
            return False

        _wait_for(refused_now, "the revoked key to be refused")


# ---------------------------------------------------------------------------------- fallback


def test_off_with_the_local_engine_down_is_a_503_in_openai_shape(state, api_key, tei, remote):
    served_remotely = remote.metric("vllm:request_success_total", finished_reason="length")
    with vllm() as chat, gateway(state, api_key, chat, tei, remote, mode="off") as gw:
        chat.kill()
        with pytest.raises(openai.InternalServerError) as down:
            gw.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
        assert down.value.status_code == 503
        assert down.value.code == "local_engine_unavailable"
        assert down.value.response.headers["x-appliance-route"] == "local"
    assert remote.metric("vllm:request_success_total", finished_reason="length") == served_remotely


def _routes(gw: Gateway, count: int = 3) -> list[str]:
    client = gw.client()
    routes = []
    for _ in range(count):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=CHAT, max_tokens=1
        )
        assert raw.parse().model in ("tiny", "gpt-remote")
        routes.append(raw.headers["x-appliance-route"])
    return routes


def test_auto_overflows_when_the_local_engine_is_killed(state, api_key, tei, remote) -> None:
    with vllm() as chat, gateway(state, api_key, chat, tei, remote, mode="auto") as gw:
        assert _routes(gw, 1) == ["local"]
        chat.kill()
        assert _routes(gw) == ["remote", "remote", "remote"]
        reply = gw.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        assert reply.model == "gpt-remote"  # the local name was mapped for the remote API


def test_auto_overflows_on_a_5xx_before_any_byte(state, api_key, tei, remote) -> None:
    with (
        vllm(DOUBLE_FAIL="die-after-healthy") as chat,
        gateway(state, api_key, chat, tei, remote, mode="auto") as gw,
    ):
        # The engine answers 500 and dies: that request and the next go to the remote API.
        assert _routes(gw, 2) == ["remote", "remote"]
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'appliance_gateway_fallbacks_total{reason="server_error"} 1.0' in metrics


def test_auto_overflows_when_the_queue_is_past_the_threshold(state, api_key, tei, remote):
    with (
        vllm(DOUBLE_WAITING="50") as chat,
        gateway(state, api_key, chat, tei, remote, mode="auto") as gw,
    ):
        _wait_for(lambda: gw.health()["local"]["waiting_requests"] == 50, "the engine probe")
        assert _routes(gw, 2) == ["remote", "remote"]
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'appliance_gateway_fallbacks_total{reason="queue"} 2.0' in metrics


def test_always_and_the_mode_survives_a_restart(state, api_key, tei, remote) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    with vllm() as chat:
        with gateway(state, api_key, chat, tei, remote, mode="off") as gw:
            assert _routes(gw, 1) == ["local"]
            put = httpx.put(f"{gw.url}/admin/fallback", json={"mode": "always"}, headers=admin)
            assert put.status_code == 200
            assert _routes(gw, 2) == ["remote", "remote"]
        with gateway(state, api_key, chat, tei, remote, mode="off") as gw:
            assert httpx.get(f"{gw.url}/admin/fallback", headers=admin).json()["mode"] == "always"
            assert _routes(gw, 1) == ["remote"]


# ---------------------------------------------------------------------------------- failures


def test_an_upstream_dying_mid_stream_ends_that_stream_with_an_error(
    state, api_key, tei, remote
) -> None:
    served_remotely = remote.metric("vllm:request_success_total", finished_reason="length")
    with (
        vllm(DOUBLE_TOKEN_DELAY_S="0.05") as chat,
        gateway(state, api_key, chat, tei, remote, mode="auto", cooldown=60) as gw,
    ):
        stream = gw.client().chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=200, stream=True
        )
        received = []

        def read_all() -> None:
            for chunk in stream:
                received.append(chunk)
                if len(received) == 2:
                    chat.kill()

        with pytest.raises(openai.APIError, match="mid-stream"):
            read_all()
        # Some tokens arrived, then the error: never a retry that would repeat them remotely.
        assert 2 <= len(received) < 200
        assert all(chunk.model == "tiny" for chunk in received)
        assert (
            remote.metric("vllm:request_success_total", finished_reason="length") == served_remotely
        )
        # The gateway goes on serving: the next request overflows to the remote API.
        assert _routes(gw, 1) == ["remote"]


def test_a_client_that_disconnects_cancels_the_upstream_request(state, api_key, tei) -> None:
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 500, "stream": True}
    with vllm(DOUBLE_TOKEN_DELAY_S="0.02") as chat, gateway(state, api_key, chat, tei, None) as gw:
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=30,
        ) as response:
            first = next(response.iter_raw())
            assert first.startswith(b"data: ")
        # Leaving the block closed the connection. The engine notices at its next write.
        _wait_for(
            lambda: chat.metric("vllm:request_success_total", finished_reason="abort") == 1,
            "the engine to see the request aborted",
        )
        assert chat.metric("vllm:request_success_total", finished_reason="length") == 0
        assert _routes(gw, 1) == ["local"]


# ---------------------------------------------------------------------------------- secrets


def test_no_secret_in_logs_metrics_errors_or_ps(state, api_key, tei, remote) -> None:
    with vllm() as chat, gateway(state, api_key, chat, tei, remote, mode="auto") as gw:
        bodies = [
            httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={},
                headers={"authorization": f"Bearer {api_key}x"},
            ).text,
            httpx.put(
                f"{gw.url}/admin/fallback", json={"mode": "bad"}, headers={"authorization": "x"}
            ).text,
        ]
        assert _routes(gw, 1) == ["local"]
        chat.kill()
        assert _routes(gw, 2) == ["remote", "remote"]
        put = httpx.put(
            f"{gw.url}/admin/fallback",
            json={"mode": "off"},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        bodies.append(put.text)
        with pytest.raises(openai.InternalServerError) as down:
            gw.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
        bodies.append(down.value.response.text)
        metrics = httpx.get(f"{gw.url}/metrics").text
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
        cmdline = Path(f"/proc/{gw.process.pid}/cmdline").read_bytes().decode()
    log = gw.log.read_text()
    assert "fallback mode set to off" in log  # the log is really being written
    assert "to the remote API" in log
    assert "local chat engine is down" in log
    for secret in (api_key, api_key.split("-")[-1], REMOTE_KEY, ADMIN_KEY):
        for where, text in [("log", log), ("metrics", metrics), ("ps", ps.stdout)]:
            assert secret not in text, where
        assert secret not in cmdline
        assert all(secret not in body for body in bodies)
    assert "Bearer" not in log
    assert "authorization" not in log.lower()
