"""A model update of several chat models (spec.switching, issue #19 point 3), for real: the
private dockerd, the vLLM double image with sleep mode, the gateway in-process, and a steady
stream of requests for one model while `apply` changes a switched engine's flags.

- The awake model's engine, the new one fitting beside: blue/green, the stream sees no error.
- The awake model's engine, not fitting: in place, that model held (503 with Retry-After past
  the bound), none hangs.
- A sleeping model's engine: in place; the awake model sleeps while the new engine starts, its
  requests held meanwhile; afterwards it is the awake one again and the gateway agrees.

After each, the engines' own /is_sleeping and the gateway's switcher agree. The gap clients saw
is printed (`-s`), never asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig, gateway_state_dir
from appliance.gateway.rollout import ROLLOUT_FILE, read_rollout
from appliance.hardware import detect_box
from appliance.profile import Profile, parse_profile
from appliance.runtime.apply import ApplyEvent, ApplyFailedError, apply_profile
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import FallbackMode, weights_path
from tests.doubles import EngineDoubleImages, free_port
from tests.integration.test_apply_update import Answer, _apply, _apply_streaming, _gap_report

pytestmark = pytest.mark.docker

CHAT = "Qwen/Qwen2.5-7B-Instruct-AWQ"
CODER = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ"
MAIN = "llm-appliance-swupd-vllm"
SECOND = "llm-appliance-swupd-vllm-2"


def _profile(
    tmp_path: Path,
    image: str,
    ports: Mapping[str, int],
    util: float,
    coder_length: int,
) -> Profile:
    return parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: swupd}\nspec:\n"
        f"  model: {{repo: {CHAT}, quantization: awq, served_model_name: chat}}\n"
        f"  engine: {{max_model_len: 4096, gpu_memory_utilization: {util}}}\n"
        "  switching:\n"
        f"    models: [{{repo: {CODER}, quantization: awq, served_model_name: coder, "
        f"port: {ports['coder']}, max_model_len: {coder_length}}}]\n"
        "  embeddings: {enabled: false}\n"
        f"  images: {{vllm: '{image}'}}\n"
        f"  ports: {{vllm: {ports['vllm']}, vllm_update: {ports['vllm_update']}, "
        f"gateway: {ports['gateway']}}}\n"
        f"  storage: {{models_dir: {tmp_path / 'models'}, state_dir: {tmp_path / 'state'}}}\n",
        "swupd.yaml",
    )


def _weights(tmp_path: Path) -> None:
    for repo in (CHAT, CODER):
        weights = weights_path(tmp_path / "models", repo, "main")
        weights.mkdir(parents=True)
        (weights / "config.json").write_text("{}")


def _sleeping(port: int) -> bool:
    answer = httpx.get(f"http://127.0.0.1:{port}/is_sleeping", timeout=5).json()
    return bool(answer["is_sleeping"])


def _update_under_load(
    tmp_path: Path, engine: object, before: Profile, after: Profile, *, model: str, awake: str
) -> tuple[list[Answer], Any, list[ApplyEvent], dict[str, Any]]:
    """Make `awake` the awake model through the gateway, then apply `after` over `before`
    while one client asks `model` back to back; the gateway's switcher report afterwards."""
    config = dataclasses.replace(
        GatewayConfig.from_profile(before),
        auth_required=False,
        probe_interval_s=0,
        remote=None,
        default_fallback_mode=FallbackMode.OFF,
        update_hold_timeout_s=5.0,
    )
    events: list[ApplyEvent] = []

    async def scenario() -> tuple[list[Answer], Any, dict[str, Any]]:
        app = GatewayApp(config, refresh_interval_s=0.05)
        async with app.running():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gw", timeout=120
            ) as client:
                first = await client.post(
                    "/v1/chat/completions",
                    json={"model": awake, "messages": [{"role": "user", "content": "hi"}]},
                )
                assert first.status_code == 200

                answers, result = await _apply_streaming(
                    client, config, after, engine, tmp_path=tmp_path, events=events, model=model
                )
                await asyncio.sleep(0.2)  # the gateway reads the last rollout
                # Another request for each model: the switcher's view holds.
                for name in ("chat", "coder"):
                    answer = await client.post(
                        "/v1/chat/completions",
                        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                    )
                    assert (answer.status_code, answer.json()["model"]) == (200, name)
                report: dict[str, Any] = (await client.get("/health")).json()
                return answers, result, report

    answers, result, report = asyncio.run(scenario())
    return answers, result, events, report


def _deployed(
    tmp_path: Path, engine: object, engine_doubles: EngineDoubleImages, util: float
) -> tuple[dict[str, int], Profile, Profile]:
    """Two chat models applied (each taking `util` of the GPU while awake); the ports, that
    profile, and the same with coder's max_model_len changed."""
    _weights(tmp_path)
    ports = {k: free_port() for k in ("vllm", "coder", "vllm_update", "gateway")}
    image = engine_doubles.vllm["ok"]
    before = _profile(tmp_path, image, ports, util=util, coder_length=4096)
    assert _apply(before, engine, tmp_path).applied
    return ports, before, _profile(tmp_path, image, ports, util=util, coder_length=8192)


def _port_of(result: Any, name: str) -> int:
    (container,) = [c for c in result.containers if c.name == name]
    (port,) = container.host_ports.values()
    return int(port)


@pytest.fixture(autouse=True)
def _dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")  # the gateway's own sleep-mode calls


def test_the_awake_models_update_that_fits_goes_blue_green_without_errors(
    engine: object, engine_doubles: EngineDoubleImages, tmp_path: Path
) -> None:
    ports, before, after = _deployed(tmp_path, engine, engine_doubles, util=0.4)
    answers, result, events, report = _update_under_load(
        tmp_path, engine, before, after, model="coder", awake="coder"
    )
    print("\n" + _gap_report("switched blue/green", answers, "coder"))
    by_name = {a.name: a for a in result.plan.actions}
    assert (by_name[SECOND].kind, by_name[SECOND].beside) == ("replace", True)
    assert by_name[MAIN].kind == "keep"
    assert [a.status for a in answers if a.status != 200] == []
    assert {a.model for a in answers} == {"coder"}
    assert _port_of(result, SECOND) == ports["vllm_update"]
    # chat, then coder, answered once more after the update: the switcher put the new engine
    # to sleep and woke it again, at its new port.
    assert report["switching"]["models"]["chat"]["state"] == "asleep-1"
    assert report["switching"]["models"]["coder"]["state"] == "awake"
    assert _sleeping(ports["vllm"])
    assert not _sleeping(ports["vllm_update"])
    assert report["rollout"]["models"]["coder"]["upstream"] == (
        f"http://127.0.0.1:{ports['vllm_update']}/v1"
    )
    assert not [e for e in events if e.step == "sleep"]  # nothing was put to sleep by apply


def test_the_awake_models_update_that_does_not_fit_holds_that_model_in_place(
    engine: object, engine_doubles: EngineDoubleImages, tmp_path: Path
) -> None:
    ports, before, after = _deployed(tmp_path, engine, engine_doubles, util=0.8)
    answers, result, _events, report = _update_under_load(
        tmp_path, engine, before, after, model="coder", awake="coder"
    )
    print("\n" + _gap_report("switched in place", answers, "coder"))
    action = next(a for a in result.plan.actions if a.name == SECOND)
    assert (action.kind, action.beside) == ("replace", False)
    for answer in answers:
        assert (answer.status, answer.model) == (200, "coder") or (
            answer.status == 503 and answer.retry_after is not None
        )
    assert _port_of(result, SECOND) == ports["coder"]
    assert report["switching"]["models"]["chat"]["state"] == "asleep-1"
    assert report["switching"]["models"]["coder"]["state"] == "awake"
    assert _sleeping(ports["vllm"])
    assert not _sleeping(ports["coder"])


def test_a_sleeping_models_update_keeps_the_awake_one_awake_and_the_gateway_agrees(
    engine: object, engine_doubles: EngineDoubleImages, tmp_path: Path
) -> None:
    ports, before, after = _deployed(tmp_path, engine, engine_doubles, util=0.8)
    # chat awake, coder's engine changes: the stream asks for chat.
    answers, result, events, report = _update_under_load(
        tmp_path, engine, before, after, model="chat", awake="chat"
    )
    print("\n" + _gap_report("sleeping model replaced", answers))
    action = next(a for a in result.plan.actions if a.name == SECOND)
    assert (action.kind, action.beside) == ("replace", False)
    assert any(n.startswith("coder is asleep") for n in result.plan.notes)
    for answer in answers:
        assert (answer.status, answer.model) == (200, "chat") or (
            answer.status == 503 and answer.retry_after is not None
        )
    steps = [(e.step, e.message) for e in events if e.step in ("sleep", "wake")]
    assert steps == [
        ("sleep", f"putting {MAIN} to sleep (level 1)"),
        ("sleep", f"putting {SECOND} to sleep (level 1)"),
        ("wake", f"waking {MAIN}"),
    ]
    # The last requests (chat, then coder) leave coder awake; the engines agree.
    assert report["switching"]["models"]["coder"]["state"] == "awake"
    assert _sleeping(ports["vllm"])
    assert not _sleeping(ports["coder"])


@pytest.mark.parametrize("awake", ["chat", "coder"])
def test_a_switched_update_whose_new_engines_never_turn_healthy_is_rolled_back(
    engine: Any, engine_doubles: EngineDoubleImages, tmp_path: Path, awake: str
) -> None:
    """A new image that never answers /health, for both engines (both updates in place, the
    further model's first): the engines that were there come back under their names, the awake
    one awake and the other asleep, and the gateway's rollout holds and pauses nothing."""
    _weights(tmp_path)
    ports = {k: free_port() for k in ("vllm", "coder", "vllm_update", "gateway")}
    before = _profile(tmp_path, engine_doubles.vllm["ok"], ports, util=0.4, coder_length=4096)
    assert _apply(before, engine, tmp_path).applied
    if awake == "coder":  # as the gateway leaves them after a request for coder
        httpx.post(f"http://127.0.0.1:{ports['vllm']}/sleep?level=1", timeout=10)
        httpx.post(f"http://127.0.0.1:{ports['coder']}/wake_up", timeout=10)
    asleep = "chat" if awake == "coder" else "coder"
    port_of = {"chat": ports["vllm"], "coder": ports["coder"]}
    assert not _sleeping(port_of[awake])
    assert _sleeping(port_of[asleep])
    there = {c.name: c.id for c in engine.managed_containers("swupd")}
    never = _profile(
        tmp_path, engine_doubles.vllm["never-healthy"], ports, util=0.4, coder_length=4096
    )
    box = detect_box(simulate="rtx4090", models_dir=tmp_path / "models")
    with pytest.raises(ApplyFailedError, match="not healthy after"):
        apply_profile(
            never, box, engine, options=SpecOptions(gpu_requests=False), deadlines_s={"vllm": 3.0}
        )
    assert {c.name: c.id for c in engine.managed_containers("swupd")} == there
    assert not _sleeping(port_of[awake])
    assert _sleeping(port_of[asleep])
    rollout = read_rollout(gateway_state_dir(before) / ROLLOUT_FILE)
    assert (rollout.held, rollout.switching_paused, rollout.updating) == ((), False, False)
    assert set(rollout.upstreams.values()) <= {
        f"http://127.0.0.1:{ports['vllm']}/v1",
        f"http://127.0.0.1:{ports['coder']}/v1",
    }
    # The box is as the profile before says: applying it again changes nothing.
    assert _apply(before, engine, tmp_path).plan.is_noop
