"""Calibration (#18 point 4): a kept `appliance bench` result of this box and this model
replaces the bandwidth model's speed for that candidate, and the why cites it; a result of
another box, model, quantization, TP size or engine version does not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.benchmark import (
    BenchRun,
    BoxFacts,
    Distribution,
    EngineSetup,
    LevelResult,
    Slo,
)
from appliance.fit import gpu_target_from_box
from appliance.hardware import detect_box
from appliance.operations.calibration import (
    kept_runs,
    load_measurements,
    measurement_of,
    recommend_measured,
)
from appliance.recommend import (
    Candidate,
    EngineSettings,
    MeasuredLevel,
    Measurement,
    Recommendation,
    Workload,
    recommend,
)
from appliance.sizing import PINNED_VLLM_VERSION

BOX = "rtx4090"
WORKLOAD = Workload.for_kind("chat", users=16)


@pytest.fixture(scope="module")
def baseline() -> Recommendation:
    return recommend(detect_box(simulate=BOX), WORKLOAD)


def _measurement_for(candidate: Candidate, **changes: object) -> Measurement:
    target = gpu_target_from_box(detect_box(simulate=BOX))
    measurement = Measurement(
        measured_at="2026-12-05T10:00:00+00:00",
        gpu_name=target.name,
        gpu_count=target.count,
        repo=candidate.repo,
        quantization=candidate.quantization,
        engine_version=PINNED_VLLM_VERSION,
        tensor_parallel_size=candidate.tensor_parallel_size,
        levels=(MeasuredLevel(1, 95.0, 95.0), MeasuredLevel(16, 1840.0, 115.0)),
        input_len=1024,
        output_len=128,
        settings=EngineSettings(candidate.max_num_seqs, candidate.kv_cache_dtype),
    )
    return dataclasses.replace(measurement, **changes)  # type: ignore[arg-type]


def _same(recommendation: Recommendation, candidate: Candidate) -> Candidate:
    (found,) = (
        c
        for c in recommendation.candidates
        if (c.repo, c.quantization, c.tensor_parallel_size)
        == (candidate.repo, candidate.quantization, candidate.tensor_parallel_size)
    )
    return found


def test_a_measurement_replaces_the_model_estimate_and_the_why_cites_it(
    baseline: Recommendation,
) -> None:
    candidate = baseline.candidates[0]
    measured = recommend(
        detect_box(simulate=BOX), WORKLOAD, measurements=[_measurement_for(candidate)]
    )
    after = _same(measured, candidate)
    assert after.decode.bound == "measured"
    assert after.decode.tokens_per_second_total == 1840.0
    assert after.decode.tokens_per_second_per_request == 115.0
    assert "measured 2026-12-05: 1,840 output tok/s at 16 users" in after.why
    assert "(appliance bench, 1024 in / 128 out tokens)" in after.why
    assert "memory-bandwidth-bound" not in after.why
    # Every other candidate keeps the model's figures.
    for other in measured.candidates:
        if other is not after:
            assert other.decode.bound != "measured"
            assert "measured" not in other.why


def test_the_level_nearest_the_users_running_is_used(baseline: Recommendation) -> None:
    three = Workload.for_kind("chat", users=3)
    candidate = _same(recommend(detect_box(simulate=BOX), three), baseline.candidates[0])
    levels = (MeasuredLevel(1, 90.0, 90.0), MeasuredLevel(4, 300.0, 75.0))
    measured = recommend(
        detect_box(simulate=BOX),
        three,
        measurements=[_measurement_for(candidate, levels=levels)],
    )
    after = _same(measured, candidate)
    assert after.decode.tokens_per_second_total == 300.0
    assert "at 4 users" in after.why


def test_a_slow_measurement_moves_the_candidate_down(baseline: Recommendation) -> None:
    top = baseline.candidates[0]
    crawl = (MeasuredLevel(16, 16.0, 1.0),)  # 1 tok/s per user: under reading speed
    measured = recommend(
        detect_box(simulate=BOX), WORKLOAD, measurements=[_measurement_for(top, levels=crawl)]
    )
    after = _same(measured, top)
    assert after.score < top.score
    assert "slower than reading speed per user" in after.why


def test_the_newest_matching_measurement_wins(baseline: Recommendation) -> None:
    candidate = baseline.candidates[0]
    old = _measurement_for(candidate, measured_at="2026-01-01T00:00:00+00:00")
    new = _measurement_for(candidate, levels=(MeasuredLevel(16, 2000.0, 125.0),))
    measured = recommend(detect_box(simulate=BOX), WORKLOAD, measurements=[new, old])
    assert "measured 2026-12-05: 2,000 output tok/s" in _same(measured, candidate).why


@pytest.mark.parametrize(
    "changes",
    [
        {"gpu_name": "NVIDIA L40S"},
        {"gpu_count": 2},
        {"repo": "someone/else"},
        {"quantization": "awq"},
        {"tensor_parallel_size": 2},
        {"engine_version": "0.6.4"},
        {"engine": "sglang"},
    ],
    ids=lambda changes: next(iter(changes)),
)
def test_a_measurement_of_another_box_model_or_engine_is_not_used(
    baseline: Recommendation, changes: dict[str, object]
) -> None:
    candidate = baseline.candidates[0]
    measured = recommend(
        detect_box(simulate=BOX), WORKLOAD, measurements=[_measurement_for(candidate, **changes)]
    )
    after = _same(measured, candidate)
    assert after == candidate
    assert "measured" not in after.why


# ---------------------------------------------------------------------------------- IO layer


def _level(users: int, throughput: float, tpot: float) -> LevelResult:
    zero = Distribution(0.0, 0.0, 0.0, 0.0)
    return LevelResult(
        mode="concurrency",
        level=float(users),
        requests=8,
        completed=8,
        failed=0,
        duration_s=1.0,
        request_rate=8.0,
        output_throughput=throughput,
        total_token_throughput=throughput,
        mean_input_tokens=16.0,
        mean_output_tokens=8.0,
        ttft=zero,
        itl=zero,
        tpot=Distribution(tpot, tpot, tpot, tpot),
        e2e=zero,
        goodput=8.0,
        meets_slo=True,
    )


def _run(**changes: object) -> BenchRun:
    run = BenchRun(
        profile="box",
        model="qwen",
        endpoint="chat",
        url="http://127.0.0.1:8000/v1",
        started_at="2026-12-05T10:00:00+00:00",
        input_len=1024,
        output_len=128,
        slo=Slo(),
        levels=(_level(1, 95.0, 0.01), _level(16, 1840.0, 0.008)),
        engine_version="0.32.0",
        setup=EngineSetup(repo="Qwen/Qwen3-8B", quantization="bf16", max_num_seqs=16),
        box=BoxFacts(gpu_name="NVIDIA GeForce RTX 4090", gpu_count=1),
    )
    return dataclasses.replace(run, **changes)  # type: ignore[arg-type]


def test_a_kept_run_becomes_a_measurement() -> None:
    measurement = measurement_of(_run())
    assert measurement is not None
    assert measurement.gpu_name == "NVIDIA GeForce RTX 4090"
    assert measurement.repo == "Qwen/Qwen3-8B"
    assert measurement.levels[1] == MeasuredLevel(16, 1840.0, 125.0)
    assert measurement.settings == EngineSettings(max_num_seqs=16, kv_cache_dtype="auto")
    tuned = _run(
        setup=EngineSetup("Qwen/Qwen3-8B", "bf16", max_num_seqs=32, max_num_batched_tokens=4096),
        image="vllm/vllm-openai:nightly",
    )
    assert measurement_of(tuned).settings == EngineSettings(  # type: ignore[union-attr]
        32, "auto", 4096, "vllm/vllm-openai:nightly"
    )


@pytest.mark.parametrize(
    "changes",
    [{"setup": None}, {"box": None}, {"box": BoxFacts()}, {"engine_version": None}, {"levels": ()}],
    ids=["no setup", "no box", "cpu box", "no engine version", "no levels"],
)
def test_a_run_that_does_not_say_what_it_measured_is_not_a_measurement(
    changes: dict[str, object],
) -> None:
    assert measurement_of(_run(**changes)) is None


def test_kept_runs_round_trip_and_bad_files_are_passed_over(tmp_path: Path) -> None:
    folder = tmp_path / "bench" / "box"
    folder.mkdir(parents=True)
    (folder / "2026-12-05T100000Z.json").write_text(json.dumps(_run().to_json()))
    (folder / "2026-12-06T100000Z.json").write_text("{not json")
    (folder / "2026-12-07T100000Z.json").write_text(json.dumps({"schema": 1}))
    assert kept_runs(tmp_path) == [_run()]
    assert len(load_measurements(tmp_path)) == 1
    assert load_measurements(tmp_path / "nowhere") == []


# ------------------------------------------------- which run describes what the profile runs


def _keep(state_dir: Path, top: Candidate, when: str, throughput: float, **changes: Any) -> None:
    """A kept run of `top` on this box, with the candidate's own engine settings unless
    `changes` (EngineSetup's fields, or `image`) say otherwise."""
    target = gpu_target_from_box(detect_box(simulate=BOX))
    image = changes.pop("image", None)
    setup = EngineSetup(
        repo=top.repo,
        quantization=top.quantization,
        max_num_seqs=top.max_num_seqs,
        kv_cache_dtype=top.kv_cache_dtype,
    )
    run = _run(
        started_at=when,
        levels=(_level(16, throughput, 0.008),),
        setup=dataclasses.replace(setup, **changes),
        box=BoxFacts(gpu_name=target.name, gpu_count=target.count),
        image=image,
    )
    folder = state_dir / "bench" / "box"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{when[:19].replace(':', '')}Z.json").write_text(json.dumps(run.to_json()))


OTHER_SETTINGS = [
    {"max_num_seqs": 256},
    {"max_num_seqs": None},
    {"max_num_batched_tokens": 8192},
    {"kv_cache_dtype": "fp8"},
    {"image": "vllm/vllm-openai:nightly"},
]


@pytest.mark.parametrize("changes", OTHER_SETTINGS, ids=lambda changes: next(iter(changes)))
def test_a_newer_run_of_other_engine_settings_does_not_displace_the_one_the_profile_runs(
    baseline: Recommendation, tmp_path: Path, changes: dict[str, Any]
) -> None:
    """After `tune`, the newest run is often a sweep point: other max_num_seqs, a batch budget,
    another KV dtype, perhaps one that missed the SLO. It says nothing about the profile
    `recommend` writes; the older run of exactly those settings does."""
    top = baseline.candidates[0]
    _keep(tmp_path, top, "2026-12-05T10:00:00+00:00", 1840.0)
    _keep(tmp_path, top, "2026-12-05T12:00:00+00:00", 3000.0, **changes)
    measured = recommend_measured(detect_box(simulate=BOX), WORKLOAD, state_dir=tmp_path)
    after = _same(measured, top)
    assert after.decode.tokens_per_second_total == 1840.0
    assert "measured 2026-12-05: 1,840 output tok/s" in after.why


@pytest.mark.parametrize("changes", OTHER_SETTINGS, ids=lambda changes: next(iter(changes)))
def test_only_runs_of_other_settings_leave_the_bandwidth_model_and_say_why(
    baseline: Recommendation, tmp_path: Path, changes: dict[str, Any]
) -> None:
    top = baseline.candidates[0]
    _keep(tmp_path, top, "2026-12-05T12:00:00+00:00", 3000.0, **changes)
    measured = recommend_measured(detect_box(simulate=BOX), WORKLOAD, state_dir=tmp_path)
    after = _same(measured, top)
    assert after.decode == top.decode
    assert "memory-bandwidth-bound" in after.why or "compute-bound" in after.why
    key = next(iter(changes))
    assert f"1 bench run of this model here ran other engine settings ({key} " in after.why
    assert "measured 2026-" not in after.why


# ---------------------------------------------------------------------------------- the CLI


def test_recommend_uses_a_result_kept_in_its_state_dir(
    baseline: Recommendation, tmp_path: Path
) -> None:
    from tests.unit.test_cli import appliance, assert_no_traceback

    top = baseline.candidates[0]
    _keep(tmp_path, top, "2026-12-05T10:00:00+00:00", 1840.0)
    argv = ("recommend", "--simulate", BOX, "--workload", "chat", "--users", "16")
    measured = appliance(*argv, "--state-dir", str(tmp_path), "--json")
    assert measured.returncode == 0, measured.stderr
    same = (top.repo, top.quantization, top.tensor_parallel_size)
    (after,) = (
        c
        for c in json.loads(measured.stdout)["candidates"]
        if (c["repo"], c["quantization"], c["tensor_parallel_size"]) == same
    )
    assert after["decode"]["bound"] == "measured"
    assert "measured 2026-12-05: 1,840 output tok/s at 16 users" in after["why"]
    text = appliance(*argv, "--state-dir", str(tmp_path))
    assert "measured 2026-12-05" in text.stdout
    assert_no_traceback(text)
    # Without the kept result (another state dir), the model's estimate.
    plain = appliance(*argv, "--state-dir", str(tmp_path / "empty"))
    assert plain.returncode == 0, plain.stderr
    assert "measured 2026-" not in plain.stdout


def test_the_tui_recommender_reads_the_state_dir_too(
    baseline: Recommendation, tmp_path: Path
) -> None:
    from appliance.tui.services import simulated_services

    top = baseline.candidates[0]
    _keep(tmp_path, top, "2026-12-05T10:00:00+00:00", 1840.0)
    services = simulated_services(BOX, state_dir=tmp_path)
    assert services.recommend is not None
    measured = services.recommend(detect_box(simulate=BOX), WORKLOAD)
    assert "measured 2026-12-05" in _same(measured, top).why
