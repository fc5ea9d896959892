"""`appliance estimate --engine sglang` (issue #21): SGLang's mem_fraction_static budget, the
same model `plan` uses for a `kind: sglang` profile; bad input is one line and exit 2, what
SGLang would refuse is exit 4 with the nearest flags that fit."""

from __future__ import annotations

import json

import pytest

from appliance import cli
from appliance.errors import ExitCode
from appliance.fit import estimate_sglang_for, gpu_target_from_box
from appliance.hardware import detect_box
from appliance.local_model import resolve_model
from appliance.sglang_sizing import estimate_sglang_memory
from appliance.sizing import GIB

MODEL = ("estimate", "qwen2.5-7b-instruct", "--quantization", "awq")


def _run(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sglang_estimate_is_sglangs_budget(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        (
            *MODEL,
            "--simulate",
            "rtx4090",
            "--engine",
            "sglang",
            "--max-model-len",
            "8192",
            "--json",
        ),
        capsys,
    )
    assert code == ExitCode.OK
    data = json.loads(out)
    assert data["engine"] == "sglang"
    assert data["mem_fraction_static"] == 0.92  # the profile's default gpu_memory_utilization
    model = resolve_model("qwen2.5-7b-instruct", "awq")
    target = gpu_target_from_box(detect_box(simulate="rtx4090"))
    expected = estimate_sglang_memory(
        model.architecture,
        model.weight_bytes,
        target.memory_bytes,
        mem_fraction_static=0.92,
        context_length=8192,
    )
    assert data["kv_cache_tokens"] == expected.kv_cache_tokens
    assert data["fits"] is True


def test_sglang_estimate_text_names_sglang(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run((*MODEL, "--simulate", "rtx4090", "--engine", "sglang"), capsys)
    assert code == ExitCode.OK
    assert "SGLang 0.5.21" in out
    assert "mem_fraction_static 0.92" in out
    assert "vLLM" not in out


def test_tensor_parallel_splits_the_weights(capsys: pytest.CaptureFixture[str]) -> None:
    argv = (*MODEL, "--simulate", "2x4090", "--engine", "sglang", "--json")
    _, one, _ = _run((*argv, "--tp", "1"), capsys)
    _, two, _ = _run((*argv, "--tp", "2"), capsys)
    assert json.loads(two)["weights_gib"] == pytest.approx(json.loads(one)["weights_gib"] / 2, 0.01)


def test_what_sglang_refuses_is_exit_4_with_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        (
            "estimate",
            "qwen2.5-7b-instruct",
            "--simulate",
            "rtx4090",
            "--engine",
            "sglang",
            "--gpu-memory-utilization",
            "0.68",
        ),
        capsys,
    )
    assert code == ExitCode.REFUSED
    assert "DOES NOT FIT" in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "nearest settings that fit: --max-model-len " in err
    assert "spec.engine" not in err


def test_the_nearest_settings_fit(capsys: pytest.CaptureFixture[str]) -> None:
    model = resolve_model("qwen2.5-7b-instruct", None)
    target = gpu_target_from_box(detect_box(simulate="rtx4090"))
    estimate, nearest = estimate_sglang_for(
        model, target, tensor_parallel_size=1, mem_fraction_static=0.68, context_length=None
    )
    assert not estimate.fits
    length = next(s for s in nearest if s.startswith("spec.engine.max_model_len: "))
    shorter, _ = estimate_sglang_for(
        model,
        target,
        tensor_parallel_size=1,
        mem_fraction_static=0.68,
        context_length=int(length.split(": ")[1]),
    )
    assert shorter.fits
    assert shorter.kv_cache_gib * GIB > 0


@pytest.mark.parametrize(
    "extra",
    [
        ("--vllm-version", "0.30.0"),
        ("--max-num-batched-tokens", "8192"),
        ("--max-num-seqs", "8"),
        ("--enforce-eager",),
        ("--device", "cpu"),
        ("--tp", "2"),
        ("--max-model-len", "200000"),
        ("--engine", "tgi"),
    ],
    ids=lambda a: a[0],
)
def test_bad_input_is_one_line(extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run((*MODEL, "--simulate", "rtx4090", "--engine", "sglang", *extra), capsys)
    output = out + err
    assert code in (ExitCode.BAD_INPUT, ExitCode.REFUSED), output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1
    assert "→" in output
