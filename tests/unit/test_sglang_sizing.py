"""SGLang's KV pool (issue #21 point 3): weights + pool = mem_fraction_static x the free memory
before the weights load; tokens = pool // bytes per token, by page. Checked against a real
start-up log, and wired into plan/apply's fit check for `engine.kind: sglang`."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.catalog import ModelArchitecture
from appliance.errors import RefusedError
from appliance.fit import fit_profile
from appliance.hardware import detect_box
from appliance.local_model import resolve_profile_model
from appliance.profile import Profile, load_profile
from appliance.sglang_sizing import (
    SglangMemoryEstimate,
    estimate_sglang_memory,
    nearest_sglang_settings,
    sglang_kv_pool_bytes,
    sglang_kv_tokens,
)
from appliance.sizing import GIB, MemoryEstimate, kv_bytes_per_token

ROOT = Path(__file__).resolve().parents[2]

# Qwen/QwQ-32B (not in the catalog): one copy, shared with bench/sglang_sizing_accuracy.py.
QWQ_32B = ModelArchitecture.model_validate_json(
    (ROOT / "tests" / "fixtures" / "architectures" / "qwq-32b.json").read_text(encoding="utf-8")
)


def test_the_pool_is_what_the_fraction_leaves_after_the_weights() -> None:
    # A real log (QwQ-32B, 4x L4, TP 4, mem_fraction_static 0.85, SGLang 0.4.3.post4,
    # github.com/didier-durand/llms-in-clouds docs/sglang.md): "Load weight begin. avail
    # mem=21.63 GB", "Load weight end. ... avail mem=6.09 GB", "KV Cache is allocated. #tokens:
    # 46611".
    per_token = kv_bytes_per_token(QWQ_32B, 4)
    assert per_token == 2 * 128 * 64 * 2 * 2  # 2 KV heads per rank x head_dim x layers x K,V x bf16
    pool = sglang_kv_pool_bytes(21.63 * GIB, 6.09 * GIB, 0.85)
    tokens = sglang_kv_tokens(pool, per_token)
    assert tokens == pytest.approx(46611, rel=0.001)  # the log's GB carry two decimals


def test_tokens_round_down_to_the_page_and_an_empty_pool_holds_none() -> None:
    assert sglang_kv_tokens(1000 * 64 + 10, 64) == 1000
    assert sglang_kv_tokens(1000 * 64 + 10, 64, page_size=16) == 992
    assert sglang_kv_tokens(-5.0, 64) == 0


def test_the_estimate_counts_weights_and_pool_inside_the_fraction() -> None:
    estimate = estimate_sglang_memory(
        QWQ_32B,
        int(15.54 * GIB),
        int(22.05 * GIB),
        tensor_parallel_size=4,
        mem_fraction_static=0.85,
        context_length=32768,
    )
    assert estimate.static_budget_gib == pytest.approx(0.85 * estimate.pre_load_free_gib)
    assert estimate.weights_gib + estimate.kv_cache_gib == pytest.approx(estimate.static_budget_gib)
    assert estimate.outside_fraction_gib == pytest.approx(0.15 * estimate.pre_load_free_gib)
    assert estimate.fits
    assert estimate.kv_cache_tokens == pytest.approx(46611, rel=0.05)
    assert estimate.to_json_dict()["engine"] == "sglang"


def test_a_context_longer_than_the_pool_is_refused_with_what_would_fit() -> None:
    estimate = estimate_sglang_memory(
        QWQ_32B,
        int(15.54 * GIB),
        int(22.05 * GIB),
        tensor_parallel_size=4,
        mem_fraction_static=0.85,
        context_length=131072,
    )
    assert not estimate.fits
    assert "reject prompts" in estimate.reason
    assert estimate.largest_fitting_context_length == estimate.kv_cache_tokens
    assert estimate.fraction_needed > 0.85
    nearest = nearest_sglang_settings(estimate, fp8_kv_tokens=2 * estimate.kv_cache_tokens)
    assert nearest[0] == f"spec.engine.max_model_len: {estimate.kv_cache_tokens}"
    # 0.85 -> the fraction needed is above 0.95 here, so it is not offered; fp8 doubles 46k
    # tokens, still short of 131k, so neither is that.
    assert nearest == [nearest[0]]


def test_weights_beyond_the_static_budget_stop_sglang_starting() -> None:
    estimate = estimate_sglang_memory(
        QWQ_32B,
        int(20 * GIB),
        int(22.05 * GIB),
        tensor_parallel_size=4,
        mem_fraction_static=0.85,
        context_length=4096,
    )
    assert not estimate.fits
    assert estimate.kv_cache_tokens == 0
    assert estimate.largest_fitting_context_length is None
    assert "refuses to start" in estimate.reason
    assert nearest_sglang_settings(estimate) == [
        f"spec.engine.gpu_memory_utilization: {estimate.fraction_needed:g}"
    ]


def _sglang(profile: Profile, **engine: object) -> Profile:
    engine = {"kind": "sglang", **engine}
    return profile.model_copy(
        update={
            "spec": profile.spec.model_copy(
                update={"engine": profile.spec.engine.model_copy(update=engine)}
            )
        }
    )


def test_plan_sizes_an_sglang_profile_by_sglangs_budget() -> None:
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    box = detect_box(simulate="rtx4090")
    vllm = fit_profile(profile, box, resolve_profile_model(profile))
    assert isinstance(vllm, MemoryEstimate)
    sglang = _sglang(profile)
    estimate = fit_profile(sglang, box, resolve_profile_model(sglang))
    assert isinstance(estimate, SglangMemoryEstimate)
    assert estimate.fits
    assert estimate.mem_fraction_static == profile.spec.engine.gpu_memory_utilization
    assert estimate.other_processes_gib == pytest.approx(vllm.other_processes_gib, abs=0.001)
    assert estimate.context_length == profile.spec.engine.max_model_len


def test_plan_refuses_an_sglang_profile_with_the_nearest_profile_keys() -> None:
    profile = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    box = detect_box(simulate="rtx4090")
    tight = _sglang(profile, gpu_memory_utilization=0.3, max_model_len=32768)
    with pytest.raises(RefusedError) as caught:
        fit_profile(tight, box, resolve_profile_model(tight))
    assert "does not fit" in caught.value.message
    hint = caught.value.hint or ""
    assert "spec.engine.max_model_len:" in hint
    assert "spec.engine.gpu_memory_utilization:" in hint
    too_long = _sglang(profile, max_model_len=131072)
    with pytest.raises(RefusedError, match="SGLang refuses to start"):
        fit_profile(too_long, box, resolve_profile_model(too_long))
