"""`appliance bench` for real: the CLI in its own process, through a real gateway, to the vLLM
engine double. Request counts are bounded; nothing here asserts a time."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from tests.doubles import free_port, local_engine_double
from tests.support.gateway_process import (
    APPLIANCE,
    create_key,
    running_gateway,
    tls_gateway,
    write_profile,
)

OUTPUT_LEN = 6


def bench(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_API_KEY"}
    if key is not None:
        env["APPLIANCE_API_KEY"] = key
    return subprocess.run(
        [APPLIANCE, "bench", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("bench")
    with local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine:
        profile, port = write_profile(root, engine)
        key = create_key(profile)
        with running_gateway(profile, f"http://127.0.0.1:{port}"):
            yield profile, key


def test_a_sweep_reports_every_level_and_keeps_the_result(
    stack: tuple[Path, str], tmp_path: Path
) -> None:
    profile, key = stack
    key_file = tmp_path / "bench.key"
    key_file.write_text(key + "\n")
    report = tmp_path / "report.html"
    result = bench(
        str(profile),
        "--key-file",
        str(key_file),
        "--concurrency",
        "1,4",
        "--requests",
        "12",
        "--input-len",
        "16",
        "--output-len",
        str(OUTPUT_LEN),
        "--json",
        "--report",
        str(report),
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert key not in result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert [level["level"] for level in run["levels"]] == [1, 4]
    assert run["engine_version"] == "0.32.0"  # the double's /version
    # What `recommend` matches a kept result on, and what `tune` varies (#18 points 3, 4).
    assert set(run["setup"]) >= {"repo", "quantization", "max_num_seqs", "max_num_batched_tokens"}
    assert run["box"] == {"gpu_name": None, "gpu_count": 0}  # the profile's engine is on a CPU
    for level in run["levels"]:
        assert level["completed"] == 12
        assert level["failed"] == 0
        # Output tokens come from the stream's usage: exactly what was asked for.
        assert level["mean_output_tokens"] == OUTPUT_LEN
        assert level["mean_input_tokens"] == 16  # the double counts words; the prompt is 16
        assert level["output_throughput"] > 0
        assert 0 < level["ttft_s"]["p50"] <= level["ttft_s"]["p95"] <= level["ttft_s"]["p99"]
        assert level["itl_s"]["p50"] > 0
        assert level["e2e_s"]["p50"] >= level["ttft_s"]["p50"]
    kept = list((profile.parent / "state" / "bench" / "gateway-test").glob("*.json"))
    assert len(kept) == 1
    assert json.loads(kept[0].read_text())["levels"] == run["levels"]
    page = report.read_text()
    assert "<svg" in page
    assert "<script" not in page


def test_the_table_and_chart_are_printed_without_json(stack: tuple[Path, str]) -> None:
    profile, key = stack
    result = bench(
        str(profile),
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--input-len",
        "8",
        "--output-len",
        "3",
        "--no-save",
        key=key,
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert "out tok/s" in result.stdout
    assert "TTFT p50" in result.stdout
    assert "█" in result.stdout
    assert key not in result.stdout + result.stderr


def test_a_request_rate_level(stack: tuple[Path, str]) -> None:
    profile, key = stack
    result = bench(
        str(profile),
        "--request-rate",
        "50",
        "--requests",
        "6",
        "--input-len",
        "8",
        "--output-len",
        "3",
        "--no-save",
        "--json",
        key=key,
    )
    assert result.returncode == ExitCode.OK, result.stderr
    (level,) = json.loads(result.stdout)["levels"]
    assert level["mode"] == "rate"
    assert level["completed"] == 6


def test_a_recorded_sample_of_traffic_is_sent_as_recorded(
    stack: tuple[Path, str], tmp_path: Path
) -> None:
    """`--prompts`: the file `vllm bench serve --dataset-name custom` reads. The double counts a
    prompt's words as its tokens."""
    profile, key = stack
    sample = tmp_path / "traffic.jsonl"
    sample.write_text(
        '{"prompt": "one two three", "output_tokens": 2}\n'
        '{"prompt": "one two three four five", "output_tokens": 4}\n'
        '{"prompt": "one two three four", "output_tokens": 3}\n'
    )
    args = (str(profile), "--prompts", str(sample), "--requests", "3", "--no-save", "--json")
    result = bench(*args, "--concurrency", "1,2", key=key)
    assert result.returncode == ExitCode.OK, result.stderr
    run = json.loads(result.stdout)
    assert run["prompts"] == "traffic.jsonl"
    assert (run["input_len"], run["output_len"]) == (4, 3)  # the sample's means
    for level in run["levels"]:
        assert level["completed"] == 3
        assert level["mean_input_tokens"] == 4
        assert level["mean_output_tokens"] == 3
    one_length = bench(*args, "--concurrency", "1", "--output-len", "5", key=key)
    assert one_length.returncode == ExitCode.OK, one_length.stderr
    (level,) = json.loads(one_length.stdout)["levels"]
    assert level["mean_output_tokens"] == 5
    both = bench(*args, "--input-len", "8", key=key)
    assert both.returncode == ExitCode.BAD_INPUT
    assert "--input-len and --prompts" in both.stderr
    sample.write_text('{"prompt": "fine"}\n{"prompt": \n')
    broken = bench(*args, key=key)
    assert broken.returncode == ExitCode.BAD_INPUT
    assert "line 2 is not JSON" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_a_wrong_key_is_one_line_and_bad_input(stack: tuple[Path, str]) -> None:
    profile, _ = stack
    result = bench(str(profile), "--requests", "2", "--no-save", key="sk-appl-000000000000-nope")
    assert result.returncode == ExitCode.BAD_INPUT
    assert "refused the API key" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk-appl-000000000000-nope" not in result.stderr


def test_no_key_at_all_is_bad_input(stack: tuple[Path, str]) -> None:
    profile, _ = stack
    result = bench(str(profile), "--no-save")
    assert result.returncode == ExitCode.BAD_INPUT
    assert "API key" in result.stderr


def test_no_gateway_running_is_the_environment(tmp_path: Path) -> None:
    profile, _ = write_profile(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = bench(str(profile), "--requests", "2", "--no-save", key="sk-appl-x")
    assert result.returncode == ExitCode.ENVIRONMENT, result.stderr
    assert "no gateway answers" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_reaches_a_gateway_that_serves_tls_with_a_self_signed_certificate(
    tmp_path: Path,
) -> None:
    """Bench asks the profile's own gateway over HTTPS trusting only the gateway's certificate
    file (`gateway_trust`), as `status` and apply's handover do; `tune` builds the same plan."""
    with tls_gateway(tmp_path) as gateway:
        result = bench(
            str(gateway.profile), "--concurrency", "2", "--requests", "4", "--input-len", "8",
            "--output-len", "3", "--no-save", "--json", key=gateway.key,
        )  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stderr
    assert gateway.key not in result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert run["url"] == f"{gateway.base_url}/v1"
    (level,) = run["levels"]
    assert (level["completed"], level["failed"]) == (4, 0)
