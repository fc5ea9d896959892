"""Kept `appliance bench` results as the recommender's measurements (#18 point 4).

`appliance recommend` (the CLI) and the TUI's recommend screen call `recommend_measured`: it
reads the runs `bench` kept under `<state_dir>/bench/<profile>/*.json` and hands the pure
recommender what they measured (`appliance.recommend.Measurement`), with the engine settings
each ran: the recommender uses only a run of the settings a candidate's profile runs, so a
`tune` sweep's points (other max_num_seqs, batch budgets, KV dtypes) do not stand in for it.
A run without the box and the engine setup it measured (kept before they were recorded), or
one that cannot be read, is passed over: a measurement is only used where it is known to be
of this box and this model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.benchmark import BenchRun
from appliance.vocabulary import EngineKind

if TYPE_CHECKING:
    from appliance.catalog import ChatModel
    from appliance.hardware.box import Box
    from appliance.recommend import Measurement, Recommendation, Workload

# Bounds on what is read: the newest runs of each profile, of a reasonable size.
_RUNS_PER_PROFILE = 20
_MAX_BYTES = 4 * 1024 * 1024


def measurement_of(run: BenchRun) -> Measurement | None:
    """What `run` measured, for the recommender; None when it lacks the box, the setup, the
    engine version or a concurrency level that completed requests."""
    from appliance.recommend import EngineSettings, MeasuredLevel, Measurement

    if run.setup is None or run.box is None or not run.box.gpu_name or not run.engine_version:
        return None
    levels = []
    for level in run.levels:
        if level.mode != "concurrency" or level.completed == 0 or level.output_throughput <= 0:
            continue
        users = int(level.level)
        per_user = 1 / level.tpot.mean if level.tpot.mean > 0 else level.output_throughput / users
        levels.append(MeasuredLevel(users, level.output_throughput, per_user))
    if not levels:
        return None
    engine: EngineKind = "sglang" if run.setup.engine == "sglang" else "vllm"
    return Measurement(
        measured_at=run.started_at,
        gpu_name=run.box.gpu_name,
        gpu_count=run.box.gpu_count,
        repo=run.setup.repo,
        quantization=run.setup.quantization,
        engine_version=run.engine_version,
        tensor_parallel_size=run.setup.tensor_parallel_size,
        levels=tuple(levels),
        input_len=run.input_len,
        output_len=run.output_len,
        engine=engine,
        settings=EngineSettings(
            max_num_seqs=run.setup.max_num_seqs,
            kv_cache_dtype=run.setup.kv_cache_dtype,
            max_num_batched_tokens=run.setup.max_num_batched_tokens,
            image=run.image,
        ),
    )


def kept_runs(state_dir: Path) -> list[BenchRun]:
    """The runs kept under `state_dir/bench`, newest first per profile; unreadable ones skipped."""
    root = state_dir / "bench"
    runs: list[BenchRun] = []
    try:
        profiles = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return runs
    for directory in profiles:
        try:
            files = sorted(directory.glob("*.json"), reverse=True)[:_RUNS_PER_PROFILE]
        except OSError:
            continue
        for path in files:
            try:
                if path.stat().st_size > _MAX_BYTES:
                    continue
                runs.append(BenchRun.from_json(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
    return runs


def load_measurements(state_dir: Path) -> list[Measurement]:
    """Every kept run of `state_dir` that can calibrate the recommender."""
    return [m for run in kept_runs(state_dir) if (m := measurement_of(run)) is not None]


def recommend_measured(
    box: Box,
    workload: Workload,
    models: Sequence[ChatModel] | None = None,
    *,
    state_dir: Path,
) -> Recommendation:
    """`recommend`, with the speed `appliance bench` measured on this box where it has."""
    from appliance.recommend import recommend

    return recommend(box, workload, models, measurements=load_measurements(state_dir))
