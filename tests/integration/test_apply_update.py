"""Model updates without an outage (issue #19 point 3), for real: the private dockerd, the
vLLM double image, the gateway in-process, and a steady stream of chat requests while `apply`
changes the chat model's flags.

- Both engines fit (blue/green): the stream sees no error at all.
- They do not fit (in place): every request is answered by the engine, by the remote API
  (fallback auto), or refused with 503 and Retry-After; none hangs.

The gap clients saw (the longest answer, and the longest time without an answer from the local
engine) is printed (`-s`), never asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig, RemoteConfig
from appliance.hardware import detect_box
from appliance.profile import Profile, parse_profile
from appliance.runtime.apply import ApplyEvent, GatewayHandover, apply_profile
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import FallbackMode, weights_path
from tests.doubles import EngineDoubleImages, free_port, threaded_engine_double

pytestmark = pytest.mark.docker

CHAT = "Qwen/Qwen2.5-7B-Instruct-AWQ"
STREAM_LIMIT = 3000  # requests at most, whatever the machine's speed


@dataclasses.dataclass
class Answer:
    started: float
    ended: float
    status: int
    retry_after: str | None
    model: str | None


def _profile(
    tmp_path: Path, image: str, ports: Mapping[str, int], util: float, length: int
) -> Profile:
    return parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: update-test}\nspec:\n"
        f"  model: {{repo: {CHAT}, quantization: awq, served_model_name: chat}}\n"
        f"  engine: {{max_model_len: {length}, gpu_memory_utilization: {util}}}\n"
        "  embeddings: {enabled: false}\n"
        f"  images: {{vllm: '{image}'}}\n"
        f"  ports: {{vllm: {ports['vllm']}, vllm_update: {ports['vllm_update']}, "
        f"gateway: {ports['gateway']}}}\n"
        f"  storage: {{models_dir: {tmp_path / 'models'}, state_dir: {tmp_path / 'state'}}}\n",
        "update-test.yaml",
    )


def _apply(profile: Profile, engine: object, tmp_path: Path, **kwargs: Any) -> Any:
    box = detect_box(simulate="rtx4090", models_dir=tmp_path / "models")
    return apply_profile(
        profile,
        box,
        engine,  # type: ignore[arg-type]
        options=SpecOptions(gpu_requests=False),
        deadlines_s={"vllm": 120.0},
        **kwargs,
    )


async def _stream(
    client: httpx.AsyncClient, done: Callable[[], bool], model: str = "chat"
) -> list[Answer]:
    """Requests for `model`, one after the other, until `done()`."""
    answers: list[Answer] = []
    while not done() and len(answers) < STREAM_LIMIT:
        started = time.monotonic()
        response = await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 2},
        )  # fmt: skip
        body = response.json() if response.status_code == 200 else {}
        answers.append(
            Answer(
                started, time.monotonic(), response.status_code,
                response.headers.get("retry-after"), body.get("model"),
            )
        )  # fmt: skip
    return answers


def _update_under_load(
    tmp_path: Path, engine: object, before: Profile, after: Profile, remote_url: str | None
) -> tuple[list[Answer], Any, list[ApplyEvent]]:
    """Apply `after` over `before` while one client sends chat requests back to back."""
    config = dataclasses.replace(
        GatewayConfig.from_profile(before),
        auth_required=False,
        probe_interval_s=0,
        remote=RemoteConfig(f"{remote_url}/v1", None, {"chat": "remote-chat"})
        if remote_url
        else None,
        default_fallback_mode=FallbackMode.AUTO if remote_url else FallbackMode.OFF,
    )
    events: list[ApplyEvent] = []

    async def scenario() -> tuple[list[Answer], Any]:
        app = GatewayApp(config, refresh_interval_s=0.05)
        async with app.running():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gw", timeout=120
            ) as client:
                return await _apply_streaming(
                    client, config, after, engine, tmp_path=tmp_path, events=events
                )

    answers, result = asyncio.run(scenario())
    return answers, result, events


async def _apply_streaming(
    client: httpx.AsyncClient,
    config: GatewayConfig,
    after: Profile,
    engine: object,
    *,
    tmp_path: Path,
    events: list[ApplyEvent],
    model: str = "chat",
) -> tuple[list[Answer], Any]:
    """Apply `after` in a thread, told to the in-process gateway behind `client`, while one
    client asks `model` back to back; the answers and apply's result."""
    loop = asyncio.get_running_loop()

    def status() -> Mapping[str, Any] | None:
        future = asyncio.run_coroutine_threadsafe(client.get("/health"), loop)
        body: Mapping[str, Any] = future.result(10).json()
        return body

    assert config.rollout_file is not None
    handover = GatewayHandover(config.rollout_file, status)
    applying = asyncio.ensure_future(
        asyncio.to_thread(
            _apply, after, engine, tmp_path, handover=handover, progress=events.append
        )
    )
    answers = await _stream(client, applying.done, model)
    return answers, await applying


def _gap_report(label: str, answers: list[Answer], local: str = "chat") -> str:
    """What clients saw: the answers by status and destination, the median and longest answer
    (and which request that was), and the longest stretch between two answers of the engine
    (the one serving `local`)."""
    durations = [a.ended - a.started for a in answers]
    longest = max(range(len(answers)), key=lambda i: durations[i])
    ends = [a.ended for a in answers if a.status == 200 and a.model == local]
    without_local = max((b - a for a, b in itertools.pairwise(ends)), default=0.0)
    counts: dict[str, int] = {}
    for a in answers:
        key = f"{a.status}" + (f" {a.model}" if a.model else "")
        counts[key] = counts.get(key, 0) + 1
    return (
        f"{label}: {len(answers)} requests {counts}; median answer "
        f"{sorted(durations)[len(durations) // 2] * 1000:.1f} ms, longest "
        f"{durations[longest] * 1000:.1f} ms (request {longest + 1}); longest stretch without "
        f"an answer from the local engine {without_local * 1000:.1f} ms"
    )


def _weights(tmp_path: Path) -> None:
    weights = weights_path(tmp_path / "models", CHAT, "main")
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")


def test_a_model_update_that_fits_beside_the_old_one_has_no_errors(
    engine: object, engine_doubles: EngineDoubleImages, tmp_path: Path
) -> None:
    _weights(tmp_path)
    ports = {"vllm": free_port(), "vllm_update": free_port(), "gateway": free_port()}
    image = engine_doubles.vllm["ok"]
    before = _profile(tmp_path, image, ports, util=0.4, length=4096)
    assert _apply(before, engine, tmp_path).applied
    after = _profile(tmp_path, image, ports, util=0.45, length=8192)
    answers, result, events = _update_under_load(tmp_path, engine, before, after, None)
    print("\n" + _gap_report("blue/green", answers))
    assert result.applied
    (action,) = result.plan.actions
    assert (action.kind, action.beside) == ("replace", True)
    assert [a.status for a in answers if a.status != 200] == []
    assert {a.model for a in answers} == {"chat"}
    handover = [e.message for e in events if e.step == "handover"]
    assert handover == [f"moving the gateway to llm-appliance-update-test-vllm "
                        f"(http://127.0.0.1:{ports['vllm_update']}/v1)"]  # fmt: skip
    # The new engine runs on the other chat port; the old one is gone.
    (running,) = [c for c in result.containers if c.role == "vllm"]
    assert set(running.host_ports.values()) == {ports["vllm_update"]}
    assert httpx.get(f"http://127.0.0.1:{ports['vllm_update']}/health", timeout=5).is_success
    # A plan of the same profile now keeps it where it runs.
    assert not _apply(after, engine, tmp_path).applied


@pytest.mark.parametrize("fallback", ["auto", "off"])
def test_a_model_update_that_does_not_fit_sends_the_gap_remote_or_holds_it(
    engine: object, engine_doubles: EngineDoubleImages, tmp_path: Path, fallback: str
) -> None:
    _weights(tmp_path)
    ports = {"vllm": free_port(), "vllm_update": free_port(), "gateway": free_port()}
    image = engine_doubles.vllm["ok"]
    before = _profile(tmp_path, image, ports, util=0.8, length=4096)
    assert _apply(before, engine, tmp_path).applied
    after = _profile(tmp_path, image, ports, util=0.8, length=8192)
    with threaded_engine_double("--model", "/m/r", "--served-model-name", "remote-chat") as remote:
        url = remote.url if fallback == "auto" else None
        answers, result, _ = _update_under_load(tmp_path, engine, before, after, url)
    print("\n" + _gap_report(f"in place, fallback {fallback}", answers))
    assert result.applied
    (action,) = result.plan.actions
    assert (action.kind, action.beside) == ("replace", False)
    assert any("model update in place" in note for note in result.plan.notes)
    for answer in answers:
        if answer.status == 200:  # the engine, the remote API, or held until the new engine
            assert answer.model in (("chat", "remote-chat") if fallback == "auto" else ("chat",))
        else:
            assert answer.status == 503
            assert answer.retry_after is not None
    (running,) = [c for c in result.containers if c.role == "vllm"]
    assert set(running.host_ports.values()) == {ports["vllm"]}
