"""Sizing owns fitting (issue #15): a profile is sized on the GPUs `spec.gpus` gives vLLM, with
the memory TEI holds beside it, from the profile's own keys, once per deploy."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import RefusedError
from appliance.fit import fit_profile, gpu_target_for_profile, tei_bytes_beside_chat
from appliance.hardware import detect_box
from appliance.local_model import resolve_profile_model
from appliance.profile import Profile, load_profile
from appliance.sizing import GIB, MemoryEstimate

ROOT = Path(__file__).resolve().parents[2]


def _with(profile: Profile, **spec: object) -> Profile:
    return profile.model_copy(update={"spec": profile.spec.model_copy(update=spec)})


def _engine(profile: Profile, **engine: object) -> Profile:
    return _with(profile, engine=profile.spec.engine.model_copy(update=engine))


def test_tei_on_the_chat_gpu_is_counted_as_memory_vllm_cannot_have() -> None:
    profile = load_profile(ROOT / "profiles" / "l40s-rag.yaml")
    box = detect_box(simulate="l40s")
    estimate = fit_profile(profile, box, resolve_profile_model(profile))
    assert isinstance(estimate, MemoryEstimate)
    tei = tei_bytes_beside_chat(profile, box)
    assert tei > 0
    assert estimate.other_processes_gib == pytest.approx(tei / GIB, abs=0.001)
    alone = _with(profile, embeddings=None)
    assert tei_bytes_beside_chat(alone, box) == 0


def test_a_profile_leaving_no_room_for_tei_is_refused_before_it_starts() -> None:
    # vLLM checks free memory >= gpu_memory_utilization x total at start; TEI already holds some.
    profile = _engine(
        load_profile(ROOT / "profiles" / "l40s-rag.yaml"), gpu_memory_utilization=0.97
    )
    box = detect_box(simulate="l40s")
    with pytest.raises(RefusedError, match="other processes hold"):
        fit_profile(profile, box, resolve_profile_model(profile))
    without_tei = _with(profile, embeddings=None)
    fit_profile(without_tei, box, resolve_profile_model(without_tei))  # fits alone


def test_the_profile_is_sized_on_the_gpus_it_names_not_all_of_the_box() -> None:
    profile = load_profile(ROOT / "profiles" / "2x4090-chat.yaml")
    box = detect_box(simulate="2x4090")
    one = _engine(_with(profile, gpus=[1]), tensor_parallel_size=1)
    target = gpu_target_for_profile(one, box)
    assert target is not None
    assert target.count == 1
    both = gpu_target_for_profile(profile, box)
    assert both is not None
    assert both.count == 2


def test_the_cpu_target_has_no_gpu_target() -> None:
    profile = _engine(load_profile(ROOT / "profiles" / "rtx4090-chat.yaml"), device="cpu")
    assert gpu_target_for_profile(profile, detect_box(simulate="rtx4090")) is None


def test_a_deploy_sizes_the_profile_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import appliance.fit
    from appliance.operations.deploy import deploy_profile
    from appliance.runtime import apply as apply_module

    calls: list[str] = []
    real = appliance.fit.fit_profile

    def counted(*args: object, **kwargs: object) -> object:
        calls.append("fit")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    seen: dict[str, object] = {}

    def fake_apply(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        raise RefusedError("stop here")

    monkeypatch.setattr(appliance.fit, "fit_profile", counted)
    monkeypatch.setattr(apply_module, "apply_profile", fake_apply)
    monkeypatch.setattr("appliance.weights.pull_profile", lambda *a, **k: None)
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    box = detect_box(simulate="rtx4090", models_dir=tmp_path)
    with pytest.raises(RefusedError, match="stop here"):
        deploy_profile(profile, box, engine=object())  # type: ignore[arg-type]
    assert calls == ["fit"]
    assert seen["fit_checked"] is True
