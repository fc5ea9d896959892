"""`appliance bench`'s pure side: vLLM's percentile, TTFT/ITL/TPOT and goodput definitions, the
stream parser of the load generator, the report (table, terminal chart, SVG, HTML), and the
command's bad input. Nothing here opens a socket."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import cli
from appliance.benchmark import (
    BenchRun,
    Distribution,
    RequestOutcome,
    Slo,
    bar,
    headline,
    html_report,
    summarize,
    svg_chart,
    table_rows,
    text_chart,
)
from appliance.errors import BadInputError, ExitCode
from appliance.monitor.maths import percentile
from appliance.operations.bench import (
    SamplePrompt,
    Workload,
    _is_token_event,
    _Stream,
    check_lengths,
    default_lengths,
    load_prompts,
)

ROOT = Path(__file__).resolve().parents[2]
PROFILE = str(ROOT / "profiles" / "rtx4090-chat.yaml")


# ---------------------------------------------------------------------------------- maths


def numpy_percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, written out from its documentation."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_the_formula_and_stays_in_range(values: list[float], q: float) -> None:
    got = percentile(values, q)
    assert got == pytest.approx(numpy_percentile(values, q), rel=1e-9, abs=1e-9)
    assert min(values) <= got <= max(values)


def outcome(ttft: float, itl: list[float], tokens: int, *, prompt: int = 10) -> RequestOutcome:
    return RequestOutcome(
        ok=True,
        start=0.0,
        ttft=ttft,
        latency=ttft + sum(itl),
        itl=itl,
        output_tokens=tokens,
        prompt_tokens=prompt,
    )


def test_a_level_by_vllms_definitions() -> None:
    outcomes = [
        outcome(0.1, [0.02, 0.02, 0.02], 4),
        outcome(0.3, [0.04, 0.04, 0.04], 4),
        RequestOutcome(ok=False, error="HTTP 500: boom"),
    ]
    level = summarize(outcomes, 2.0, mode="concurrency", level=4, slo=Slo())
    assert level.completed == 2
    assert level.failed == 1
    assert level.errors == ("HTTP 500: boom",)
    assert level.request_rate == 1.0  # completed / duration
    assert level.output_throughput == 4.0  # 8 output tokens / 2 s
    assert level.total_token_throughput == 14.0  # (8 + 20) / 2
    assert level.ttft.p50 == pytest.approx(0.2)
    assert level.ttft.mean == pytest.approx(0.2)
    # ITL is pooled over requests: three 20 ms and three 40 ms gaps.
    assert level.itl.p50 == pytest.approx(0.03)
    # TPOT: (E2E - TTFT) / (tokens - 1), per request.
    assert level.tpot.p50 == pytest.approx(0.03)
    assert level.e2e.p99 == pytest.approx(0.16 + (0.42 - 0.16) * 0.99)  # interpolated
    # A failed request means the level does not meet the SLO, whatever the latencies.
    assert not level.meets_slo
    assert level.goodput == 1.0  # both completed requests are within 2 s / 100 ms


def test_goodput_counts_requests_within_the_slo_one_by_one() -> None:
    slow_first = outcome(2.5, [0.01, 0.01], 3)
    slow_tokens = outcome(0.1, [0.2, 0.2], 3)
    fine = outcome(0.1, [0.01, 0.01], 3)
    level = summarize(
        [slow_first, slow_tokens, fine], 1.0, mode="concurrency", level=3, slo=Slo(2.0, 0.1)
    )
    assert level.goodput == 1.0
    assert not level.meets_slo  # TTFT p95 is above 2 s
    fast = summarize([fine, fine], 1.0, mode="concurrency", level=1, slo=Slo(2.0, 0.1))
    assert fast.meets_slo
    assert fast.goodput == 2.0


def test_a_single_token_request_has_no_tpot_but_counts_for_goodput() -> None:
    level = summarize([outcome(0.1, [], 1)], 1.0, mode="concurrency", level=1, slo=Slo())
    assert level.tpot == Distribution(0.0, 0.0, 0.0, 0.0)
    assert level.goodput == 1.0


def test_nothing_completed_is_all_zeros_and_no_slo() -> None:
    level = summarize([RequestOutcome(error="x")] * 3, 1.0, mode="rate", level=2.0, slo=Slo())
    assert level.completed == 0
    assert level.output_throughput == 0.0
    assert level.ttft.p99 == 0.0
    assert not level.meets_slo
    assert level.errors == ("x",)


# ---------------------------------------------------------------------------------- the stream


def test_token_events_are_told_without_decoding() -> None:
    assert _is_token_event(b'{"choices":[{"index":0,"delta":{"content":"a"}}]}')
    assert _is_token_event(b'{"choices": [ {"index": 0}]}')
    assert not _is_token_event(b'{"choices":[],"usage":{"completion_tokens":3}}')
    assert not _is_token_event(b'{"choices": [ ], "usage": null}')
    assert not _is_token_event(b'{"error":{"message":"no"}}')


def sse(*payloads: object) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def token(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def test_the_stream_times_tokens_and_takes_the_count_from_usage() -> None:
    result = RequestOutcome(start=10.0)
    stream = _Stream(result)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    whole = sse(role, token("a"), token("b"))
    # Split mid-event: the parser waits for the blank line.
    assert stream.feed(whole[:7], 10.5) is None
    assert stream.feed(whole[7:], 10.5) is None
    usage = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}
    assert stream.feed(sse(token("c")), 10.7) is None
    assert stream.feed(b": ping\n\n" + sse(usage, b"[DONE]"), 10.9) is None
    stream.finish()
    assert result.ok
    assert result.ttft == pytest.approx(0.5)  # the role-only first event counts, as in vLLM
    assert result.itl == pytest.approx([0.0, 0.0, 0.2])
    assert result.latency == pytest.approx(0.7)  # the usage event does not move the end
    assert result.output_tokens == 7
    assert result.prompt_tokens == 12


def test_without_usage_the_token_events_are_counted() -> None:
    result = RequestOutcome(start=0.0)
    stream = _Stream(result)
    stream.feed(sse(token("a"), token("b"), b"[DONE]"), 1.0)
    stream.finish()
    assert result.output_tokens == 2


def test_an_error_in_the_stream_or_no_token_fails_the_request() -> None:
    stream = _Stream(RequestOutcome())
    error = stream.feed(sse({"error": {"message": "engine died"}}), 1.0)
    assert error == "error in stream: engine died"
    empty = RequestOutcome()
    stream = _Stream(empty)
    stream.feed(sse(b"[DONE]"), 1.0)
    stream.finish()
    assert not empty.ok
    assert "no token" in empty.error


def test_the_workload_asks_as_vllm_bench_does() -> None:
    bodies = Workload(model="tiny", input_len=5, output_len=3).bodies(2)
    first, second = (json.loads(body) for body in bodies)
    assert first["stream"] is True
    assert first["stream_options"] == {"include_usage": True}
    assert first["max_completion_tokens"] == 3
    assert first["ignore_eos"] is True
    assert len(first["messages"][0]["content"].split()) == 5
    assert first["messages"] != second["messages"]  # no shared prompt to cache
    completion = json.loads(Workload("tiny", 5, 3, endpoint="completions").bodies(1)[0])
    assert completion["max_tokens"] == 3
    assert "prompt" in completion


def _sample(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "sample.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_recorded_sample_is_sent_in_file_order_each_level_from_where_the_last_stopped(
    tmp_path: Path,
) -> None:
    """`--prompts`: vLLM's custom-dataset JSON Lines; output_tokens per prompt when recorded."""
    path = _sample(
        tmp_path,
        '{"prompt": "first question", "output_tokens": 7}',
        "",  # blank lines are skipped
        '{"prompt": "second question"}',
        '{"prompt": "third question", "output_tokens": 2, "extra": "ignored"}',
    )
    prompts = load_prompts(path)
    assert prompts == (
        SamplePrompt("first question", 7),
        SamplePrompt("second question"),
        SamplePrompt("third question", 2),
    )
    workload = Workload("tiny", 1024, 5, prompts=prompts)
    sent = [json.loads(body) for body in workload.bodies(4, start=2)]
    assert [b["messages"][0]["content"] for b in sent] == [
        "third question", "first question", "second question", "third question",
    ]  # fmt: skip
    assert [b["max_completion_tokens"] for b in sent] == [2, 7, 5, 2]  # recorded, else 5


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ((), "holds no prompt"),
        (("",), "holds no prompt"),
        (('{"prompt": "ok"}', "not json"), "line 2 is not JSON"),
        (('["a list"]',), "line 1 has no prompt text"),
        (('{"text": "no prompt key"}',), "line 1 has no prompt text"),
        (('{"prompt": ""}',), "line 1 has no prompt text"),
        (('{"prompt": 5}',), "line 1 has no prompt text"),
        (('{"prompt": "a", "output_tokens": 0}',), "output_tokens is 0"),
        (('{"prompt": "a", "output_tokens": "12"}',), "output_tokens is '12'"),
        (('{"prompt": "a", "output_tokens": true}',), "output_tokens is True"),
        (('{"prompt": "a", "output_tokens": 1.5}',), "output_tokens is 1.5"),
    ],
)
def test_a_sample_that_is_not_one_is_one_line_naming_where(
    tmp_path: Path, lines: tuple[str, ...], says: str
) -> None:
    with pytest.raises(BadInputError, match=re.escape(says)) as caught:
        load_prompts(_sample(tmp_path, *lines))
    assert "\n" not in str(caught.value)
    assert caught.value.hint


def test_a_sample_that_cannot_be_read_is_bad_input(tmp_path: Path) -> None:
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BadInputError, match="cannot read --prompts"):
        load_prompts(binary)
    with pytest.raises(BadInputError, match="cannot read --prompts"):
        load_prompts(tmp_path)  # a directory


def test_default_lengths_fit_max_model_len() -> None:
    assert default_lengths(None) == (1024, 128)
    assert default_lengths(32768) == (1024, 128)
    for limit in (1, 2, 64, 1000, 2048):
        prompt, output = default_lengths(limit)
        assert prompt >= 1
        assert output >= 1
        assert prompt + output <= max(limit, 2)
    with pytest.raises(BadInputError, match="max_model_len 100"):
        check_lengths(90, 20, 100)
    check_lengths(90, 10, 100)


# ---------------------------------------------------------------------------------- the report


def sample_run() -> BenchRun:
    levels = tuple(
        summarize(
            [outcome(0.05 * users, [0.02] * 9, 10)] * 8,
            1.0 + users / 4,
            mode="concurrency",
            level=users,
            slo=Slo(),
        )
        for users in (1, 4, 16)
    )
    return BenchRun(
        profile="box<1>",
        model="tiny",
        endpoint="chat",
        url="http://127.0.0.1:8080/v1",
        started_at="2026-12-05T13:00:00+00:00",
        input_len=64,
        output_len=10,
        slo=Slo(),
        levels=levels,
        engine_version="0.32.0",
    )


def test_the_run_round_trips_through_json() -> None:
    run = sample_run()
    again = BenchRun.from_json(json.loads(json.dumps(run.to_json())))
    assert again == run


def test_table_and_terminal_chart() -> None:
    run = sample_run()
    rows = table_rows(run)
    assert rows[0][0] == "users"
    assert [row[0] for row in rows[1:]] == ["1", "4", "16"]
    assert rows[1][-1] == "met"
    chart = text_chart(run, width=20)
    lines = chart.splitlines()
    assert "output tokens/s" in lines[0]
    assert lines[1].count("█") == 20  # the fastest level fills the bar
    assert "best within the SLO" in headline(run)


def test_bars_in_eighths() -> None:
    assert bar(1, 1, 4) == "████"
    assert bar(0.5, 1, 4) == "██"
    assert bar(1 / 32, 1, 4) == "▏"
    assert bar(0, 1, 4) == ""
    assert bar(1, 0, 4) == ""
    assert bar(math.nan, 1, 4) == ""


def test_the_svg_is_well_formed_and_has_a_bar_and_a_point_per_level() -> None:
    svg = svg_chart(sample_run())
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [rect for rect in root.iter(f"{ns}rect") if rect.find(f"{ns}title") is not None]
    assert len(bars) == 3
    assert len(list(root.iter(f"{ns}circle"))) == 3
    assert "box&lt;1&gt;" in svg  # the profile's name is escaped


def test_the_html_report_is_self_contained() -> None:
    page = html_report(sample_run())
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "<script" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "").replace(
        "http://127.0.0.1:8080/v1", ""
    )
    assert "0.32.0" in page


def test_an_empty_run_still_renders() -> None:
    run = BenchRun(
        profile="p", model="m", endpoint="chat", url="u", started_at="t",
        input_len=1, output_len=1, slo=Slo(), levels=(),
    )  # fmt: skip
    ET.fromstring(svg_chart(run))
    assert text_chart(run) == ""
    assert "no level met" in headline(run)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args",
    [
        ("--concurrency", "0"),
        ("--concurrency", "1,x"),
        ("--concurrency", ""),
        ("--concurrency", ",".join(["1"] * 40)),
        ("--request-rate", "-1"),
        ("--request-rate", "nan"),
        ("--requests", "0"),
        ("--input-len", "-5"),
        ("--output-len", "1.5"),
        ("--slo-ttft", "0"),
        ("--slo-itl", "inf"),
        ("--url", "ftp://x"),
        ("--key-file", "/nonexistent/key"),
        ("--endpoint", "embeddings"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run(["bench", PROFILE, *args])
    output = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT, output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1


def test_lengths_beyond_max_model_len_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_API_KEY", "sk-appl-x")
    code = cli.run(["bench", PROFILE, "--input-len", "10000000", "--no-save"])
    output = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT
    assert "max_model_len" in output
    assert "sk-appl-x" not in output


def test_an_empty_key_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APPLIANCE_API_KEY", raising=False)
    empty = tmp_path / "key"
    empty.write_text("\n")
    code = cli.run(["bench", PROFILE, "--key-file", str(empty)])
    assert code == ExitCode.BAD_INPUT
    assert "is empty" in capsys.readouterr().err


def test_a_missing_profile_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["bench", "/nonexistent/profile.yaml"]) == ExitCode.BAD_INPUT
