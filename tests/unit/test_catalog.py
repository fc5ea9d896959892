"""Invariants of the shipped catalog data, and of the loader that types it.

The data is hand-curated from public sources, so these tests are what catches a transcription
slip: a variant whose byte count does not fit its parameter count and format, an NVML name listed
twice, a TEI tag for the wrong architecture.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from appliance.catalog import (
    Catalog,
    ChatModel,
    GpuSpec,
    ModelArchitecture,
    ModelVariant,
    load_catalog,
)
from appliance.sizing import PINNED_VLLM_VERSION, parse_version

CATALOG = load_catalog()
MIB = 1024**2

# Models whose config.json sets head_dim explicitly to something other than hidden / heads.
EXPLICIT_HEAD_DIM = {
    "qwen3-32b",  # 64 x 128 = 8192 vs hidden 5120
    "mistral-small-24b-instruct-2501",  # 32 x 128 = 4096 vs hidden 5120
    "gemma-2-9b-it",  # 16 x 256 = 4096 vs hidden 3584
    "gemma-2-27b-it",  # 32 x 128 = 4096 vs hidden 4608
    "deepseek-v2-lite-chat",  # MLA: 16 x (128 nope + 64 rope) = 3072 vs hidden 2048
    "gpt-oss-20b",  # 64 x 64 = 4096 vs hidden 2880
    "gpt-oss-120b",  # 64 x 64 = 4096 vs hidden 2880
    "qwen3-30b-a3b-instruct-2507",  # 32 x 128 = 4096 vs hidden 2048
    "qwen3.6-27b",  # 24 x 256 = 6144 vs hidden 5120
    "qwen3.6-35b-a3b",  # 16 x 256 = 4096 vs hidden 2048
    "mistral-small-3.2-24b-instruct-2506",  # 32 x 128 = 4096 vs hidden 5120
    "gemma-4-31b-it",  # 32 x 256 = 8192 vs hidden 5376 (global layers: 32 x 512)
    "gemma-4-26b-a4b-it",  # 16 x 256 = 4096 vs hidden 2816 (global layers: 16 x 512)
    "gemma-4-12b-it",  # 16 x 256 = 4096 vs hidden 3840 (global layers: 16 x 512)
}
# Models whose publisher released only a quantised checkpoint (no BF16 weights of their own).
NATIVELY_QUANTISED = {"gpt-oss-20b": "mxfp4", "gpt-oss-120b": "mxfp4"}

REQUIRED_MODELS = {
    "llama-3.1-8b-instruct",
    "llama-3.3-70b-instruct",
    "qwen2.5-7b-instruct",
    "qwen2.5-14b-instruct",
    "qwen2.5-32b-instruct",
    "qwen2.5-72b-instruct",
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-32b",
    "mistral-7b-instruct-v0.3",
    "mistral-small-24b-instruct-2501",
    "gemma-2-9b-it",
    "gemma-2-27b-it",
    "mixtral-8x7b-instruct-v0.1",
    "llama-4-scout-17b-16e-instruct",
}
REQUIRED_GPUS = {
    "rtx3090",
    "rtx4090",
    "rtx5090",
    "rtx6000-ada",
    "l4",
    "a10g",
    "l40s",
    "a100-40g",
    "a100-80g",
    "h100-pcie",
    "h100",
    "h100-nvl",
    "h200",
}
REQUIRED_EMBEDDINGS = {
    "BAAI/bge-m3",
    "BAAI/bge-large-en-v1.5",
    "nomic-ai/nomic-embed-text-v1.5",
    "intfloat/multilingual-e5-large-instruct",
}


def _variants() -> list[tuple[ChatModel, ModelVariant]]:
    return [(model, variant) for model in CATALOG.models for variant in model.variants]


def _variant_id(pair: tuple[ChatModel, ModelVariant]) -> str:
    return pair[1].repo


# --- loading and lookups ----------------------------------------------------------------------


def test_catalog_has_every_required_entry() -> None:
    assert {m.key for m in CATALOG.models} >= REQUIRED_MODELS
    assert {g.key for g in CATALOG.gpus} >= REQUIRED_GPUS
    assert {e.repo for e in CATALOG.embeddings} >= REQUIRED_EMBEDDINGS


def test_load_catalog_is_cached() -> None:
    assert load_catalog() is CATALOG


def test_keys_repos_and_nvml_names_are_unique() -> None:
    model_keys = [m.key for m in CATALOG.models]
    repos = [v.repo.lower() for _, v in _variants()]
    gpu_keys = [g.key for g in CATALOG.gpus]
    nvml_names = [n for g in CATALOG.gpus for n in (g.name, *g.nvml_names)]
    for values in (model_keys, repos, gpu_keys, nvml_names):
        assert len(values) == len(set(values))


def test_a_duplicate_is_refused_at_load() -> None:
    data = CATALOG.model_dump()
    data["gpus"] = [*data["gpus"], data["gpus"][0]]
    with pytest.raises(ValidationError, match="duplicate GPU key"):
        Catalog.model_validate(data)


def test_lookups() -> None:
    found = CATALOG.model_by_repo("QWEN/qwen2.5-7b-instruct-awq")
    assert found is not None
    assert (found[0].key, found[1].quantization) == ("qwen2.5-7b-instruct", "awq")
    assert CATALOG.model_by_repo("nobody/nothing") is None
    assert CATALOG.gpu_by_name("NVIDIA A100 80GB PCIe") is CATALOG.gpu("a100-80g")
    assert CATALOG.gpu_by_name("NVIDIA GeForce RTX 4090") is CATALOG.gpu("rtx4090")
    assert CATALOG.gpu_by_name("NVIDIA Tesla V100-SXM2-32GB") is None
    assert CATALOG.embedding("BAAI/BGE-M3") is CATALOG.embedding("bge-m3")


# --- architecture ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_heads_group_evenly(model: ChatModel) -> None:
    arch = model.architecture
    assert arch.num_attention_heads % arch.num_key_value_heads == 0


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_head_dim_matches_hidden_size_unless_the_config_says_otherwise(model: ChatModel) -> None:
    arch = model.architecture
    width = arch.head_dim * arch.num_attention_heads
    if model.key in EXPLICIT_HEAD_DIM:
        assert width != arch.hidden_size
        assert 0.5 <= width / arch.hidden_size <= 2
    else:
        assert width == arch.hidden_size


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_moe_fields(model: ChatModel) -> None:
    arch = model.architecture
    if model.is_moe:
        assert arch.num_experts is not None
        assert arch.num_experts_per_token is not None
        assert arch.num_experts >= arch.num_experts_per_token
        assert model.active_params_billion is not None
        assert model.active_params_billion < model.params_billion
    else:
        assert model.active_params_billion is None
        assert arch.moe_intermediate_size is None


def test_known_attention_patterns() -> None:
    gemma = CATALOG.model("gemma-2-27b-it")
    assert gemma is not None
    assert gemma.architecture.sliding_window == 4096
    assert gemma.architecture.sliding_window_layers == tuple(range(0, 46, 2))
    assert gemma.architecture.attn_logit_softcapping == 50.0

    scout = CATALOG.model("llama-4-scout-17b-16e-instruct")
    assert scout is not None
    assert scout.architecture.attention_chunk_size == 8192
    assert scout.architecture.global_attention_layers == tuple(range(3, 48, 4))
    assert scout.architecture.num_experts == 16
    assert scout.architecture.vision_params

    for key in ("qwen2.5-7b-instruct", "qwen2.5-72b-instruct", "mistral-7b-instruct-v0.3"):
        model = CATALOG.model(key)
        assert model is not None
        assert model.architecture.sliding_window is None


def _arch(**overrides: Any) -> dict[str, Any]:
    base = CATALOG.models[0].architecture.model_dump()
    return {**base, **overrides}


@given(
    heads=st.integers(min_value=1, max_value=256), kv_heads=st.integers(min_value=1, max_value=256)
)
def test_architecture_accepts_heads_exactly_when_they_group_evenly(
    heads: int, kv_heads: int
) -> None:
    data = _arch(num_attention_heads=heads, num_key_value_heads=kv_heads)
    if heads % kv_heads == 0:
        assert ModelArchitecture.model_validate(data).num_attention_heads == heads
    else:
        with pytest.raises(ValidationError, match="not a multiple"):
            ModelArchitecture.model_validate(data)


def test_architecture_refuses_inconsistent_layer_and_expert_fields() -> None:
    with pytest.raises(ValidationError, match="outside"):
        ModelArchitecture.model_validate(_arch(sliding_window=4096, sliding_window_layers=(0, 99)))
    with pytest.raises(ValidationError, match="sliding_window is not"):
        ModelArchitecture.model_validate(_arch(sliding_window_layers=(0,)))
    with pytest.raises(ValidationError, match="exceeds"):
        ModelArchitecture.model_validate(
            _arch(num_experts=2, num_experts_per_token=4, moe_intermediate_size=1024)
        )
    with pytest.raises(ValidationError, match="go together"):
        ModelArchitecture.model_validate(_arch(num_experts=8, moe_intermediate_size=1024))


# --- variants and their sizes ---------------------------------------------------------------


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_every_model_has_a_bf16_variant_with_the_models_gating(model: ChatModel) -> None:
    original = model.variant(NATIVELY_QUANTISED.get(model.key, "bf16"))  # type: ignore[arg-type]
    assert original is not None
    assert original.gated == model.gated
    assert len({v.quantization for v in model.variants}) == len(model.variants)


def _sixteen_bit_params(arch: ModelArchitecture) -> int:
    """Parameters every format keeps in 16 bits: embeddings, an untied lm_head, a vision tower."""
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    return embeddings + (arch.vision_params or 0)


# Bytes per parameter of a quantised linear layer: 4-bit weights plus group scales and zero points
# (or none, for a checkpoint without groups); FP8 weights plus per-tensor, per-channel or per-block
# scales. Norms and biases, a rounding error at these sizes, fall inside the band.
BYTES_PER_LINEAR_PARAM = {
    "bf16": (2.0, 2.0),
    "fp16": (2.0, 2.0),
    "awq": (0.49, 0.57),
    "gptq": (0.49, 0.57),
    "fp8": (0.99, 1.03),
    # gpt-oss: experts at 4.25 bits (E2M1 + one UE8 scale per 32) while attention stays BF16.
    "mxfp4": (0.53, 0.60),
}


@pytest.mark.parametrize("pair", _variants(), ids=_variant_id)
def test_variant_bytes_fit_parameters_and_format(pair: tuple[ChatModel, ModelVariant]) -> None:
    model, variant = pair
    params = model.params_billion * 1e9
    if variant.quantization in ("bf16", "fp16"):
        # params_billion is rounded to 10M parameters.
        assert abs(variant.weight_bytes / 2 - params) <= 0.006e9
        return
    sixteen = _sixteen_bit_params(model.architecture)
    linear = params - sixteen
    low, high = BYTES_PER_LINEAR_PARAM[variant.quantization]
    assert 2 * sixteen + low * linear <= variant.weight_bytes <= 2 * sixteen + high * linear


@pytest.mark.parametrize("pair", _variants(), ids=_variant_id)
def test_variant_bits_match_quantization(pair: tuple[ChatModel, ModelVariant]) -> None:
    _, variant = pair
    expected = {"awq": 4, "gptq": 4, "fp8": 8, "mxfp4": 4}.get(variant.quantization)
    assert variant.bits == expected
    if variant.quantization == "awq":
        assert variant.group_size == 128


@pytest.mark.parametrize("pair", _variants(), ids=_variant_id)
def test_variant_says_how_its_size_was_obtained(pair: tuple[ChatModel, ModelVariant]) -> None:
    _, variant = pair
    assert variant.source.startswith(variant.weight_bytes_from + ":")
    assert variant.repo_evidence
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", variant.repo)


# --- GPUs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.key)
def test_fp8_exactly_from_ada_on(gpu: GpuSpec) -> None:
    assert gpu.fp8 == (gpu.compute_capability >= (8, 9))


def test_fp8_flag_contradicting_compute_capability_is_refused() -> None:
    data = CATALOG.gpus[0].model_dump()
    data["fp8"] = not data["fp8"]
    with pytest.raises(ValidationError, match="fp8"):
        GpuSpec.model_validate(data)


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.key)
def test_gpu_memory_is_the_nvml_figure_its_source_shows(gpu: GpuSpec) -> None:
    assert gpu.memory_total_bytes % MIB == 0
    mib = gpu.memory_total_bytes // MIB
    assert str(mib) in gpu.memory_source
    # NVML's total sits a little under the marketing size (ECC, reserved regions), never above.
    assert 20 * 1024 <= mib <= 150 * 1024


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.key)
def test_geforce_cards_have_no_p2p_by_default(gpu: GpuSpec) -> None:
    assert gpu.p2p_default == (gpu.segment != "consumer")
    assert gpu.name.startswith("NVIDIA ")


ARCH_BY_MAJOR = {7: "turing", 8: "ampere", 9: "hopper", 10: "blackwell", 12: "blackwell"}


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.key)
def test_architecture_follows_compute_capability(gpu: GpuSpec) -> None:
    expected = (
        "ada" if gpu.compute_capability == (8, 9) else ARCH_BY_MAJOR[gpu.compute_capability[0]]
    )
    assert gpu.architecture == expected


# --- TEI image per architecture -------------------------------------------------------------


def _tag(compute_capability: tuple[int, int] | None) -> str:
    image = CATALOG.tei_tag(compute_capability)
    repository, tag = image.rsplit(":", 1)
    assert repository == CATALOG.images.tei.repository
    return tag


@pytest.mark.parametrize("gpu", CATALOG.gpus, ids=lambda g: g.key)
def test_tei_tag_matches_each_gpus_architecture(gpu: GpuSpec) -> None:
    version = CATALOG.images.tei.version
    expected_prefix = {
        (8, 0): "",
        (8, 6): "86-",
        (8, 9): "89-",
        (9, 0): "hopper-",
        (12, 0): "120-",
    }[gpu.compute_capability]
    assert _tag(gpu.compute_capability) == f"{expected_prefix}{version}"


def test_tei_tag_without_a_gpu_or_for_unsupported_cards_is_the_cpu_image() -> None:
    cpu = CATALOG.images.tei.cpu
    assert _tag(None) == cpu
    assert _tag((7, 0)) == cpu  # Volta: TEI has no image
    assert _tag((7, 5)) == CATALOG.images.tei.turing
    assert _tag((10, 0)) == CATALOG.images.tei.blackwell_100


@given(st.tuples(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=9)))
def test_tei_tag_is_always_a_published_tag(compute_capability: tuple[int, int]) -> None:
    tei = CATALOG.images.tei
    published = {
        tei.turing,
        tei.ampere_80,
        tei.ampere_86,
        tei.ada_89,
        tei.hopper,
        tei.blackwell_100,
        tei.blackwell_120,
        tei.cpu,
    }
    tag = _tag(compute_capability)
    assert tag in published
    assert tag.endswith(tei.version)
    if compute_capability[0] >= 9:
        # Hopper's kernels do not run on Blackwell: each major gets its own image or the CPU one.
        assert (tag == tei.hopper) == (compute_capability[0] == 9)


def test_vllm_image_is_pinned() -> None:
    vllm = CATALOG.images.vllm
    assert vllm.repository == "vllm/vllm-openai"
    assert vllm.tag == f"v{vllm.version}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", vllm.version)


# --- embeddings and provenance --------------------------------------------------------------


@pytest.mark.parametrize("embedding", CATALOG.embeddings, ids=lambda e: e.key)
def test_embedding_bytes_are_parameters_times_a_float_width(embedding: Any) -> None:
    bytes_per_param = embedding.weight_bytes / (embedding.params_million * 1e6)
    assert min(abs(bytes_per_param - 2), abs(bytes_per_param - 4)) < 0.01
    assert embedding.source.startswith(embedding.weight_bytes_from + ":")
    assert embedding.dimensions in (768, 1024)


def test_every_source_is_filled_in() -> None:
    sources = [CATALOG.images.source]
    sources += [m.architecture_source for m in CATALOG.models]
    sources += [v.source for _, v in _variants()]
    sources += [e.source for e in CATALOG.embeddings]
    sources += [g.memory_source for g in CATALOG.gpus]
    sources += [g.spec_source or "" for g in CATALOG.gpus]
    assert all(s.strip() for s in sources)


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_minimum_vllm_versions_are_sourced_and_met_by_the_pinned_release(model: ChatModel) -> None:
    if model.min_vllm_version is None:
        assert model.min_vllm_version_source is None
        return
    assert model.min_vllm_version_source
    assert parse_version(model.min_vllm_version) <= parse_version(PINNED_VLLM_VERSION)


@pytest.mark.parametrize(
    "model",
    [m for m in CATALOG.models if m.architecture.linear_attention_layers],
    ids=lambda m: m.key,
)
def test_gated_deltanet_models_keep_every_fourth_layer_full(model: ChatModel) -> None:
    """Qwen3.5/3.6 configs: full_attention_interval 4, i.e. layers 3, 7, 11, ... are full
    attention and the rest Gated DeltaNet; the state is float32 as the configs say."""
    arch = model.architecture
    linear = set(arch.linear_attention_layers or ())
    assert linear == {i for i in range(arch.num_hidden_layers) if (i + 1) % 4}
    assert arch.full_attention_layer_count == arch.num_hidden_layers // 4
    assert arch.mamba_ssm_dtype == "float32"
    assert model.min_vllm_version is not None


def _qwen36_fp8_bytes(model: ChatModel) -> int:
    """Qwen's fine-grained FP8 on a Qwen3.5/3.6 checkpoint: every text linear of the decoder
    and of the one MTP layer in FP8 (1 byte per weight) with a bf16 scale per 128 x 128 block;
    the rest of the BF16 checkpoint (embeddings, lm_head, in_proj_a/b, conv1d, norms, routers,
    the MTP fc, the vision tower) stays 16-bit."""
    arch = model.architecture
    h, kv_dim = arch.hidden_size, arch.num_key_value_heads * arch.head_dim
    q_dim = arch.num_attention_heads * arch.head_dim
    k_heads, v_heads = arch.linear_num_key_heads or 0, arch.linear_num_value_heads or 0
    k_dim, v_dim = arch.linear_key_head_dim or 0, arch.linear_value_head_dim or 0
    gdn = [(2 * k_heads * k_dim + v_heads * v_dim, h), (v_heads * v_dim, h), (h, v_heads * v_dim)]
    attention = [(2 * q_dim, h), (kv_dim, h), (kv_dim, h), (h, q_dim)]  # q carries its gate
    if arch.num_experts is None:
        mlp = [(arch.intermediate_size, h)] * 2 + [(h, arch.intermediate_size)]
    else:
        inter = arch.moe_intermediate_size or 0
        experts = arch.num_experts + (arch.num_shared_experts or 0)
        mlp = ([(inter, h)] * 2 + [(h, inter)]) * experts
    linear_layers = len(arch.linear_attention_layers or ())
    full_layers = arch.num_hidden_layers - linear_layers
    shapes = (
        gdn * linear_layers + attention * (full_layers + 1) + mlp * (arch.num_hidden_layers + 1)
    )
    fp8 = sum(o * i for o, i in shapes)
    scales = sum(-(-o // 128) * -(-i // 128) * 2 for o, i in shapes)
    bf16 = model.variant("bf16")
    assert bf16 is not None
    return fp8 + scales + 2 * (bf16.weight_bytes // 2 - fp8)


@pytest.mark.parametrize("key", ["qwen3.6-27b", "qwen3.6-35b-a3b"])
def test_qwen36_fp8_bytes_follow_the_fine_grained_layout(key: str) -> None:
    model = CATALOG.model(key)
    assert model is not None
    fp8 = model.variant("fp8")
    assert fp8 is not None
    assert fp8.repo.startswith("Qwen/")
    assert fp8.repo.endswith("-FP8")
    assert fp8.weight_bytes == _qwen36_fp8_bytes(model)


def test_qwen36_fp8_sizes_match_what_was_reported_for_the_repos() -> None:
    """vLLM's 'Checkpoint size: 28.75 GiB' for Qwen/Qwen3.6-27B-FP8 (club-3090 issue #751) and
    the served 35B-A3B-FP8 checkpoint's '37.5 GB' (inference-atlas pull request #145)."""
    small, large = CATALOG.model("qwen3.6-27b"), CATALOG.model("qwen3.6-35b-a3b")
    assert small is not None
    assert large is not None
    small_fp8, large_fp8 = small.variant("fp8"), large.variant("fp8")
    assert small_fp8 is not None
    assert large_fp8 is not None
    assert round(small_fp8.weight_bytes / 1024**3, 2) == 28.75
    assert round(large_fp8.weight_bytes / 1e9, 1) == 37.5
