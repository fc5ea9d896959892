"""#16 item 12: one way to name a box everywhere, `estimate` included."""

from __future__ import annotations

import json
import re

from appliance.errors import ExitCode
from tests.unit.test_cli import ROOT, appliance, assert_no_traceback


def test_estimate_takes_simulate_with_a_count_like_recommend_and_plan() -> None:
    result = appliance("estimate", "qwen2.5-7b-instruct", "--simulate", "2x4090", "--json")
    assert_no_traceback(result)
    assert result.returncode == ExitCode.OK, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["tensor_parallel_size"] == 2
    assert result.stderr == ""


def test_estimate_takes_a_detect_file() -> None:
    h200 = ROOT / "tests" / "fixtures" / "detect" / "h200.json"
    result = appliance("estimate", "qwen2.5-7b-instruct", "--simulate", str(h200))
    assert result.returncode == ExitCode.OK, result.stderr
    assert "139.80 GiB GPU" in result.stdout


def test_gpu_still_works_but_says_it_is_deprecated() -> None:
    result = appliance("estimate", "qwen2.5-7b-instruct", "--gpu", "rtx4090")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "--gpu is deprecated: use --simulate NAME" in result.stderr


def test_gpus_multiplies_a_single_card_but_not_a_counted_box() -> None:
    two = appliance("estimate", "qwen2.5-7b-instruct", "--simulate", "rtx4090", "--gpus", "2")
    assert two.returncode == ExitCode.OK, two.stderr
    assert "tensor parallel 2" in two.stdout
    clash = appliance("estimate", "qwen2.5-7b-instruct", "--simulate", "2x4090", "--gpus", "4")
    assert_no_traceback(clash)
    assert clash.returncode == ExitCode.BAD_INPUT
    assert "already says how many GPUs" in clash.stderr


def test_the_nearest_settings_estimate_prints_work_as_printed() -> None:
    base = ("estimate", "llama-3.3-70b-instruct", "--quantization", "awq")
    refused = appliance(*base, "--simulate", "rtx4090")
    assert refused.returncode == ExitCode.REFUSED
    hint = refused.stderr.split("nearest settings that fit: ", 1)[1].strip()
    first = re.sub(r"\([^)]*\)", "", hint.split(";")[0]).split()
    result = appliance(*base, "--simulate", "rtx4090", *first)
    assert result.returncode == ExitCode.OK, result.stderr


def test_the_suggestion_in_estimates_own_errors_is_accepted_by_estimate() -> None:
    refused = appliance("estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "0.5")
    suggestions = re.findall(r"--simulate [\w.-]+", refused.stderr + refused.stdout)
    # Without a GPU here, estimate's own hint names --simulate; whatever it names must work.
    no_target = appliance("estimate", "qwen2.5-7b-instruct")
    suggestions += re.findall(r"--simulate [\w.-]+", no_target.stderr)
    for suggestion in suggestions:
        flag, name = suggestion.split()
        result = appliance("estimate", "qwen2.5-7b-instruct", flag, name)
        assert result.returncode in (ExitCode.OK, ExitCode.REFUSED), result.stderr
        assert "unrecognized" not in result.stderr
