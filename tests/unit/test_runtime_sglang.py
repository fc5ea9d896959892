"""SGLang as the chat engine (issue #21): the profile's `engine.kind`, SGLang's argv checked
against its 0.5.21 flag table (tests/support/sglang_flags.py: SGLang's parser needs torch, so
it is not run), its pinned image chosen by driver, and the exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.catalog import load_catalog
from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.exports.k8s import k8s_export, manifests
from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.profile import Profile, ProfileError, parse_profile
from appliance.runtime.compose import compose_export
from appliance.runtime.specs import (
    SGLANG_CONTAINER_PORT,
    container_specs,
    sglang_command,
)
from appliance.vocabulary import ENGINE_KINDS
from tests.support import sglang_flags

HEAD = "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata:\n  name: sg\nspec:\n"
MODEL = (
    "  model:\n    repo: Qwen/Qwen2.5-7B-Instruct-AWQ\n    quantization: awq\n"
    "    served_model_name: qwen\n"
)


def _profile(engine: str = "", extra: str = "", model: str = MODEL) -> Profile:
    body = model + "  engine:\n    kind: sglang\n" + engine + extra
    return parse_profile(HEAD + body, "sg.yaml")


def _box(name: str = "rtx4090") -> Box:
    return detect_box(simulate=name, models_dir=Path("/var/lib/llm-appliance/models"))


def test_engine_kind_is_a_vocabulary_word_and_vllm_stays_the_default() -> None:
    assert ENGINE_KINDS == ("vllm", "sglang")
    plain = parse_profile(HEAD + MODEL, "p.yaml")
    assert plain.spec.engine.kind == "vllm"
    assert container_specs(plain, _box())[0].image.startswith("vllm/vllm-openai:")


def test_sglang_argv_uses_sglangs_own_flag_names() -> None:
    profile = _profile(
        "    max_model_len: 16384\n    max_num_seqs: 32\n    gpu_memory_utilization: 0.85\n"
        "    kv_cache_dtype: fp8\n    enable_prefix_caching: false\n    enforce_eager: true\n"
        "    disable_custom_all_reduce: true\n"
    )
    argv = sglang_command(profile, _box())
    assert sglang_flags.check_argv(argv) == []
    pairs = dict(zip(argv[3:], [*argv[4:], ""], strict=True))
    assert pairs["--model-path"] == "/models/Qwen/Qwen2.5-7B-Instruct-AWQ/main"
    assert pairs["--served-model-name"] == "qwen"
    assert pairs["--host"] == "0.0.0.0"
    assert pairs["--port"] == str(SGLANG_CONTAINER_PORT)
    assert pairs["--tp-size"] == "1"
    assert pairs["--context-length"] == "16384"
    assert pairs["--max-running-requests"] == "32"
    assert pairs["--mem-fraction-static"] == "0.85"
    assert pairs["--quantization"] == "awq_marlin"  # 8.9 card: Marlin kernels
    assert pairs["--kv-cache-dtype"] == "fp8_e4m3"  # SGLang has no bare "fp8"
    for flag in (
        "--enable-metrics",
        "--disable-radix-cache",
        "--disable-decode-cuda-graph",
        "--disable-prefill-cuda-graph",
        "--disable-custom-all-reduce",
    ):
        assert flag in argv


@pytest.mark.parametrize("quantization", ["bf16", "fp16", "awq", "gptq", "fp8"])
@pytest.mark.parametrize("box_name", ["rtx4090", "h100", "2x4090"])
def test_every_argv_passes_the_flag_table(quantization: str, box_name: str) -> None:
    repo = {
        "bf16": "Qwen/Qwen2.5-7B-Instruct",
        "fp16": "Qwen/Qwen2.5-7B-Instruct",
        "awq": "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "gptq": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4",
        "fp8": "Qwen/Qwen3-8B-FP8",
    }[quantization]
    model = f"  model:\n    repo: {repo}\n    quantization: {quantization}\n"
    tp = "    tensor_parallel_size: 2\n" if box_name.startswith("2x") else ""
    argv = sglang_command(_profile(tp, model=model), _box(box_name))
    assert sglang_flags.check_argv(argv) == []
    assert "--disable-radix-cache" not in argv  # prefix caching (RadixAttention) stays on
    if box_name == "2x4090":  # GeForce cards: no P2P, so no custom all-reduce
        assert "--disable-custom-all-reduce" in argv


def test_flag_table_matches_sglangs_source_when_present() -> None:
    groups = sglang_flags.sglang_source()
    if groups is None:
        pytest.skip("no SGLang 0.5.21 source here (pip install --no-deps sglang==0.5.21)")
    fields = sglang_flags.fields_in_source(groups)
    for flag, spec in sglang_flags.FLAGS.items():
        assert flag == "--" + spec.field.replace("_", "-")
        assert spec.field in fields, flag
        assert fields[spec.field]["file"] == spec.source, flag
        assert not fields[spec.field]["no_cli"], flag
        if spec.choices is not None and flag != "--quantization":
            assert fields[spec.field]["choices"] == spec.choices, flag
    quantization = sglang_flags.quantization_choices_in_source(groups)
    assert set(sglang_flags.FLAGS["--quantization"].choices or ()) <= set(quantization)


def test_container_spec_keeps_the_chat_role_with_sglangs_image_port_and_health() -> None:
    (spec,) = container_specs(_profile(), _box())
    sglang = load_catalog().images.sglang
    assert spec.role == "vllm"  # the chat engine's role, whatever the engine
    assert spec.image == f"{sglang.repository}:{sglang.tag}"
    assert spec.entrypoint is None
    assert spec.command[:3] == ("python3", "-m", "sglang.launch_server")
    assert [(p.container_port, p.host_port, p.host_ip) for p in spec.ports] == [
        (30000, 8000, "127.0.0.1")
    ]
    assert spec.health_url == "http://127.0.0.1:8000/health"
    assert spec.environment["HF_HUB_OFFLINE"] == "1"
    assert spec.gpu_device_ids  # the real spec asks for its GPU


def test_a_profile_pinned_image_wins() -> None:
    profile = _profile(extra="  images:\n    sglang: lmsysorg/sglang:v0.5.20\n")
    assert container_specs(profile, _box())[0].image == "lmsysorg/sglang:v0.5.20"


def test_an_old_driver_is_refused_with_the_upgrade() -> None:
    box = _box("h100").model_copy(update={"driver_version": "570.133.20"})
    with pytest.raises(EnvironmentNotReadyError, match=r"SGLang 0\.5\.21 image"):
        container_specs(_profile(), box)


@pytest.mark.parametrize(
    ("engine", "extra", "field"),
    [
        ("    device: cpu\n", "", "spec.engine.device"),
        ("    max_num_batched_tokens: 8192\n", "", "spec.engine.max_num_batched_tokens"),
        ("    extra_args: [--mem-fraction-static, '0.5']\n", "", "spec.engine.extra_args[0]"),
        ("    extra_args: ['--tp-size=2']\n", "", "spec.engine.extra_args[0]"),
        ("    extra_args: [--tp, '2']\n", "", "spec.engine.extra_args[0]"),
        ("", "  images:\n    vllm: vllm/vllm-openai:v0.32.0\n", "spec.images.vllm"),
    ],
)
def test_settings_sglang_cannot_take_are_refused_with_the_field(
    engine: str, extra: str, field: str
) -> None:
    with pytest.raises(ProfileError) as caught:
        _profile(engine, extra)
    assert field in {problem.field for problem in caught.value.problems}


def test_a_vllm_profile_may_not_pin_an_sglang_image() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(HEAD + MODEL + "  images:\n    sglang: lmsysorg/sglang:v0.5.21\n", "p")
    assert "spec.images.sglang" in {problem.field for problem in caught.value.problems}


def test_sglang_specific_extra_flags_pass_through() -> None:
    argv = sglang_command(_profile("    extra_args: [--chunked-prefill-size, '4096']\n"), _box())
    assert argv[-2:] == ("--chunked-prefill-size", "4096")


def test_compose_export_runs_sglang() -> None:
    text = compose_export(_profile(), _box(), box_name="rtx4090")
    assert "# SGLang image:" in text
    assert "lmsysorg/sglang:v0.5.21" in text
    assert "127.0.0.1:8000:30000" in text


def test_k8s_manifests_point_at_sglangs_port_and_queue(tmp_path: Path) -> None:
    objects = manifests(_profile(), _box())
    service = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "sg-vllm"
    )
    assert service["spec"]["ports"][0]["targetPort"] == SGLANG_CONTAINER_PORT
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")
    assert "sglang:num_queue_reqs" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    written = k8s_export(_profile(), _box(), tmp_path / "out")
    assert any("deployment" in p.name for p in written)


def test_production_stack_refuses_sglang_clearly(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="production-stack's chart deploys vLLM only"):
        k8s_export(_profile(), _box(), tmp_path / "out", fmt="production-stack")
