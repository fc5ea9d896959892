"""`recommend` picks the chat engine only on evidence (issue #21 point 5): SGLang where a public,
reproducible benchmark in the catalog's engine_evidence.yaml matches the candidate, with the
why citing it and the fit from SGLang's own budget; vLLM everywhere else."""

from __future__ import annotations

import functools

import pytest
from pydantic import ValidationError

from appliance.catalog import BenchmarkPoint, EngineEvidence, load_catalog
from appliance.fit import fit_profile, gpu_target_from_box
from appliance.hardware import Box, detect_box
from appliance.profile import dump_profile, parse_profile
from appliance.recommend import (
    NO_ENGINE_EVIDENCE_TEXT,
    Workload,
    matching_evidence,
    recommend_for_target,
    render_recommendation,
)
from appliance.sglang_sizing import SglangMemoryEstimate
from appliance.sizing import GIB, ResolvedModel


@functools.cache
def _box(name: str) -> Box:
    return detect_box(simulate=name)


def _entry(**changes: object) -> EngineEvidence:
    """A fixture entry (not a real benchmark): SGLang ahead for Qwen2 models on one RTX 4090."""
    fields: dict[str, object] = {
        "key": "fixture-qwen2-rtx4090",
        "shape": "fixture: random prompts",
        "workload_kinds": ("batch",),
        "hf_architectures": ("Qwen2ForCausalLM",),
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "gpus": ("rtx4090",),
        "gpu_count": 1,
        "tensor_parallel_size": 1,
        "metric": "output tokens/s",
        "points": (
            BenchmarkPoint(prompt_tokens=500, output_tokens=500, vllm=100.0, sglang=130.0),
            BenchmarkPoint(prompt_tokens=2000, output_tokens=500, vllm=100.0, sglang=112.0),
        ),
        "vllm_version": "0.9.0",
        "sglang_version": "0.4.9",
        "date": "2025-07-01",
        "command": "fixture",
        "source": "fixture/benchmarks logs/run.log",
    }
    fields.update(changes)
    return EngineEvidence.model_validate(fields)


def test_the_shipped_evidence_loads_under_the_rule() -> None:
    evidence = load_catalog().engine_evidence
    assert evidence, "engine_evidence.yaml lost its entries"
    for entry in evidence:
        assert all(point.sglang > point.vllm for point in entry.points)
        assert entry.source
        assert entry.command
        assert entry.date


def test_evidence_against_an_old_vllm_does_not_count() -> None:
    with pytest.raises(ValidationError, match=r"older than 0\.8\.0"):
        _entry(vllm_version="0.6.0")


def test_an_entry_where_sglang_is_behind_somewhere_is_refused() -> None:
    behind = BenchmarkPoint(prompt_tokens=800, output_tokens=100, vllm=100.0, sglang=99.0)
    with pytest.raises(ValidationError, match="not ahead"):
        _entry(points=(*_entry().points, behind))


@pytest.mark.parametrize("kind", ["chat", "rag", "batch"])
@pytest.mark.parametrize("box", ["rtx4090", "h100", "2x4090"])
def test_catalog_models_stay_on_vllm_without_matching_evidence(kind: str, box: str) -> None:
    target = gpu_target_from_box(_box(box))
    rec = recommend_for_target(target, Workload.for_kind(kind))  # type: ignore[arg-type]
    assert rec.candidates
    for candidate in rec.candidates:
        assert candidate.engine == "vllm"
        assert candidate.engine_why == NO_ENGINE_EVIDENCE_TEXT
        assert candidate.sglang_estimate is None
    assert rec.to_profile().spec.engine.kind == "vllm"
    assert rec.to_json_dict()["candidates"][0]["engine_why"] == (  # type: ignore[index]
        "vLLM: no public reproducible benchmark shows SGLang ahead for this workload"
    )


def test_the_deepseek_r1_benchmark_covers_only_what_it_measured() -> None:
    (entry,) = [
        e for e in load_catalog().engine_evidence if e.key == "llm-ie-benchmarks-deepseek-r1-h200"
    ]
    batch = Workload.for_kind("batch", prompt_tokens=4000, output_tokens=500)

    def match(workload: Workload, **changes: object) -> EngineEvidence | None:
        args: dict[str, object] = {
            "hf_architecture": "DeepseekV3ForCausalLM",
            "gpu_key": "h200",
            "tensor_parallel_size": 8,
        }
        args.update(changes)
        return matching_evidence([entry], workload=workload, **args)  # type: ignore[arg-type]

    assert match(batch) is entry
    assert match(Workload.for_kind("chat", prompt_tokens=4000, output_tokens=500)) is None
    assert match(Workload.for_kind("batch", prompt_tokens=500, output_tokens=100)) is None
    assert match(batch, gpu_key="h100") is None
    assert match(batch, gpu_key=None) is None
    assert match(batch, tensor_parallel_size=4) is None
    assert match(batch, hf_architecture="DeepseekV2ForCausalLM") is None
    # The smallest lead is the one quoted: 479.69 / 436.70 at 10,000 + 500 tokens.
    assert round(entry.smallest_margin.sglang_margin * 100, 1) == 9.8


def test_matching_evidence_puts_the_candidate_on_sglang_and_cites_it() -> None:
    box = _box("rtx4090")
    target = gpu_target_from_box(box)
    workload = Workload.for_kind("batch", prompt_tokens=1000, output_tokens=500)
    rec = recommend_for_target(target, workload, evidence=[_entry()])
    on_sglang = [c for c in rec.candidates if c.engine == "sglang"]
    assert on_sglang, "the fixture entry matched no candidate"
    assert {c.model_key for c in on_sglang} <= {
        m.key for m in load_catalog().models if m.architecture.hf_architecture == "Qwen2ForCausalLM"
    }
    assert all(
        c.engine == "vllm"
        for c in rec.candidates
        if c.model_key not in {s.model_key for s in on_sglang}
    )
    chosen = on_sglang[0]
    # The smallest lead (12 % at 2,000 tokens), never the best one (30 %).
    assert chosen.engine_why.startswith("SGLang: fixture/benchmarks logs/run.log: 12.0 % more")
    assert chosen.engine_why in chosen.why
    estimate = chosen.sglang_estimate
    assert estimate is not None
    assert estimate.fits
    assert chosen.concurrency_at_request == estimate.kv_cache_tokens // workload.request_tokens
    assert chosen.max_num_seqs <= max(1, chosen.concurrency_at_request)

    index = rec.candidates.index(chosen)
    profile = rec.to_profile(index=index)
    assert profile.spec.engine.kind == "sglang"
    text = dump_profile(profile, comment=rec.profile_comment(index))
    assert "kind: sglang" in text
    assert "SGLang: fixture/benchmarks" in text
    assert parse_profile(text, "recommended.yaml") == profile
    # `plan` sizes the profile by SGLang's budget, and agrees with recommend's.
    model = load_catalog().model(chosen.model_key)
    assert model is not None
    variant = model.variant(chosen.quantization)
    assert variant is not None
    planned = fit_profile(profile, box, ResolvedModel.of_variant(model, variant))
    assert isinstance(planned, SglangMemoryEstimate)
    assert planned.kv_cache_tokens == estimate.kv_cache_tokens
    rendered = render_recommendation(rec, limit=len(rec.candidates))
    assert "engine sglang" in rendered
    assert "for SGLang's weights and KV pool" in rendered


def test_evidence_outside_the_measured_prompts_keeps_vllm() -> None:
    target = gpu_target_from_box(_box("rtx4090"))
    workload = Workload.for_kind("batch", prompt_tokens=3000, output_tokens=500)
    rec = recommend_for_target(target, workload, evidence=[_entry()])
    assert all(c.engine == "vllm" for c in rec.candidates)


def test_an_sglang_profile_at_tp2_loads_half_the_weights_on_each_gpu() -> None:
    box = _box("2x4090")
    target = gpu_target_from_box(box)
    workload = Workload.for_kind("batch", prompt_tokens=1000, output_tokens=500)
    entry = _entry(gpus=("rtx4090",), tensor_parallel_size=2)
    rec = recommend_for_target(target, workload, evidence=[entry])
    chosen = next(c for c in rec.candidates if c.engine == "sglang")
    assert chosen.tensor_parallel_size == 2
    estimate = chosen.sglang_estimate
    assert estimate is not None
    model = load_catalog().model(chosen.model_key)
    assert model is not None
    variant = model.variant(chosen.quantization)
    assert variant is not None
    assert estimate.weights_gib == pytest.approx(variant.weight_bytes / 2 / GIB, rel=0.01)
    profile = rec.to_profile(index=rec.candidates.index(chosen))
    planned = fit_profile(profile, box, ResolvedModel.of_variant(model, variant))
    assert isinstance(planned, SglangMemoryEstimate)
    assert planned.weights_gib == pytest.approx(estimate.weights_gib, rel=0.01)


def test_the_tui_card_says_when_a_candidate_runs_on_sglang() -> None:
    from appliance.tui.screens.recommend import candidate_title

    target = gpu_target_from_box(_box("rtx4090"))
    workload = Workload.for_kind("batch", prompt_tokens=1000, output_tokens=500)
    rec = recommend_for_target(target, workload, evidence=[_entry()])
    chosen = next(c for c in rec.candidates if c.engine == "sglang")
    other = next(c for c in rec.candidates if c.engine == "vllm")
    assert " on SGLang · " in candidate_title(1, chosen).plain
    assert "SGLang" not in candidate_title(2, other).plain


def test_the_tui_cards_memory_bar_draws_sglangs_split_for_an_sglang_candidate() -> None:
    from appliance.tui.widgets.memory_bar import memory_bar, memory_split

    target = gpu_target_from_box(_box("rtx4090"))
    workload = Workload.for_kind("batch", prompt_tokens=1000, output_tokens=500)
    rec = recommend_for_target(target, workload, evidence=[_entry()])
    chosen = next(c for c in rec.candidates if c.engine == "sglang")
    estimate = chosen.sglang_estimate
    assert estimate is not None
    split = dict(memory_split(estimate))
    assert split["KV cache"] == estimate.kv_cache_gib  # SGLang's pool, not vLLM's
    assert split["act+graphs"] == estimate.outside_fraction_gib
    assert sum(split.values()) == pytest.approx(estimate.gpu_memory_gib)
    bar, _ = memory_bar(estimate, 100)
    assert len(bar.plain) == 100
