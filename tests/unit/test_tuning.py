"""The sweep of `appliance tune` (#18 point 3): which points, the early stop, the winner, and
the winner written into the profile's text with every comment kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.benchmark import Distribution, LevelResult, Slo
from appliance.errors import BadInputError
from appliance.profile import parse_profile
from appliance.tuning import (
    BLOCK_END,
    BLOCK_START,
    MAX_POINTS,
    Measured,
    Point,
    Sweep,
    default_batched,
    default_seqs,
    early_stopped,
    next_point,
    plan_sweep,
    provenance,
    winner,
    with_tuned,
)

ORIGINAL = Point("auto", None, 16)


def _fits(point: Point) -> str | None:
    return "does not fit: KV cache too small" if point.max_num_seqs > 64 else None


def _sweep(**kwargs: object) -> Sweep:
    options: dict[str, object] = {
        "seqs": (8, 16, 32, 64, 128),
        "batched": (None, 8192),
        "kv_dtypes": ("auto",),
        "max_model_len": 4096,
        "fits": _fits,
    }
    options.update(kwargs)
    return plan_sweep(ORIGINAL, **options)  # type: ignore[arg-type]


def _level(throughput: float, *, met: bool) -> LevelResult:
    d = Distribution(0.01, 0.01, 0.02, 0.03)
    return LevelResult(
        mode="concurrency", level=16.0, requests=8, completed=8, failed=0, duration_s=1.0,
        request_rate=8.0, output_throughput=throughput, total_token_throughput=throughput,
        mean_input_tokens=16.0, mean_output_tokens=8.0, ttft=d, itl=d, tpot=d, e2e=d,
        goodput=8.0 if met else 0.0, meets_slo=met,
    )  # fmt: skip


def test_defaults_surround_the_profile_value() -> None:
    assert default_seqs(16) == (8, 16, 32, 64)
    assert default_seqs(1) == (1, 2, 4)
    assert default_seqs(None) == (8, 16, 32, 64)
    assert default_batched(None, 4096) == (None, 4096, 8192)
    assert default_batched(4096, 4096) == (4096, 8192)


def test_points_are_rows_of_ascending_seqs_and_what_does_not_fit_is_skipped() -> None:
    sweep = _sweep()
    assert sweep.points == (
        Point("auto", None, 8), Point("auto", None, 16), Point("auto", None, 32),
        Point("auto", None, 64), Point("auto", 8192, 8), Point("auto", 8192, 16),
        Point("auto", 8192, 32), Point("auto", 8192, 64),
    )  # fmt: skip
    reasons = {s.point: s.reason for s in sweep.skipped}
    assert reasons[Point("auto", None, 128)].startswith("does not fit")


def test_a_batch_smaller_than_the_sequences_or_the_context_is_skipped() -> None:
    sweep = _sweep(batched=(16, 2048))
    assert sweep.points == ()
    reasons = [s.reason for s in sweep.skipped]
    assert any("below max_num_seqs" in r for r in reasons)
    assert any("below max_model_len 4096" in r for r in reasons)


def test_too_many_points_is_bad_input() -> None:
    with pytest.raises(BadInputError):
        _sweep(seqs=tuple(range(1, MAX_POINTS + 2)), fits=lambda _: None, batched=(None,))


def test_a_row_stops_at_its_first_point_that_misses_the_slo() -> None:
    sweep = _sweep()
    done: list[Measured] = []
    order = []
    while (point := next_point(sweep, done, limit=100)) is not None:
        order.append(point)
        # Default batch: 16 sequences miss the SLO; 8192 tokens: every point meets it.
        met = point.max_num_batched_tokens == 8192 or point.max_num_seqs < 16
        done.append(Measured(point, _level(point.max_num_seqs * 10.0, met=met)))
    assert order == [
        Point("auto", None, 8), Point("auto", None, 16),  # 16 missed: 32 and 64 never run
        Point("auto", 8192, 8), Point("auto", 8192, 16), Point("auto", 8192, 32),
        Point("auto", 8192, 64),
    ]  # fmt: skip
    assert early_stopped(sweep, done) == (Point("auto", None, 32), Point("auto", None, 64))
    best = winner(done)
    assert best is not None
    assert best.point == Point("auto", 8192, 64)


def test_a_failed_point_stops_its_row_too() -> None:
    sweep = _sweep(batched=(None,))
    done = [Measured(Point("auto", None, 8), error="the engine did not start")]
    assert next_point(sweep, done, limit=10) is None


def test_the_points_limit_bounds_the_sweep() -> None:
    sweep = _sweep()
    done = [Measured(p, _level(1.0, met=True)) for p in sweep.points[:3]]
    assert next_point(sweep, done, limit=3) is None
    assert next_point(sweep, done, limit=4) == sweep.points[3]


def test_the_winner_is_the_fastest_within_the_slo_fewer_sequences_on_a_tie() -> None:
    done = [
        Measured(Point("auto", None, 8), _level(100.0, met=True)),
        Measured(Point("auto", None, 16), _level(150.0, met=True)),
        Measured(Point("auto", None, 32), _level(900.0, met=False)),  # faster, but missed
        Measured(Point("auto", 8192, 8), _level(150.0, met=True)),
    ]
    best = winner(done)
    assert best is not None
    assert best.point == Point("auto", 8192, 8)  # as fast as 16 sequences, with 8
    best = winner(done[:3])
    assert best is not None
    assert best.point == Point("auto", None, 16)
    assert winner(done[2:3]) is None
    assert winner([]) is None


PROFILE = """\
# The team's box: keep this comment.
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: box  # inline comment
spec:
  model:
    repo: Qwen/Qwen2.5-7B-Instruct-AWQ
    quantization: awq
  engine:
    max_model_len: 4096  # the team's longest prompt
    max_num_seqs: 32
    kv_cache_dtype: fp8
  # after the engine
"""

FLOW = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata: {name: flow}
spec:
  model: {repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq}
  engine: {max_model_len: 4096, max_num_batched_tokens: 2048}
"""


def _block(point: Point) -> str:
    best = Measured(point, _level(1840.0, met=True), bench_file="/state/bench/box/t.json")
    return provenance(
        best, when="2026-12-05T14:00:00+00:00", slo=Slo(), was=ORIGINAL, measured=5, of=8,
        concurrency=16,
    )  # fmt: skip


def test_the_winner_is_written_in_place_with_comments_and_provenance() -> None:
    point = Point("auto", 8192, 64)
    text = with_tuned(PROFILE, point, _block(point))
    for comment in ("# The team's box: keep this comment.", "# inline comment",
                    "# the team's longest prompt", "# after the engine"):  # fmt: skip
        assert comment in text
    assert text.startswith(BLOCK_START)
    assert "Tuned 2026-12-05T14:00:00+00:00 by `appliance tune`" in text
    assert "1,840.0 output tok/s at 16 users" in text
    assert "Bench result: /state/bench/box/t.json" in text
    engine = parse_profile(text, "box.yaml").spec.engine
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.kv_cache_dtype) == (
        64, 8192, "auto",
    )  # fmt: skip
    assert engine.max_model_len == 4096
    # Tuning again replaces the block rather than stacking another.
    again = with_tuned(text, Point("auto", None, 8), _block(Point("auto", None, 8)))
    assert again.count(BLOCK_START) == 1
    assert again.count(BLOCK_END) == 1
    engine = parse_profile(again, "box.yaml").spec.engine
    assert (engine.max_num_seqs, engine.max_num_batched_tokens) == (8, None)
    assert "# The team's box: keep this comment." in again


def test_flow_mappings_are_edited_too() -> None:
    text = with_tuned(FLOW, Point("fp8", None, 16), _block(Point("fp8", None, 16)))
    engine = parse_profile(text, "flow.yaml").spec.engine
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.kv_cache_dtype) == (
        16, None, "fp8",
    )  # fmt: skip
    assert "engine: {max_model_len: 4096, max_num_seqs: 16, kv_cache_dtype: fp8}" in text


def test_an_engine_section_is_added_when_the_profile_has_none() -> None:
    bare = FLOW.replace("  engine: {max_model_len: 4096, max_num_batched_tokens: 2048}\n", "")
    text = with_tuned(bare, Point("fp8", 2048, 8), _block(Point("fp8", 2048, 8)))
    assert text.endswith(
        "  model: {repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq}\n"
        "  engine: {max_num_seqs: 8, max_num_batched_tokens: 2048, kv_cache_dtype: fp8}\n"
    )
    engine = parse_profile(text, "flow.yaml").spec.engine
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.kv_cache_dtype) == (
        8, 2048, "fp8",
    )  # fmt: skip


# ---------------------------------------------------------------------------------- the CLI

CLI_PROFILE = str(Path(__file__).resolve().parents[2] / "profiles" / "rtx4090-chat.yaml")


@pytest.mark.parametrize(
    "extra",
    [
        ("--max-num-seqs", "0"),
        ("--max-num-seqs", "a,b"),
        ("--max-num-batched-tokens", "-5"),
        ("--kv-cache-dtype", "bf8"),
        ("--points", "0"),
        ("--points", "65"),
        ("--budget", "-1"),
        ("--concurrency", "0"),
    ],
)
def test_bad_tune_flags_are_one_line_and_bad_input(
    extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance import cli
    from appliance.errors import ExitCode

    code = cli.run(["tune", CLI_PROFILE, "--dry-run", *extra])
    captured = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT
    assert "Traceback" not in captured.out + captured.err


def test_tune_refuses_an_sglang_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance import cli
    from appliance.errors import ExitCode

    profile = tmp_path / "sglang.yaml"
    profile.write_text(FLOW.replace("engine: {", "engine: {kind: sglang, "))
    code = cli.run(["tune", str(profile), "--dry-run"])
    captured = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT, captured.err
    assert "SGLang" in captured.err
