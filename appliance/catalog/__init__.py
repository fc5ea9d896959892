"""Known models, GPUs and engine images, as data.

The numbers live in YAML files beside this module (`models.yaml`, `embeddings.yaml`, `gpus.yaml`,
`images.yaml`); this module only gives them types. Every figure in the data says where it came
from (`source`), and whether it was copied from a published file, computed exactly from the
config and the checkpoint format's layout, or estimated where part of that layout (which modules
a third-party quantiser left unquantised, its group size) could not be confirmed
(`weight_bytes_from`). Loading checks the invariants that keep lookups unambiguous (unique keys,
repos and NVML names). Pure: reading package data is the only IO.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.vocabulary import Quantization

# "copied": a published `model.safetensors.index.json` `total_size`; "computed": exact from the
# config and the format's tensor layout; "estimated": computed, but on an assumed layout (named in
# `source`) that could not be confirmed from the repo itself.
WeightBytesFrom = Literal["copied", "computed", "estimated"]
Architecture = Literal["turing", "ampere", "ada", "hopper", "blackwell"]
QualityTier = Literal["good", "better", "best"]
PositiveInt = Annotated[int, Field(gt=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RopeScaling(_Frozen):
    """config.json's `rope_scaling` (`rope_parameters` in Transformers v5), the part that
    decides how long a context vLLM accepts."""

    rope_type: str  # "yarn", "linear", "dynamic", "llama3", "longrope", ...
    factor: float | None = None
    original_max_position_embeddings: PositiveInt | None = None


class ModelArchitecture(_Frozen):
    """The numbers from a model's `config.json` that decide its memory footprint."""

    hf_architecture: str  # e.g. "LlamaForCausalLM", as in config.json's `architectures`
    model_type: str
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt
    head_dim: PositiveInt
    hidden_size: PositiveInt
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    max_position_embeddings: PositiveInt
    tie_word_embeddings: bool = False
    rope_scaling: RopeScaling | None = None
    # Sliding-window attention: the window size, and which layers use it. `sliding_window_layers`
    # lists layer indices; None with a window set means every layer slides (Mistral v0.1 style).
    sliding_window: PositiveInt | None = None
    sliding_window_layers: tuple[int, ...] | None = None
    # Llama 4: chunked local attention on the layers that are not in `global_attention_layers`
    # (those are full attention without RoPE, every 4th layer in Scout).
    attention_chunk_size: PositiveInt | None = None
    global_attention_layers: tuple[int, ...] | None = None
    # Gemma 2 caps attention logits (tanh soft-capping); an attention backend must support it.
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    # Mixture of experts: every expert's weights are resident even though few are active.
    num_experts: PositiveInt | None = None
    num_experts_per_token: PositiveInt | None = None
    moe_intermediate_size: PositiveInt | None = None
    num_shared_experts: int | None = None
    moe_layers: tuple[int, ...] | None = None  # None with experts set: every layer is MoE
    # Multi-head latent attention (DeepSeek-V2/V3, Kimi K2): each layer caches one compressed
    # latent of kv_lora_rank + qk_rope_head_dim values per token, whole on every TP rank.
    kv_lora_rank: PositiveInt | None = None
    qk_rope_head_dim: PositiveInt | None = None
    # Multimodal checkpoints carry a vision tower whose weights count too.
    vision_params: int | None = None
    # ... and vLLM runs that tower over a batch of dummy images at start-up: its width, the
    # patch tokens one image is cut into, and the language-model tokens that image becomes.
    vision_hidden_size: PositiveInt | None = None
    vision_intermediate_size: PositiveInt | None = None
    vision_patches_per_item: PositiveInt | None = None
    mm_tokens_per_item: PositiveInt | None = None
    # Gated DeltaNet (linear attention) layers, as in Qwen3-Next and Qwen3.5/3.6
    # (`layer_types` "linear_attention"): no per-token KV cache, but a fixed state per sequence
    # and layer - a causal-conv window of (linear_conv_kernel_dim - 1) x conv_dim values and a
    # recurrent matrix of linear_num_value_heads x linear_value_head_dim x linear_key_head_dim
    # (vLLM `MambaStateShapeCalculator.gated_delta_net_state_shape`), the recurrent one in
    # `mamba_ssm_dtype` when the config names one (Qwen3.5/3.6: float32), else the model dtype.
    linear_attention_layers: tuple[int, ...] | None = None
    linear_num_key_heads: PositiveInt | None = None
    linear_num_value_heads: PositiveInt | None = None
    linear_key_head_dim: PositiveInt | None = None
    linear_value_head_dim: PositiveInt | None = None
    linear_conv_kernel_dim: PositiveInt | None = None
    mamba_ssm_dtype: Literal["float32"] | None = None
    # Gemma 4: the full-attention (global) layers use wider heads than the sliding ones
    # (`global_head_dim`), and with `attention_k_eq_v` (K doubles as V) their own KV-head count
    # (`num_global_key_value_heads`); vLLM still caches K and V for them (gemma4.py loads K into
    # both slots). The last `num_kv_shared_layers` layers reuse the cache of the last earlier
    # layer of their kind and hold none of their own.
    global_head_dim: PositiveInt | None = None
    num_global_key_value_heads: PositiveInt | None = None
    attention_k_eq_v: bool = False
    num_kv_shared_layers: Annotated[int, Field(ge=0)] = 0

    @property
    def full_attention_layer_count(self) -> int:
        """Layers that keep a per-token KV cache (all of them unless some are linear)."""
        return self.num_hidden_layers - len(self.linear_attention_layers or ())

    @property
    def cached_layer_count(self) -> int:
        """Layers with a cache of their own (the KV-shared tail reuses earlier layers')."""
        return self.num_hidden_layers - self.num_kv_shared_layers

    def layer_kv_shape(self, layer: int) -> tuple[int, int]:
        """(KV heads, head dim) of one layer as vLLM sizes its cache: Gemma 4's global layers
        take `global_head_dim` and, with K = V, `num_global_key_value_heads`."""
        global_layer = self.global_head_dim is not None and not self.is_local_layer(layer)
        if not global_layer:
            return self.num_key_value_heads, self.head_dim
        heads = self.num_key_value_heads
        if self.attention_k_eq_v and self.num_global_key_value_heads is not None:
            heads = self.num_global_key_value_heads
        return heads, self.global_head_dim or self.head_dim

    def is_local_layer(self, layer: int) -> bool:
        """Whether a layer attends within a sliding window (or a Llama 4 chunk)."""
        if self.attention_chunk_size is not None:
            if self.global_attention_layers is None:
                return (layer + 1) % 4 != 0
            return layer not in self.global_attention_layers
        if self.sliding_window is None:
            return False
        return self.sliding_window_layers is None or layer in self.sliding_window_layers

    def gdn_state_shapes(self, tensor_parallel_size: int = 1) -> tuple[int, int] | None:
        """Per GPU, one linear-attention layer of one sequence: (conv state values, recurrent
        state values), as vLLM's `gated_delta_net_state_shape` cuts them under TP (None: no
        linear layers)."""
        if not self.linear_attention_layers:
            return None
        k_heads, v_heads = self.linear_num_key_heads or 0, self.linear_num_value_heads or 0
        k_dim, v_dim = self.linear_key_head_dim or 0, self.linear_value_head_dim or 0
        conv_dim = (k_dim * k_heads * 2 + v_dim * v_heads) // tensor_parallel_size
        conv = conv_dim * ((self.linear_conv_kernel_dim or 1) - 1)
        recurrent = (v_heads // tensor_parallel_size) * v_dim * k_dim
        return conv, recurrent

    def gdn_state_bytes(self, tensor_parallel_size: int = 1, dtype_bytes: int = 2) -> int:
        """vLLM's `MambaSpec.page_size_bytes` for one linear layer of one sequence: the conv
        state in the model dtype, the recurrent state in `mamba_ssm_dtype` (0: no such layers)."""
        shapes = self.gdn_state_shapes(tensor_parallel_size)
        if shapes is None:
            return 0
        conv, recurrent = shapes
        ssm_bytes = 4 if self.mamba_ssm_dtype == "float32" else dtype_bytes
        return conv * dtype_bytes + recurrent * ssm_bytes

    @property
    def max_model_len_limit(self) -> int:
        """The longest max_model_len vLLM accepts for this config, as its
        `_get_and_verify_max_len` derives it (vllm/config/model.py): max_position_embeddings,
        times the RoPE scaling factor unless the type already counts it (llama3, longrope, su)
        or the model is Gemma 3 (whose max_position_embeddings is the scaled length); YaRN
        scales original_max_position_embeddings instead. Above it vLLM refuses to start unless
        VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."""
        derived = float(self.max_position_embeddings)
        rope = self.rope_scaling
        scales = rope is not None and rope.rope_type not in ("su", "longrope", "llama3")
        if rope is not None and scales and "gemma3" not in self.model_type:
            if rope.rope_type == "yarn" and rope.original_max_position_embeddings:
                derived = float(rope.original_max_position_embeddings)
            derived *= rope.factor or 1.0
        return int(derived)

    @property
    def mla_latent_size(self) -> int | None:
        """Values one MLA layer caches per token (None: per-head K and V instead)."""
        if self.kv_lora_rank is None or self.qk_rope_head_dim is None:
            return None
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def uses_mla(self) -> bool:
        return self.mla_latent_size is not None

    @property
    def profiles_vision(self) -> bool:
        return self.mm_tokens_per_item is not None

    @model_validator(mode="after")
    def _heads_group_evenly(self) -> ModelArchitecture:
        if self.num_attention_heads % self.num_key_value_heads:
            msg = (
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _layer_lists_fit(self) -> ModelArchitecture:
        for name in (
            "sliding_window_layers",
            "global_attention_layers",
            "moe_layers",
            "linear_attention_layers",
        ):
            layers: tuple[int, ...] | None = getattr(self, name)
            if layers is not None and any(not 0 <= i < self.num_hidden_layers for i in layers):
                msg = f"{name} names a layer outside 0..{self.num_hidden_layers - 1}"
                raise ValueError(msg)
        if self.sliding_window_layers is not None and self.sliding_window is None:
            msg = "sliding_window_layers is set but sliding_window is not"
            raise ValueError(msg)
        if self.global_attention_layers is not None and self.attention_chunk_size is None:
            msg = "global_attention_layers is set but attention_chunk_size is not"
            raise ValueError(msg)
        if self.num_kv_shared_layers >= self.num_hidden_layers:
            msg = "num_kv_shared_layers leaves no layer with a cache of its own"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _groups_complete(self) -> ModelArchitecture:
        groups = (
            ("kv_lora_rank", "qk_rope_head_dim"),
            (
                "vision_hidden_size",
                "vision_intermediate_size",
                "vision_patches_per_item",
                "mm_tokens_per_item",
            ),
            (
                "linear_attention_layers",
                "linear_num_key_heads",
                "linear_num_value_heads",
                "linear_key_head_dim",
                "linear_value_head_dim",
                "linear_conv_kernel_dim",
            ),
        )
        for names in groups:
            given = [getattr(self, name) is not None for name in names]
            if any(given) and not all(given):
                msg = f"{', '.join(names)} go together"
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _experts_consistent(self) -> ModelArchitecture:
        if (self.num_experts is None) != (self.num_experts_per_token is None):
            msg = "num_experts and num_experts_per_token go together"
            raise ValueError(msg)
        if (
            self.num_experts is not None
            and self.num_experts_per_token is not None
            and self.num_experts_per_token > self.num_experts
        ):
            msg = "num_experts_per_token exceeds num_experts"
            raise ValueError(msg)
        return self


class ModelVariant(_Frozen):
    """One published checkpoint of a model: its repo, format and real size on disk."""

    quantization: Quantization
    repo: str
    weight_bytes: PositiveInt  # safetensors payload: index.json `total_size` or computed
    weight_bytes_from: WeightBytesFrom
    source: str  # where weight_bytes came from: repo and file, or the computation
    bits: int | None = None  # 4 for AWQ/GPTQ INT4, 8 for FP8
    group_size: int | None = None  # None with bits set: per-channel or per-tensor scales
    gated: bool = False
    # Where the repo was seen to exist (the Hub itself is unreachable from the build machines).
    repo_evidence: str | None = None


class QualityEvidence(_Frozen):
    """A public leaderboard's score for the model, kept with where and when it was read."""

    board: str  # e.g. "Artificial Analysis Intelligence Index v4"
    score: float
    as_of: str  # the date the source states for the figure (YYYY-MM-DD or YYYY-MM)
    source: str  # the page the figure was read on, and what it says


class ChatModel(_Frozen):
    key: str  # short id used in profiles and on the CLI, e.g. "llama-3.1-8b-instruct"
    name: str
    family: str
    params_billion: float
    active_params_billion: float | None = None  # MoE only
    architecture: ModelArchitecture
    architecture_source: str  # repo and path of the config.json the numbers came from
    variants: tuple[ModelVariant, ...]
    license: str
    gated: bool
    quality_tier: QualityTier
    # The leaderboard figure the recommender ranks by where one was found (see models.yaml).
    quality_evidence: QualityEvidence | None = None
    # Tags the recommender uses for workloads, e.g. "multilingual", "tool-calling", "long-context".
    strengths: tuple[str, ...] = ()
    # The first vLLM release that serves the architecture, where the catalog found one stated,
    # and where (None: supported long before the pinned release, or not sourced).
    min_vllm_version: str | None = None
    min_vllm_version_source: str | None = None

    @model_validator(mode="after")
    def _min_version_has_a_source(self) -> ChatModel:
        if (self.min_vllm_version is None) != (self.min_vllm_version_source is None):
            msg = f"{self.key}: min_vllm_version and min_vllm_version_source go together"
            raise ValueError(msg)
        return self

    @property
    def is_moe(self) -> bool:
        return self.architecture.num_experts is not None

    def variant(self, quantization: Quantization) -> ModelVariant | None:
        return next((v for v in self.variants if v.quantization == quantization), None)


class EmbeddingModel(_Frozen):
    key: str
    name: str
    repo: str
    dimensions: PositiveInt
    max_tokens: PositiveInt
    params_million: float
    weight_bytes: PositiveInt
    weight_bytes_from: WeightBytesFrom
    source: str
    license: str
    multilingual: bool
    gated: bool = False  # the Hub asks for the licence to be accepted (a token is needed)
    # TEI runs the model in this dtype; None is TEI's default (float16 on a GPU). TEI 1.9.3
    # refuses Gemma3 in anything but float32 ("Gemma3 is only supported in fp32 precision",
    # backends/candle/src/lib.rs).
    tei_dtype: Literal["float32"] | None = None

    @property
    def tei_bytes_per_param(self) -> int:
        return 4 if self.tei_dtype == "float32" else 2


class DenseTflops(_Frozen):
    """A card's dense (no 2:4 sparsity) tensor-core peak, FP32 accumulate, in TFLOP/s."""

    bf16: float = Field(gt=0)  # also the INT4 path: Marlin W4A16 multiplies in 16 bits
    fp8: float | None = Field(default=None, gt=0)  # None: no FP8 tensor cores, or not sourced


class GpuSpec(_Frozen):
    key: str  # used by --simulate, e.g. "rtx4090", "a100-80g"
    name: str  # as NVML reports it, e.g. "NVIDIA GeForce RTX 4090"
    nvml_names: tuple[str, ...] = ()  # other names NVML reports for the same card
    memory_total_bytes: PositiveInt  # what NVML reports as total, not the marketing figure
    memory_source: str
    compute_capability: tuple[int, int]
    architecture: Architecture
    memory_bandwidth_gb_s: PositiveInt
    fp8: bool  # native FP8 tensor cores (compute capability 8.9+)
    p2p_default: bool  # whether peer-to-peer works out of the box (GeForce cards: no)
    nvlink: bool
    tdp_watts: PositiveInt
    pcie_generation: PositiveInt
    segment: Literal["consumer", "workstation", "datacenter"]
    # Where bandwidth, TDP and the rest came from (memory has its own `memory_source`).
    spec_source: str | None = None
    # Dense tensor TFLOP/s for the compute bound of decode speed; None where no vendor figure
    # was found (the speed model then has only the bandwidth bound for the card).
    dense_tflops: DenseTflops | None = None
    compute_source: str | None = None

    def tflops_for(self, quantization: str) -> float | None:
        """The dense TFLOP/s the weights' GEMMs run at: FP8 checkpoints on FP8 tensor cores
        (W8A8, 8.9+), everything else (BF16/FP16, INT4 AWQ/GPTQ through Marlin's W4A16, FP8
        as W8A16 on Ampere) on the 16-bit ones."""
        if self.dense_tflops is None:
            return None
        if quantization == "fp8" and self.fp8 and self.dense_tflops.fp8 is not None:
            return self.dense_tflops.fp8
        return self.dense_tflops.bf16

    @model_validator(mode="after")
    def _fp8_follows_compute_capability(self) -> GpuSpec:
        if self.fp8 != (self.compute_capability >= (8, 9)):
            msg = f"fp8 must be true exactly for compute capability 8.9 and up, not {self.fp8}"
            raise ValueError(msg)
        return self


CompatRouteName = Literal["minor", "forward"]
# What the GPU catalog calls a card's `segment`: GeForce/TITAN cards are "consumer", and NVIDIA
# gives them no compatibility route for an older driver.
CardClass = Literal["consumer", "workstation", "datacenter"]


class CudaBuild(_Frozen):
    """One CUDA build of an engine image and the drivers that can start it (see images.yaml)."""

    tag: str  # TEI's `{prefix}` stands for the architecture prefix of its tags
    cuda: str  # "13.0", "12.9"
    min_driver: str  # the Linux driver this CUDA needs natively, e.g. "580.65.06"
    # Older driver branches the image admits, and the route that makes them work there.
    older_branches: tuple[int, ...] = ()
    older_branches_by: CompatRouteName | None = None
    source: str


class CompatRoute(_Frozen):
    """How a build runs on a driver older than its CUDA: who may, and what it then needs."""

    name: str
    card_classes: tuple[CardClass, ...]
    environment: dict[str, str] = Field(default_factory=dict)
    source: str


class TeiImages(_Frozen):
    """TEI publishes one image per GPU architecture; the tag must match the card."""

    repository: str
    version: str
    turing: str
    ampere_80: str
    ampere_86: str
    ada_89: str
    hopper: str
    cpu: str
    # Blackwell images (experimental in TEI): 10.x data-centre cards, 12.x GeForce/RTX PRO.
    blackwell_100: str | None = None
    blackwell_120: str | None = None
    gpu_build: CudaBuild  # every GPU tag of a TEI release is one build recipe


class CpuImage(_Frozen):
    """vLLM's CPU image of the same release: one tag per machine architecture."""

    repository: str
    tags: dict[str, str]  # `uname -m` (x86_64, aarch64) -> tag
    source: str


class VllmImage(_Frozen):
    repository: str
    tag: str  # the default build's tag
    version: str  # the vLLM release inside the image; sizing follows this version's rules
    builds: tuple[CudaBuild, ...]  # newest CUDA first: the one chosen when the driver allows
    cpu: CpuImage  # the CPU target's image (`spec.engine.device: cpu`)

    @model_validator(mode="after")
    def _default_is_a_build(self) -> VllmImage:
        if self.tag not in {build.tag for build in self.builds}:
            msg = f"the default tag {self.tag} is not one of the builds"
            raise ValueError(msg)
        return self


class SglangImage(_Frozen):
    """SGLang's server image (`spec.engine.kind: sglang`), pinned like vLLM's."""

    repository: str
    tag: str  # the default build's tag
    version: str  # the SGLang release inside the image; its argv follows this version's flags
    builds: tuple[CudaBuild, ...]  # newest CUDA first
    health_path: str  # SGLang's liveness route
    container_port: int  # where the appliance has it listen inside its container
    source: str

    @model_validator(mode="after")
    def _default_is_a_build(self) -> SglangImage:
        if self.tag not in {build.tag for build in self.builds}:
            msg = f"the default tag {self.tag} is not one of the builds"
            raise ValueError(msg)
        return self


class EngineImages(_Frozen):
    vllm: VllmImage
    sglang: SglangImage
    tei: TeiImages
    compatibility: dict[CompatRouteName, CompatRoute]
    source: str

    @model_validator(mode="after")
    def _routes_exist(self) -> EngineImages:
        for build in (*self.vllm.builds, *self.sglang.builds, self.tei.gpu_build):
            if build.older_branches and build.older_branches_by not in self.compatibility:
                msg = f"{build.tag} names no known compatibility route for its older branches"
                raise ValueError(msg)
        return self


# Evidence against an older vLLM does not count (see engine_evidence.yaml).
_EVIDENCE_MIN_VLLM = (0, 8)


class BenchmarkPoint(_Frozen):
    """One measured shape of an engine benchmark: both engines' figure for the same requests."""

    prompt_tokens: PositiveInt
    output_tokens: PositiveInt
    vllm: Annotated[float, Field(gt=0)]
    sglang: Annotated[float, Field(gt=0)]

    @property
    def sglang_margin(self) -> float:
        """How much more SGLang gave, as a fraction of vLLM's figure (negative: less)."""
        return self.sglang / self.vllm - 1


class EngineEvidence(_Frozen):
    """A public, reproducible benchmark of SGLang against vLLM for one workload shape
    (engine_evidence.yaml; `recommend` picks SGLang only where one of these matches)."""

    key: str
    shape: str  # the workload in words, e.g. "random prompts, no shared prefix"
    workload_kinds: tuple[Literal["chat", "rag", "batch"], ...]  # `recommend --workload` kinds
    hf_architectures: tuple[str, ...]  # config.json `architectures` the benchmark's model has
    model: str  # the model benchmarked (Hub repo)
    gpus: tuple[str, ...]  # catalog GPU keys the benchmark ran on
    gpu_count: PositiveInt
    tensor_parallel_size: PositiveInt
    metric: str  # what `points` measure, e.g. "output tokens/s"
    points: tuple[BenchmarkPoint, ...]
    vllm_version: str
    sglang_version: str
    date: str  # when it ran (YYYY-MM-DD)
    command: str  # how to reproduce it
    source: str  # the repository and paths of the script and the logs the figures come from

    @model_validator(mode="after")
    def _sglang_ahead_everywhere(self) -> EngineEvidence:
        """An entry says SGLang is ahead for its shape: every measured point must show it."""
        if not self.points:
            msg = f"engine evidence {self.key}: no measured points"
            raise ValueError(msg)
        behind = [p for p in self.points if p.sglang_margin <= 0]
        if behind:
            msg = f"engine evidence {self.key}: SGLang is not ahead at {behind[0]}"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _vllm_had_prefix_caching_on(self) -> EngineEvidence:
        """The rule in engine_evidence.yaml: vLLM 0.8.0 or later (V1 by default, prefix
        caching on by default); an older vLLM is not the engine SGLang would replace."""
        found = re.match(r"\s*(\d+)\.(\d+)", self.vllm_version)
        if found is None or (int(found[1]), int(found[2])) < _EVIDENCE_MIN_VLLM:
            msg = (
                f"engine evidence {self.key}: vLLM {self.vllm_version!r} is older than "
                "0.8.0, before prefix caching was on by default; it does not count"
            )
            raise ValueError(msg)
        return self

    @property
    def prompt_tokens_range(self) -> tuple[int, int]:
        """The prompt lengths measured: the entry says nothing outside them."""
        lengths = [p.prompt_tokens for p in self.points]
        return min(lengths), max(lengths)

    @property
    def smallest_margin(self) -> BenchmarkPoint:
        """The point where SGLang's lead is smallest: the figure a why may quote."""
        return min(self.points, key=lambda p: p.sglang_margin)


class Catalog(_Frozen):
    models: tuple[ChatModel, ...]
    embeddings: tuple[EmbeddingModel, ...]
    gpus: tuple[GpuSpec, ...]
    images: EngineImages
    engine_evidence: tuple[EngineEvidence, ...] = ()

    @model_validator(mode="after")
    def _lookups_are_unambiguous(self) -> Catalog:
        """Every lookup (`model`, `model_by_repo`, `embedding`, `gpu`, `gpu_by_name`) returns the
        first match, so a duplicate would silently shadow an entry."""
        keys = {
            "model key": [m.key for m in self.models],
            "variant repo": [v.repo.lower() for m in self.models for v in m.variants],
            "embedding key": [e.key.lower() for e in self.embeddings],
            "embedding repo": [e.repo.lower() for e in self.embeddings],
            "GPU key": [g.key for g in self.gpus],
            "GPU NVML name": [n for g in self.gpus for n in (g.name, *g.nvml_names)],
        }
        for what, values in keys.items():
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    msg = f"duplicate {what} in the catalog: {value!r}"
                    raise ValueError(msg)
                seen.add(value)
        return self

    def model(self, key: str) -> ChatModel | None:
        return next((m for m in self.models if m.key == key), None)

    def model_by_repo(self, repo: str) -> tuple[ChatModel, ModelVariant] | None:
        """The model and variant a Hugging Face repo id belongs to (case-insensitive)."""
        wanted = repo.lower()
        for model in self.models:
            for variant in model.variants:
                if variant.repo.lower() == wanted:
                    return model, variant
        return None

    def embedding(self, key_or_repo: str) -> EmbeddingModel | None:
        wanted = key_or_repo.lower()
        return next((e for e in self.embeddings if wanted in (e.key.lower(), e.repo.lower())), None)

    def gpu(self, key: str) -> GpuSpec | None:
        return next((g for g in self.gpus if g.key == key), None)

    def gpu_by_name(self, nvml_name: str) -> GpuSpec | None:
        """The catalog entry for a name NVML reported, or None for an unknown card."""
        for gpu in self.gpus:
            if nvml_name == gpu.name or nvml_name in gpu.nvml_names:
                return gpu
        return None

    def tei_tag(self, compute_capability: tuple[int, int] | None) -> str:
        """The TEI image tag for a compute capability; None means no GPU (the CPU image).

        TEI compiles its kernels per architecture, so an image only runs on the capabilities it
        was built for: Hopper's image does not serve Blackwell. A card TEI does not support
        (below 7.5, or an architecture without an image) gets the CPU image.
        """
        tei = self.images.tei
        tag: str | None
        match compute_capability:
            case None:
                tag = tei.cpu
            case (7, 5):
                tag = tei.turing
            case (8, 0):
                tag = tei.ampere_80
            case (8, 6) | (8, 7):
                tag = tei.ampere_86
            case (8, 9):
                tag = tei.ada_89
            case (9, _):
                tag = tei.hopper
            case (10, _):
                tag = tei.blackwell_100
            case (12, _):
                tag = tei.blackwell_120
            case _:
                tag = None
        return f"{tei.repository}:{tag or tei.cpu}"


def _read(name: str) -> object:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    # libyaml's safe loader when PyYAML was built with it: the catalog is read on every
    # command that sizes or plans, and the pure-Python parser takes ~0.1 s for it.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


@functools.cache
def load_catalog() -> Catalog:
    """The catalog shipped with this version of the appliance (parsed once per process)."""
    return Catalog.model_validate(
        {
            "models": _read("models.yaml"),
            "embeddings": _read("embeddings.yaml"),
            "gpus": _read("gpus.yaml"),
            "images": _read("images.yaml"),
            "engine_evidence": _read("engine_evidence.yaml"),
        }
    )
