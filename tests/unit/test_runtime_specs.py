"""Specs are pure: a profile and a box in, container specs out — checked field by field."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from appliance.errors import BadInputError
from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.profile import Profile, load_profile, parse_profile
from appliance.runtime.compose import EXAMPLE_BOXES
from appliance.runtime.specs import SpecOptions, container_specs, vllm_command
from appliance.vocabulary import weights_path

PROFILES = Path(__file__).parents[2] / "profiles"


def _profile(name: str) -> Profile:
    return load_profile(PROFILES / f"{name}.yaml")


def _box(name: str) -> Box:
    return detect_box(simulate=name, models_dir=Path("/var/lib/llm-appliance/models"))


def _custom(body: str, name: str = "t") -> Profile:
    head = f"apiVersion: llm-appliance/v1\nkind: Profile\nmetadata:\n  name: {name}\nspec:\n"
    return parse_profile(head + body, "test.yaml")


def test_weights_path_is_org_name_revision() -> None:
    assert weights_path(Path("/m"), "Qwen/Qwen2.5-7B", "main") == Path("/m/Qwen/Qwen2.5-7B/main")
    assert weights_path(PurePosixPath("/models"), "a/b", "refs/pr/1") == PurePosixPath(
        "/models/a/b/refs--pr--1"
    )


@pytest.mark.parametrize(("profile_name", "box_name"), sorted(EXAMPLE_BOXES.items()))
def test_every_ready_made_profile_gives_safe_specs(profile_name: str, box_name: str) -> None:
    profile, box = _profile(profile_name), _box(box_name)
    specs = container_specs(profile, box)
    assert specs[0].role == "vllm"
    uuids = {gpu.uuid for gpu in box.gpus}
    for spec in specs:
        assert all(p.host_ip == "127.0.0.1" for p in spec.ports)
        assert all(m.read_only for m in spec.mounts)
        assert spec.environment["HF_HUB_OFFLINE"] == "1"
        assert not any("TOKEN" in key or "KEY" in key for key in spec.environment)
        assert not {"--api-key", "--hf-token"} & set(spec.command)
        assert not any(arg.startswith("hf_") for arg in spec.command)
        assert spec.restart_policy == "unless-stopped"
        assert spec.log_max_size
        assert spec.log_max_files > 1
        assert spec.ipc_mode == "host"
        assert spec.health_url is not None
        assert spec.health_url.startswith("http://127.0.0.1:")
        assert spec.labels()["io.llm-appliance.managed-by"] == "llm-appliance"
        assert spec.labels()["io.llm-appliance.profile"] == profile_name
    vllm = specs[0]
    # Real specs carry the GPU request, by UUID, for GPUs this box has.
    assert isinstance(vllm.gpu_device_ids, tuple)
    assert vllm.gpu_device_ids
    assert set(vllm.gpu_device_ids) <= uuids
    assert vllm.healthcheck is not None
    assert "--host" in vllm.command
    assert vllm.command[vllm.command.index("--host") + 1] == "0.0.0.0"
    assert "--gpu-memory-utilization" in vllm.command
    assert {"--enable-prefix-caching", "--no-enable-prefix-caching"} & set(vllm.command)


def test_the_single_test_switch_drops_only_the_gpu_requests() -> None:
    profile, box = _profile("rtx4090-chat"), _box("rtx4090")
    real = container_specs(profile, box)
    test = container_specs(profile, box, options=SpecOptions(gpu_requests=False))
    for with_gpu, without in zip(real, test, strict=True):
        assert with_gpu.gpu_device_ids is not None
        assert without.gpu_device_ids is None
        assert with_gpu.model_copy(update={"gpu_device_ids": None}) == without


def test_awq_gets_marlin_and_fp8_checkpoints_get_no_quantization_flag() -> None:
    awq = vllm_command(_profile("rtx4090-chat"), _box("rtx4090"))
    assert awq[awq.index("--quantization") + 1] == "awq_marlin"
    fp8 = vllm_command(_profile("h100-70b-fp8"), _box("h100"))
    assert "--quantization" not in fp8  # compressed-tensors: the checkpoint's config decides
    assert fp8[fp8.index("--kv-cache-dtype") + 1] == "fp8"


def test_awq_on_turing_falls_back_to_the_plain_kernel() -> None:
    profile = _custom("  model: {repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq}\n")
    rtx = _box("rtx4090")
    turing = rtx.model_copy(
        update={
            "gpus": tuple(g.model_copy(update={"compute_capability": (7, 5)}) for g in rtx.gpus)
        }
    )
    argv = vllm_command(profile, turing)
    assert argv[argv.index("--quantization") + 1] == "awq"


def test_bf16_sets_the_dtype() -> None:
    profile = _custom("  model: {repo: Qwen/Qwen2.5-7B-Instruct, quantization: bf16}\n")
    argv = vllm_command(profile, _box("l40s"))
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    assert "--quantization" not in argv


def test_tensor_parallel_without_p2p_disables_custom_all_reduce() -> None:
    profile = _custom(
        "  model: {repo: Qwen/Qwen2.5-32B-Instruct-AWQ, quantization: awq}\n"
        "  engine: {tensor_parallel_size: 2}\n"
        "  gpus: [0, 1]\n"
    )
    box = _box("2x4090")
    assert box.peer_to_peer is False
    argv = vllm_command(profile, box)
    assert "--disable-custom-all-reduce" in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--disable-custom-all-reduce" not in vllm_command(profile, _box("2xh100"))


def test_lora_adapters_are_mounted_and_named() -> None:
    profile = _custom(
        "  model:\n"
        "    repo: Qwen/Qwen2.5-7B-Instruct\n"
        "    quantization: bf16\n"
        "    lora_adapters: [{name: support, repo: acme/support-lora}]\n"
        "  engine: {max_lora_rank: 16, max_loras: 2}\n"
    )
    [vllm] = container_specs(profile, _box("l40s"))
    argv = vllm.command
    assert "--enable-lora" in argv
    assert argv[argv.index("--lora-modules") + 1] == "support=/models/acme/support-lora/main"
    assert argv[argv.index("--max-lora-rank") + 1] == "16"
    assert "/models/acme/support-lora/main" in {m.target for m in vllm.mounts}


def test_tei_image_follows_the_gpu_architecture_and_cpu() -> None:
    _, tei = container_specs(_profile("a100-80g-70b"), _box("a100-80g"))
    assert tei.image.endswith(":1.9.3")
    _, tei = container_specs(_profile("h100-70b-fp8"), _box("h100"))
    assert tei.image.endswith(":cpu-1.9.3")
    assert tei.gpu_device_ids is None
    _, tei = container_specs(_profile("rtx4090-chat"), _box("rtx4090"))
    assert tei.image.endswith(":89-1.9.3")
    assert tei.command[tei.command.index("--model-id") + 1] == "/models/BAAI/bge-m3/main"


def test_gpu_the_box_does_not_have_is_bad_input() -> None:
    profile = _custom(
        "  model: {repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq}\n  gpus: [3]\n"
    )
    with pytest.raises(BadInputError, match="GPU 3"):
        container_specs(profile, _box("rtx4090"))


def test_a_cpu_box_gets_no_gpu_request() -> None:
    profile = _custom("  model: {repo: Qwen/Qwen2.5-7B-Instruct, quantization: bf16}\n")
    box = _box("rtx4090").model_copy(update={"gpus": ()})
    [vllm] = container_specs(profile, box)
    assert vllm.gpu_device_ids is None


def test_specs_are_deterministic() -> None:
    profile, box = _profile("l40s-rag"), _box("l40s")
    first = [s.spec_hash() for s in container_specs(profile, box)]
    assert first == [s.spec_hash() for s in container_specs(profile, box)]
