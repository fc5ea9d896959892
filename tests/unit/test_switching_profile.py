"""Several chat models on one box (spec.switching, issue #19): the profile section, the
containers it runs, the plan that keeps them apart, and the sizing that refuses what cannot fit
together. Profiles without the section are untouched (the ready-made ones are checked by the
existing tests; one is re-checked here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import RefusedError
from appliance.fit import fit_switching
from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.local_model import resolve_profile_model
from appliance.profile import Profile, ProfileError, load_profile, parse_profile
from appliance.runtime.apply import check_fits
from appliance.runtime.model import ObservedContainer
from appliance.runtime.plan import make_plan
from appliance.runtime.specs import container_specs
from appliance.sizing import (
    GIB,
    SLEEPING_RESIDUAL_FLOOR_BYTES,
    SwitchedEngine,
    switching_fit,
)

PROFILES = Path(__file__).parents[2] / "profiles"

BASE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: multi
spec:
  model:
    repo: Qwen/Qwen2.5-7B-Instruct-AWQ
    quantization: awq
    served_model_name: qwen
  engine:
    gpu_memory_utilization: {util}
    max_model_len: 8192
"""

SWITCHING = """\
  switching:
    sleep_level: {level}
    models:
      - repo: hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ
        quantization: awq
        served_model_name: llama
        port: 8010
"""

THIRD = """\
      - repo: Qwen/Qwen3-8B-AWQ
        quantization: awq
        served_model_name: qwen3
        port: 8011
"""


def _profile(util: float = 0.8, level: int | str = 1, third: bool = False) -> Profile:
    text = BASE.format(util=util) + SWITCHING.format(level=level) + (THIRD if third else "")
    return parse_profile(text, "multi.yaml")


def _box(name: str = "rtx4090") -> Box:
    return detect_box(simulate=name, models_dir=Path("/var/lib/llm-appliance/models"))


def test_a_profile_without_switching_is_as_before() -> None:
    profile = load_profile(PROFILES / "rtx4090-chat.yaml")
    assert profile.spec.switching is None
    assert profile.spec.switched_models == ()
    specs = container_specs(profile, _box())
    assert [s.role for s in specs] == ["vllm", "tei"]
    assert "--enable-sleep-mode" not in specs[0].command
    assert "VLLM_SERVER_DEV_MODE" not in specs[0].environment


def test_switched_models_are_served_names_in_order() -> None:
    profile = _profile(third=True)
    assert [m.served_name for m in profile.spec.switched_models] == ["qwen", "llama", "qwen3"]
    assert {"qwen", "llama", "qwen3"} <= set(profile.spec.served_names)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("        served_model_name: qwen\n", "served_model_name"),
        ("        port: 8000\n", "port"),
    ],
)
def test_names_and_ports_must_be_unique(extra: str, where: str) -> None:
    clash = THIRD.replace("        served_model_name: qwen3\n", "").replace(
        "        port: 8011\n", ""
    )
    clash += extra
    if where == "served_model_name":
        clash += "        port: 8011\n"
    else:
        clash += "        served_model_name: other\n"
    text = BASE.format(util=0.8) + SWITCHING.format(level=1) + clash
    with pytest.raises(ProfileError, match=where):
        parse_profile(text, "multi.yaml")


def test_switching_needs_vllm_on_gpus() -> None:
    text = BASE.format(util=0.8).replace("  engine:\n", "  engine:\n    kind: sglang\n")
    with pytest.raises(ProfileError, match="needs vLLM on GPUs"):
        parse_profile(text + SWITCHING.format(level=1), "multi.yaml")


def test_each_model_gets_its_own_sleep_mode_container_on_loopback() -> None:
    specs = container_specs(_profile(third=True), _box())
    chat = [s for s in specs if s.role == "vllm"]
    assert [s.name for s in chat] == [
        "llm-appliance-multi-vllm-2",
        "llm-appliance-multi-vllm-3",
        "llm-appliance-multi-vllm",  # spec.model last: the one awake after apply
    ]
    served = [s.command[s.command.index("--served-model-name") + 1] for s in chat]
    assert served == ["llama", "qwen3", "qwen"]
    assert [s.ports[0].host_port for s in chat] == [8010, 8011, 8000]
    for spec in chat:
        assert "--enable-sleep-mode" in spec.command
        assert spec.environment["VLLM_SERVER_DEV_MODE"] == "1"
        assert all(p.host_ip == "127.0.0.1" for p in spec.ports)
        assert spec.health_url == f"http://127.0.0.1:{spec.ports[0].host_port}/health"


def _observed(spec_name: str, role: str = "vllm", running: bool = True) -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{spec_name}",
        name=spec_name,
        role=role,  # type: ignore[arg-type]
        profile="multi",
        image="img",
        state="running" if running else "exited",
        spec_hash="old",
        appliance_version="0",
    )


def test_plan_keeps_each_model_in_its_own_container() -> None:
    specs = container_specs(_profile(), _box())
    fresh = make_plan(specs, [])
    assert [a.kind for a in fresh.actions] == ["create", "create"]
    # From one chat model to two: the existing container stays spec.model's; one is created.
    plan = make_plan(specs, [_observed("llm-appliance-multi-vllm")])
    kinds = {a.name: a.kind for a in plan.actions}
    assert kinds["llm-appliance-multi-vllm-2"] == "create"
    assert kinds["llm-appliance-multi-vllm"] == "replace"
    # Back to one chat model: the further model's container goes.
    single = container_specs(load_profile(PROFILES / "rtx4090-chat.yaml"), _box())
    back = make_plan(
        single[:1], [_observed("llm-appliance-multi-vllm"), _observed("llm-appliance-multi-vllm-2")]
    )
    assert {a.name: a.kind for a in back.actions}["llm-appliance-multi-vllm-2"] == "remove"


def _engine(name: str, requested_gib: float, weights_gib: float | None = 5.0) -> SwitchedEngine:
    return SwitchedEngine(
        served_name=name,
        requested_bytes=int(requested_gib * GIB),
        residual_bytes=SLEEPING_RESIDUAL_FLOOR_BYTES,
        weight_bytes=None if weights_gib is None else int(weights_gib * GIB),
    )


def test_the_awake_budget_plus_every_residual_must_fit() -> None:
    engines = [_engine("a", 18), _engine("b", 18), _engine("c", 20)]
    fits = switching_fit(
        engines, gpu_memory_bytes=24 * GIB, other_processes_bytes=0,
        host_memory_bytes=64 * GIB, sleep_level=1,
    )  # fmt: skip
    assert fits.fits
    assert fits.gpu_need_bytes == 20 * GIB + 2 * SLEEPING_RESIDUAL_FLOOR_BYTES
    assert fits.host_need_bytes == 10 * GIB  # two of the three asleep at level 1
    refused = switching_fit(
        engines, gpu_memory_bytes=22 * GIB, other_processes_bytes=0,
        host_memory_bytes=64 * GIB, sleep_level=1,
    )  # fmt: skip
    assert not refused.fits
    assert "c awake needs 20.0 GiB" in refused.reason
    assert "2 sleeping model(s) keep 2.4 GiB" in refused.reason
    assert "\n" not in refused.reason


def test_level_one_needs_host_ram_for_the_sleeping_weights() -> None:
    engines = [_engine("a", 10, 40), _engine("b", 10, 40)]
    kwargs = {
        "gpu_memory_bytes": 24 * GIB,
        "other_processes_bytes": 0,
        "host_memory_bytes": 32 * GIB,
    }
    assert not switching_fit(engines, sleep_level=1, **kwargs).fits  # type: ignore[arg-type]
    assert (
        "host RAM: 40.0 GiB > 32.0 GiB"
        in switching_fit(
            engines,
            sleep_level=1,
            **kwargs,  # type: ignore[arg-type]
        ).reason
    )
    assert switching_fit(engines, sleep_level=2, **kwargs).fits  # type: ignore[arg-type]


def _resolved(profile: Profile) -> list[object]:
    switching = profile.spec.switching
    assert switching is not None
    views = [profile, *(profile.as_switched(m) for m in switching.models)]
    return [resolve_profile_model(view) for view in views]


def test_fit_switching_on_a_simulated_box() -> None:
    profile = _profile(util=0.8, third=True)
    verdict = fit_switching(profile, _box(), _resolved(profile))  # type: ignore[arg-type]
    assert verdict is not None
    assert verdict.fits
    check_fits(profile, _box())  # apply's preflight accepts it too


def test_apply_preflight_refuses_what_does_not_fit_together_in_one_line() -> None:
    profile = _profile(util=0.9, third=True)
    with pytest.raises(RefusedError) as refused:
        check_fits(profile, _box())
    assert "do not fit together" in refused.value.message
    assert "sleeping model(s) keep" in refused.value.message
    assert "GiB per GPU >" in refused.value.message
    assert refused.value.hint is not None
    assert "gpu_memory_utilization" in refused.value.hint


def test_the_gateway_config_lists_every_switched_model(tmp_path: Path) -> None:
    from appliance.gateway.config import GatewayConfig

    config = GatewayConfig.from_profile(_profile(level=2, third=True), state_dir=tmp_path)
    assert config.chat_models == ("qwen", "llama", "qwen3")
    switching = config.switching
    assert switching is not None
    assert dict(switching.upstreams) == {
        "qwen": "http://127.0.0.1:8000/v1",
        "llama": "http://127.0.0.1:8010/v1",
        "qwen3": "http://127.0.0.1:8011/v1",
    }
    assert switching.initially_awake == "qwen"
    assert switching.rules.sleep_level == 2
    single = GatewayConfig.from_profile(load_profile(PROFILES / "rtx4090-chat.yaml"))
    assert single.switching is None


def test_auto_keeps_weights_in_ram_while_they_fit_with_headroom() -> None:
    from appliance.sizing import choose_sleep_level, sleeping_weight_bytes

    # Whichever model is awake, the others sleep: all weights but the smallest.
    assert sleeping_weight_bytes([4 * GIB, 5 * GIB, 6 * GIB]) == 11 * GIB
    assert sleeping_weight_bytes([4 * GIB, None]) is None
    level, reason = choose_sleep_level(11 * GIB, 16 * GIB)  # 12 GiB usable of 16
    assert level == 1
    assert reason.startswith("sleep level 1 (auto)")
    assert "11.0 GiB, 12.0 GiB usable of 16.0 GiB host RAM (25% kept free)" in reason
    level, reason = choose_sleep_level(13 * GIB, 16 * GIB)
    assert level == 2
    assert "reloaded on wake" in reason
    assert choose_sleep_level(None, 16 * GIB)[0] == 2
    assert choose_sleep_level(GIB, None)[0] == 2


def _auto_profile() -> Profile:
    """spec.model and one further model whose weight sizes the catalog knows."""
    text = BASE.format(util=0.8) + "  switching:\n    sleep_level: auto\n    models:\n" + THIRD
    return parse_profile(text, "multi.yaml")


def test_plan_shows_the_level_auto_chose_and_why() -> None:
    from appliance.runtime.apply import plan_profile

    box = _box()
    plan = plan_profile(_auto_profile(), box, None)
    (note,) = plan.notes
    assert note.startswith("sleep level 1 (auto)")  # about 5 GiB of weights asleep
    assert f"note: {note}" in plan.render()
    assert plan.to_json()["notes"] == [note]
    host = box.host.model_copy(update={"memory_total_bytes": 6 * GIB})
    (note,) = plan_profile(_auto_profile(), box.model_copy(update={"host": host}), None).notes
    assert note.startswith("sleep level 2 (auto)")
    assert "usable of 6.0 GiB host RAM" in note
    # A model whose size is not known: nothing is kept in RAM.
    (note,) = plan_profile(_profile(level="auto", third=True), box, None).notes
    assert (
        note == "sleep level 2 (auto): a model's weight size is not known, so none is kept in RAM"
    )
    # A level the profile sets needs no note.
    assert plan_profile(_profile(level=1, third=True), box, None).notes == ()


def test_apply_turns_sleep_at_the_level_auto_chose() -> None:
    from appliance.runtime.apply import SleepTurns
    from appliance.runtime.plan import Plan

    calls = _Calls()
    turns = SleepTurns.of(_auto_profile(), Plan(()), calls, lambda _: None, 6 * GIB)
    assert turns is not None
    assert turns.level == 2
    turns = SleepTurns.of(_auto_profile(), Plan(()), calls, lambda _: None, 256 * GIB)
    assert turns is not None
    assert turns.level == 1


class _Calls:
    """Records the engines' sleep-mode calls apply makes; answers 200 unless told otherwise."""

    def __init__(self, failing: str = "") -> None:
        self.calls: list[tuple[str, str, bytes]] = []
        self.failing = failing

    def __call__(self, method: str, url: str, body: bytes) -> bool:
        self.calls.append((method, url, body))
        return not (self.failing and self.failing in url)


def _turns(calls: _Calls, level: int = 1, plan: Any = None) -> Any:
    """Apply's sleep turns for `plan` (default: every engine created)."""
    from appliance.runtime.apply import SleepTurns

    profile = _profile(level=level, third=True)
    plan = plan or make_plan(container_specs(profile, _box()), [])
    turns = SleepTurns.of(profile, plan, calls, lambda _event: None)
    assert turns is not None
    return turns


def test_apply_puts_each_further_engine_to_sleep_once_healthy() -> None:
    calls = _Calls()
    turns = _turns(calls)
    specs = container_specs(_profile(third=True), _box())
    plan = make_plan(specs, [])
    turns.before(plan)
    assert calls.calls == []  # nothing runs yet
    for spec in specs:
        turns.after_healthy(spec)
    assert calls.calls == [
        ("POST", "http://127.0.0.1:8010/sleep?level=1", b""),
        ("POST", "http://127.0.0.1:8011/sleep?level=1", b""),
    ]  # spec.model's engine, started last, stays awake
    turns.finish(plan)
    assert len(calls.calls) == 2


def test_apply_sleeps_kept_engines_before_starting_one_and_wakes_spec_model_after() -> None:
    from appliance.runtime.plan import Action, Plan

    calls = _Calls()
    plan = Plan(
        (
            Action("keep", "vllm", "llm-appliance-multi-vllm-2"),
            Action("create", "vllm", "llm-appliance-multi-vllm-3"),
            Action("keep", "vllm", "llm-appliance-multi-vllm"),
        )
    )
    turns = _turns(calls, level=2, plan=plan)
    turns.before(plan)
    assert [url for _, url, _ in calls.calls] == [
        "http://127.0.0.1:8010/sleep?level=2",
        "http://127.0.0.1:8000/sleep?level=2",
    ]
    calls.calls.clear()
    turns.finish(plan)
    assert [(url, body) for _, url, body in calls.calls] == [
        ("http://127.0.0.1:8000/wake_up?tags=weights", b""),
        ("http://127.0.0.1:8000/collective_rpc", b'{"method": "reload_weights"}'),
        ("http://127.0.0.1:8000/wake_up?tags=kv_cache", b""),
    ]


def test_apply_fails_when_a_further_engine_does_not_sleep() -> None:
    from appliance.runtime.apply import ApplyFailedError

    turns = _turns(_Calls(failing=":8010/"))
    spec = next(s for s in container_specs(_profile(), _box()) if s.name.endswith("vllm-2"))
    with pytest.raises(ApplyFailedError, match="did not go to sleep"):
        turns.after_healthy(spec)


def test_compose_export_refuses_several_chat_models_in_one_line() -> None:
    from appliance.errors import BadInputError
    from appliance.runtime.compose import compose_document

    with pytest.raises(BadInputError, match="does not run several chat models"):
        compose_document(_profile(), _box())


def test_kubernetes_exports_refuse_several_chat_models() -> None:
    from appliance.errors import BadInputError
    from appliance.exports.k8s import manifests, production_stack_values

    for export in (manifests, production_stack_values):
        with pytest.raises(BadInputError, match="do not run several chat models"):
            export(_profile(), _box())


def test_every_switched_models_weights_are_needed() -> None:
    from appliance.weights.layout import profile_weights

    repos = [(ref.repo, ref.role) for ref in profile_weights(_profile(third=True))]
    assert repos == [
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "model"),
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ", "model"),
        ("Qwen/Qwen3-8B-AWQ", "model"),
    ]


def test_the_gateway_sleeps_models_at_the_level_auto_chooses_on_its_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import psutil

    from appliance.gateway.config import GatewayConfig

    for ram, level in ((6 * GIB, 2), (256 * GIB, 1)):
        monkeypatch.setattr(
            psutil, "virtual_memory", lambda ram=ram: types.SimpleNamespace(total=ram)
        )
        switching = GatewayConfig.from_profile(_auto_profile(), state_dir=tmp_path).switching
        assert switching is not None
        assert switching.rules.sleep_level == level
