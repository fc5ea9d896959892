"""The CPU target (`spec.engine.device: cpu`): profile rules, container spec, RAM sizing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.catalog import load_catalog
from appliance.cpu_target import CPU_MAX_PARAMS_BILLION, estimate_cpu, kv_cache_space_gib
from appliance.errors import BadInputError, RefusedError
from appliance.fit import estimate_cpu_for
from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.local_model import resolve_model
from appliance.profile import Profile, ProfileError, parse_profile
from appliance.runtime.apply import check_box_can_run
from appliance.runtime.compose import compose_document
from appliance.runtime.cpu_engine import CONTAINER_HOOK_DIR, container_entrypoint
from appliance.runtime.model import ContainerSpec
from appliance.runtime.specs import container_specs, vllm_image_choice
from appliance.sizing import GIB

MODELS = Path("/var/lib/llm-appliance/models")


def _profile(
    engine: str, model: str = "{repo: Qwen/Qwen2.5-7B-Instruct, quantization: bf16}"
) -> Profile:
    return parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: cpu}\nspec:\n"
        f"  model: {model}\n  engine: {engine}\n",
        "cpu.yaml",
    )


def _cpu_box(memory_gib: float = 32, arch: str = "x86_64") -> Box:
    box = detect_box(simulate="rtx4090", models_dir=MODELS)
    host = box.host.model_copy(
        update={"memory_total_bytes": int(memory_gib * GIB), "architecture": arch}
    )
    return box.model_copy(update={"gpus": (), "gpu_links": (), "host": host})


def test_the_device_word_is_one_type_for_engine_and_embeddings() -> None:
    from appliance import profile

    engine = profile.EngineSpec.model_fields["device"].annotation
    embeddings = profile.EmbeddingsSpec.model_fields["device"].annotation
    assert engine == embeddings == profile.Device


@pytest.mark.parametrize(
    ("engine", "spec_extra", "words"),
    [
        ("{device: cpu, tensor_parallel_size: 2}", "", "tensor_parallel_size"),
        ("{cpu_kv_cache_gib: 4}", "", "device is gpu"),
        ("{device: cpu}", "  gpus: [0]\n", "engine.device is cpu"),
    ],
)
def test_profile_refuses_what_the_cpu_target_cannot_mean(
    engine: str, spec_extra: str, words: str
) -> None:
    text = (
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: cpu}\nspec:\n"
        "  model: {repo: Qwen/Qwen2.5-7B-Instruct, quantization: bf16}\n"
        f"  engine: {engine}\n{spec_extra}"
    )
    with pytest.raises(ProfileError, match=words):
        parse_profile(text, "cpu.yaml")


def test_cpu_spec_uses_the_cpu_image_ram_kv_cache_and_no_gpu() -> None:
    box = detect_box(simulate="rtx4090", models_dir=MODELS)  # GPUs present, and still not used
    vllm = container_specs(_profile("{device: cpu, max_model_len: 4096}"), box)[0]
    catalog = load_catalog().images.vllm
    assert vllm.image == f"vllm/vllm-openai-cpu:{catalog.cpu.tags['x86_64']}"
    assert vllm.image.endswith(f"v{catalog.version}-x86_64")
    assert vllm.gpu_device_ids is None
    assert all(p.host_ip == "127.0.0.1" for p in vllm.ports)
    assert vllm.environment["VLLM_CPU_KVCACHE_SPACE"] == "16"  # a quarter of 64 GiB
    assert vllm.environment["PYTHONPATH"] == str(CONTAINER_HOOK_DIR)
    assert vllm.environment["HF_HUB_OFFLINE"] == "1"
    assert "--gpu-memory-utilization" not in vllm.command
    assert "--quantization" not in vllm.command
    assert vllm.command[vllm.command.index("--dtype") + 1] == "bfloat16"
    assert vllm.entrypoint == container_entrypoint()


def test_cpu_kv_cache_override_and_arm_image() -> None:
    profile = _profile("{device: cpu, cpu_kv_cache_gib: 3}")
    vllm = container_specs(profile, _cpu_box(arch="aarch64"))[0]
    assert vllm.environment["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert vllm.image.endswith("-arm64")
    with pytest.raises(BadInputError, match="no CPU image for riscv64"):
        vllm_image_choice(profile, _cpu_box(arch="riscv64"))


def test_kv_cache_space_is_a_quarter_of_ram_within_bounds() -> None:
    assert kv_cache_space_gib(24 * GIB) == 6
    assert kv_cache_space_gib(2 * GIB) == 1
    assert kv_cache_space_gib(1024 * GIB) == 64
    assert kv_cache_space_gib(None) == 4
    assert kv_cache_space_gib(24 * GIB, 2) == 2


def test_a_gpu_spec_hashes_as_before_the_entrypoint_field() -> None:
    spec = ContainerSpec(role="vllm", name="n", image="i", profile="p")
    dumped = spec.model_dump(mode="json")
    dumped.pop("entrypoint")
    import hashlib

    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    assert spec.spec_hash() == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_compose_keeps_the_entrypoint_and_reserves_no_gpu() -> None:
    document = compose_document(_profile("{device: cpu}"), _cpu_box())
    service = next(iter(document["services"].values()))
    assert service["entrypoint"][:2] == ["python3", "-c"]
    assert "deploy" not in service


def test_the_entrypoint_writes_the_hook_then_runs_the_server(tmp_path: Path) -> None:
    """Run the real entrypoint with a stand-in `vllm` package: the server it execs sees the
    hook imported (sitecustomize) and the container's command as its arguments."""
    fake = tmp_path / "pkgs" / "vllm" / "entrypoints" / "openai"
    fake.mkdir(parents=True)
    for part in (fake.parents[1], fake.parents[0], fake):
        (part / "__init__.py").write_text("")
    (fake / "api_server.py").write_text(
        "import json, sys\nprint(json.dumps({'argv': sys.argv[1:], "
        "'hook': 'sitecustomize' in sys.modules}))\n"
    )
    hook_dir = tmp_path / "hook"
    entrypoint = list(container_entrypoint(CONTAINER_HOOK_DIR))
    entrypoint[0], entrypoint[3] = sys.executable, str(hook_dir)
    env = {**os.environ, "PYTHONPATH": f"{hook_dir}{os.pathsep}{tmp_path / 'pkgs'}"}
    done = subprocess.run(
        [*entrypoint, "--model", "/models/x", "--port", "8000"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(done.stdout)
    assert seen == {"argv": ["--model", "/models/x", "--port", "8000"], "hook": True}
    assert (hook_dir / "sitecustomize.py").is_file()


def test_cpu_estimate_refuses_too_many_parameters_with_the_reason() -> None:
    model = resolve_model("qwen2.5-7b-instruct")
    with pytest.raises(
        RefusedError, match=f"above the CPU target's limit of {CPU_MAX_PARAMS_BILLION:g}B"
    ):
        estimate_cpu_for(model, _cpu_box(), max_model_len=4096)


def test_cpu_estimate_refuses_quantised_checkpoints() -> None:
    model = resolve_model("qwen2.5-7b-instruct", "awq")
    with pytest.raises(RefusedError, match="bf16 or fp16 checkpoints, not awq"):
        estimate_cpu_for(model, _cpu_box())


def _small() -> dict[str, object]:
    model = resolve_model("qwen2.5-7b-instruct")
    return {
        "label": "small",
        "architecture": model.architecture,
        "weight_bytes": 3 * 10**9,
        "params_billion": 1.5,
        "quantization": "bf16",
    }


def test_cpu_estimate_in_ram_terms() -> None:
    estimate = estimate_cpu(**_small(), host_memory_bytes=32 * GIB, max_model_len=4096)  # type: ignore[arg-type]
    assert estimate.kv_cache_bytes == 8 * GIB
    assert estimate.total_bytes == 3 * 10**9 + estimate.runtime_bytes + 8 * GIB
    assert estimate.cache_tokens >= 4096


def test_cpu_estimate_refuses_what_ram_cannot_hold() -> None:
    with pytest.raises(RefusedError, match=r"of RAM on the CPU target .* but may take"):
        estimate_cpu(**_small(), host_memory_bytes=6 * GIB, kv_cache_gib=4, max_model_len=4096)  # type: ignore[arg-type]


def test_cpu_estimate_refuses_a_cache_below_one_sequence() -> None:
    with pytest.raises(RefusedError, match="less than one max_model_len 32768 sequence"):
        estimate_cpu(**_small(), host_memory_bytes=64 * GIB, kv_cache_gib=1, max_model_len=32768)  # type: ignore[arg-type]


def test_plan_preflight_refuses_a_big_model_on_the_cpu_target() -> None:
    profile = _profile("{device: cpu, max_model_len: 4096}")
    with pytest.raises(RefusedError, match=r"vLLM would refuse this profile.*CPU target.s limit"):
        check_box_can_run(profile, _cpu_box())


def test_plan_preflight_sizes_local_weights_of_a_model_the_catalog_lacks(tmp_path: Path) -> None:
    """No GPU, no GPU request: the preflight passes for a small model whose weights are in the
    models directory (read from config.json and safetensors headers)."""
    profile = parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: cpu}\nspec:\n"
        "  model: {repo: acme/none-such, quantization: bf16}\n"
        "  engine: {device: cpu, max_model_len: 4096}\n"
        f"  storage: {{models_dir: {tmp_path}}}\n",
        "cpu.yaml",
    )
    check_box_can_run(profile, _cpu_box())  # unknown and absent: not sized, not refused


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "vocab_size": 1000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def _tiny_weights(directory: Path) -> Path:
    """config.json and a real safetensors header (zero payload) of the tiny test Llama."""
    import struct

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    header = {"__metadata__": {"format": "pt"}}
    header["embed"] = {"dtype": "BF16", "shape": [1000, 128], "data_offsets": [0, 256000]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(256000))
    return directory


def _tiny_profile(models: Path, engine: str) -> Profile:
    return parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: cpu}\nspec:\n"
        "  model: {repo: acme/tiny, quantization: bf16}\n"
        f"  engine: {engine}\n  storage: {{models_dir: {models}}}\n",
        "cpu.yaml",
    )


def test_preflight_sizes_local_weights_in_ram_terms(tmp_path: Path) -> None:
    _tiny_weights(tmp_path / "acme" / "tiny" / "main")
    check_box_can_run(_tiny_profile(tmp_path, "{device: cpu, max_model_len: 512}"), _cpu_box())
    too_small = _tiny_profile(tmp_path, "{device: cpu, max_model_len: 512, cpu_kv_cache_gib: 8}")
    with pytest.raises(RefusedError, match="of RAM on the CPU target"):
        check_box_can_run(too_small, _cpu_box(memory_gib=8))


def test_cli_estimate_and_recommend_on_the_cpu_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import run

    model = str(_tiny_weights(tmp_path / "tiny"))
    assert run(["estimate", model, "--device", "cpu", "--simulate", "rtx4090", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["device"] == "cpu"
    assert estimate["kv_cache_space_gib"] == 16  # a quarter of the simulated box's 64 GiB
    argv = ["recommend", "--device", "cpu", "--workload", "chat", "--context", "512"]
    assert run([*argv, "--model", model, "--simulate", "rtx4090"]) == 0
    assert "fits  " in capsys.readouterr().out
    refused = run(["recommend", "--device", "cpu", "--workload", "chat", "--simulate", "rtx4090"])
    assert refused == 4
    assert "4B-parameter limit" in capsys.readouterr().err


def test_a_cpu_recommendation_writes_a_cpu_profile(tmp_path: Path) -> None:
    import dataclasses

    from appliance.local_model import read_local_model
    from appliance.profile import dump_profile
    from appliance.recommend import Workload, recommend_cpu

    model = read_local_model(_tiny_weights(tmp_path / "tiny"), "bf16")
    model = dataclasses.replace(model, repo="acme/tiny")
    workload = Workload.for_kind("chat", context=512, users=4)
    profile = recommend_cpu(_cpu_box(), workload, [model]).to_profile()
    again = parse_profile(dump_profile(profile), "cpu.yaml")
    assert again.spec.engine.device == "cpu"
    assert (again.spec.engine.max_model_len, again.spec.engine.max_num_seqs) == (512, 4)
    assert again.spec.model.repo == "acme/tiny"


def test_k8s_export_keeps_the_entrypoint_and_asks_for_no_gpu() -> None:
    from appliance.exports.k8s import manifests

    objects = manifests(_profile("{device: cpu}"), _cpu_box())
    (vllm,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("vllm")
    ]
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == list(container_entrypoint())
    assert "resources" not in container
    assert "tolerations" not in vllm["spec"]["template"]["spec"]
