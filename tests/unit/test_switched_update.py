"""A model update of several chat models (spec.switching, issue #19 point 3): the plan says, per
replaced engine, how its clients get through it.

- the awake engine, when the new one fits beside it with the sleeping engines' residual memory:
  blue/green on the spare chat port (spec.ports.vllm_update);
- the awake engine otherwise: in place, the gateway holding (or sending remote) that model only;
- a sleeping engine: in place; its clients only wait for a wake of the new engine later.

Which engine is awake is read from the engines (`/is_sleeping`), injected here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.hardware import detect_box
from appliance.profile import Profile, parse_profile
from appliance.runtime.apply import plan_profile
from appliance.runtime.model import ObservedContainer
from appliance.runtime.plan import Plan
from appliance.runtime.specs import container_specs
from tests.unit.test_model_update import REMOTE, _engine, _running

TEXT = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata: {{name: sw}}
spec:
  model: {{repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq, served_model_name: chat}}
  engine: {{max_model_len: 4096, gpu_memory_utilization: {chat_util}}}
  switching:
    models:
      - {{repo: hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ, quantization: awq,
         served_model_name: coder, port: 8010, gpu_memory_utilization: {coder_util},
         max_model_len: {coder_length}}}
  embeddings: {{enabled: false}}
  storage: {{models_dir: /tmp/sw-models, state_dir: {state}}}
{remote}"""

MAIN = "llm-appliance-sw-vllm"
CODER = "llm-appliance-sw-vllm-2"
BOX = detect_box(simulate="rtx4090", models_dir=Path("/tmp/sw-models"))


def _profile(
    tmp_path: Path,
    *,
    coder_util: float = 0.4,
    coder_length: int = 4096,
    chat_util: float = 0.4,
    remote: bool = False,
) -> Profile:
    text = TEXT.format(
        chat_util=chat_util,
        coder_util=coder_util,
        coder_length=coder_length,
        state=tmp_path / "state",
        remote=REMOTE if remote else "",
    )
    return parse_profile(text, "sw.yaml")


def _box_running(profile: Profile) -> list[ObservedContainer]:
    return [_running(s) for s in container_specs(profile, BOX)]


def _awake(port: int) -> Callable[[str], bool | None]:
    """`/is_sleeping` of each engine origin: only the one on `port` is awake."""
    return lambda origin: not origin.endswith(f":{port}")


def test_the_awake_models_update_that_fits_beside_starts_on_the_spare_chat_port(
    tmp_path: Path,
) -> None:
    running = _box_running(_profile(tmp_path))
    after = _profile(tmp_path, coder_length=8192)
    plan = plan_profile(after, BOX, _engine(*running), sleeping=_awake(8010))  # type: ignore[arg-type]
    by_name = {a.name: a for a in plan.actions}
    assert by_name[MAIN].kind == "keep"
    action = by_name[CODER]
    assert (action.kind, action.beside) == ("replace", True)
    assert action.spec is not None
    assert action.spec.ports[0].host_port == 8100
    assert action.spec.health_url == "http://127.0.0.1:8100/health"
    (note,) = plan.notes
    assert note.startswith("coder is awake: its update runs without an outage: the new engine")
    assert "port 8100" in note
    # The sleeping engine's residual memory counts beside the two budgets.
    assert "old 0.40 + new 0.40 of 23.5 GiB + 1 sleeping engine(s) 1.2 GiB" in note


def test_the_awake_models_update_that_does_not_fit_is_in_place_and_holds_that_model_only(
    tmp_path: Path,
) -> None:
    running = _box_running(_profile(tmp_path, coder_util=0.8))
    after = _profile(tmp_path, coder_util=0.8, coder_length=8192)
    plan = plan_profile(after, BOX, _engine(*running), sleeping=_awake(8010))  # type: ignore[arg-type]
    action = next(a for a in plan.actions if a.name == CODER)
    assert (action.kind, action.beside) == ("replace", False)
    (note,) = plan.notes
    assert note.startswith("coder is awake: its update is in place (both engines do not fit")
    assert "the gateway holds coder's requests" in note
    assert "no other model is woken until it is done" in note
    remote = _profile(tmp_path, coder_util=0.8, coder_length=8192, remote=True)
    (note,) = plan_profile(remote, BOX, _engine(*running), sleeping=_awake(8010)).notes  # type: ignore[arg-type]
    assert "sends coder's requests to the remote API while fallback is auto or always" in note


def test_a_sleeping_models_update_is_in_place_and_costs_its_clients_a_wake_later(
    tmp_path: Path,
) -> None:
    running = _box_running(_profile(tmp_path))
    after = _profile(tmp_path, coder_length=8192)
    plan = plan_profile(after, BOX, _engine(*running), sleeping=_awake(8000))  # type: ignore[arg-type]
    action = next(a for a in plan.actions if a.name == CODER)
    assert (action.kind, action.beside) == ("replace", False)
    (note,) = plan.notes
    assert note.startswith("coder is asleep: its engine is replaced in place")
    assert "the next request for coder waits for the new engine to wake" in note
    # vLLM takes its whole budget when it starts: the awake model sleeps meanwhile, and says so.
    assert "chat, awake, sleeps while the new engine starts" in note


def test_no_spare_chat_port_means_in_place(tmp_path: Path) -> None:
    """spec.model's engine runs on spec.ports.vllm_update after its own blue/green update: the
    further model's update cannot take that port."""
    profile = _profile(tmp_path)
    running = [
        _running(s, port=8100 if s.name == MAIN else None) for s in container_specs(profile, BOX)
    ]
    after = _profile(tmp_path, coder_length=8192)
    plan = plan_profile(after, BOX, _engine(*running), sleeping=_awake(8010))  # type: ignore[arg-type]
    by_name = {a.name: a for a in plan.actions}
    assert by_name[MAIN].kind == "keep"  # it stays on the port it runs on
    assert by_name[CODER].beside is False
    (note,) = plan.notes
    assert "port 8100 is taken by llm-appliance-sw-vllm" in note


def test_after_a_blue_green_update_a_further_model_stays_on_the_spare_port(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    running = [
        _running(s, port=8100 if s.name == CODER else None) for s in container_specs(profile, BOX)
    ]
    plan = plan_profile(profile, BOX, _engine(*running), sleeping=_awake(8100))  # type: ignore[arg-type]
    assert {a.kind for a in plan.actions} == {"keep"}
    # Its next update moves back to its own port.
    after = _profile(tmp_path, coder_length=8192)
    plan = plan_profile(after, BOX, _engine(*running), sleeping=_awake(8100))  # type: ignore[arg-type]
    action = next(a for a in plan.actions if a.name == CODER)
    assert action.beside
    assert action.spec is not None
    assert action.spec.ports[0].host_port == 8010


# -- apply's side: the engines' sleep turns and what the gateway is told


class _Calls:
    """The engines' sleep-mode calls apply makes (all answer 200)."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, method: str, url: str, body: bytes) -> bool:
        self.urls.append(url)
        return True


def _update(tmp_path: Path, awake_port: int) -> tuple[Profile, Plan, str | None]:
    """coder's max_model_len changed on a box running both (each 0.8: in place); the plan
    and the awake engine's container."""
    running = _box_running(_profile(tmp_path, coder_util=0.8, chat_util=0.8))
    after = _profile(tmp_path, coder_util=0.8, chat_util=0.8, coder_length=8192)
    awake = MAIN if awake_port == 8000 else CODER
    plan = plan_profile(after, BOX, _engine(*running), sleeping=_awake(awake_port))  # type: ignore[arg-type]
    return after, plan, awake


def test_a_sleeping_engines_update_sleeps_the_awake_one_then_wakes_it_not_spec_model(
    tmp_path: Path,
) -> None:
    """chat awake and coder's engine replaced: the engine awake before is the one awake
    after, the new one asleep."""
    from appliance.runtime.apply import SleepTurns

    profile, plan, awake = _update(tmp_path, awake_port=8000)
    calls = _Calls()
    turns = SleepTurns.of(profile, plan, calls, lambda _: None, awake=awake)
    assert turns is not None
    turns.before(plan)
    assert calls.urls == ["http://127.0.0.1:8000/sleep?level=1"]  # only the awake one
    coder = next(a.spec for a in plan.actions if a.name == CODER)
    assert coder is not None
    turns.after_healthy(coder)
    assert calls.urls[-1] == "http://127.0.0.1:8010/sleep?level=1"
    turns.finish(plan)
    assert calls.urls[-1] == "http://127.0.0.1:8000/wake_up"


def test_the_awake_engines_update_in_place_leaves_the_new_one_awake(tmp_path: Path) -> None:
    from appliance.runtime.apply import SleepTurns

    profile, plan, awake = _update(tmp_path, awake_port=8010)
    calls = _Calls()
    turns = SleepTurns.of(profile, plan, calls, lambda _: None, awake=awake)
    assert turns is not None
    turns.before(plan)  # chat, kept, sleeps already
    coder = next(a.spec for a in plan.actions if a.name == CODER)
    assert coder is not None
    turns.after_healthy(coder)
    turns.finish(plan)
    assert calls.urls == []


def test_after_a_rollback_the_engines_sleep_and_wake_as_before(tmp_path: Path) -> None:
    """The old coder engine, restored, starts afresh (awake): it sleeps again, and chat, put to
    sleep for the new engine, wakes."""
    from appliance.runtime.apply import SleepTurns

    profile, plan, awake = _update(tmp_path, awake_port=8000)
    calls = _Calls()
    turns = SleepTurns.of(profile, plan, calls, lambda _: None, awake=awake)
    assert turns is not None
    turns.before(plan)
    calls.urls.clear()
    turns.settle(plan)
    assert calls.urls == [
        "http://127.0.0.1:8010/sleep?level=1",
        "http://127.0.0.1:8000/wake_up",
    ]


def test_the_gateway_holds_the_replaced_model_and_the_awake_one_and_learns_the_new_urls(
    tmp_path: Path,
) -> None:
    from appliance.gateway.rollout import read_rollout
    from appliance.runtime.apply import GatewayHandover, SwitchedHandover

    profile, plan, awake = _update(tmp_path, awake_port=8000)
    handover = GatewayHandover(tmp_path / "rollout.json", lambda: None)
    said: list[str] = []
    switched = SwitchedHandover.of(profile, plan, awake, handover, lambda e: said.append(e.message))
    assert switched is not None
    assert switched.held == ("coder", "chat")
    switched.pause(None)
    rollout = read_rollout(tmp_path / "rollout.json")
    assert (rollout.held, rollout.switching_paused) == (("coder", "chat"), True)
    assert said == ["the gateway holds coder, chat and wakes no model"]
    switched.release(plan)
    rollout = read_rollout(tmp_path / "rollout.json")
    assert (rollout.held, rollout.switching_paused) == ((), False)
    assert dict(rollout.upstreams) == {
        "chat": "http://127.0.0.1:8000/v1",
        "coder": "http://127.0.0.1:8010/v1",
    }


def test_when_every_engine_sleeps_the_update_leaves_them_all_asleep(tmp_path: Path) -> None:
    """An idle TTL put the last awake model to sleep: nothing is woken by apply, the new
    engine sleeps once healthy, and no model is held."""
    from appliance.runtime.apply import (
        ALL_ASLEEP,
        GatewayHandover,
        SleepTurns,
        SwitchedHandover,
    )

    running = _box_running(_profile(tmp_path))
    after = _profile(tmp_path, coder_length=8192)
    plan = plan_profile(after, BOX, _engine(*running), sleeping=lambda _: True)  # type: ignore[arg-type]
    (note,) = plan.notes
    assert note.startswith("coder is asleep")
    assert "awake, sleeps" not in note
    calls = _Calls()
    turns = SleepTurns.of(after, plan, calls, lambda _: None, awake=ALL_ASLEEP)
    assert turns is not None
    turns.before(plan)
    for action in plan.actions:
        if action.kind == "replace" and action.spec is not None:
            turns.after_healthy(action.spec)
    turns.finish(plan)
    assert calls.urls == ["http://127.0.0.1:8010/sleep?level=1"]
    handover = GatewayHandover(tmp_path / "rollout.json", lambda: None)
    switched = SwitchedHandover.of(after, plan, ALL_ASLEEP, handover, lambda _: None)
    assert switched is not None
    assert switched.held == ("coder",)


def test_status_reads_spec_models_engine_where_a_switched_blue_green_update_moved_it(
    tmp_path: Path,
) -> None:
    from appliance.gateway.config import gateway_state_dir
    from appliance.gateway.rollout import ROLLOUT_FILE, Rollout, write_rollout
    from appliance.operations.status import profile_endpoints

    profile = _profile(tmp_path)
    (chat, *_) = profile_endpoints(profile)
    assert chat.base_url == "http://127.0.0.1:8000"
    rollout = Rollout(upstreams={"chat": "http://127.0.0.1:8100/v1"})
    write_rollout(gateway_state_dir(profile) / ROLLOUT_FILE, rollout)
    (chat, *_) = profile_endpoints(profile)
    assert chat.base_url == "http://127.0.0.1:8100"
