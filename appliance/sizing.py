"""How much GPU memory vLLM gives the KV cache, computed the way vLLM computes it at start-up.

Pure: no IO, no hardware, no Docker. Every input is a plain number or the catalog's
`ModelArchitecture`, so the same code sizes a catalog model and a local `config.json`.

What vLLM does at start-up (read from the source of the pinned release, 0.32; file names are
vLLM's, line numbers drift):

1. `v1/worker/utils.py::request_memory`: requested = ceil(total x gpu_memory_utilization).
   The worker snapshots free memory *after* creating its CUDA context and NCCL communicators;
   if that free memory is below `requested`, it refuses to start ("Free memory on device ... is
   less than desired GPU memory utilization"). Memory held by other processes (TEI on the same
   card) therefore does not shrink the KV cache, it makes start-up fail once it eats into the
   `requested` share. Before v0.6.4 vLLM instead measured `total - free` after profiling, so
   other processes' memory came straight out of the KV cache; `vllm_version` selects that. The
   V0 engine (`vllm/worker/worker.py`, v0.6.4 to v0.10) has no such check: it profiles against
   its own baseline snapshot, and under tensor parallelism the executor keeps the smallest
   block count of all workers - the driver's, since only the driver runs the sampler.
2. `gpu_worker.py::determine_available_memory` runs `profile_run` (a forward pass over
   `max_num_batched_tokens` dummy tokens, then the sampler over `max_num_seqs` rows) inside
   `utils/mem_utils.py::memory_profiling`: non_kv = (free memory consumed since the snapshot:
   weights + non-torch growth) + (torch peak - torch allocated after the pass).
3. From v0.20.0 the estimated CUDA-graph pool (`profile_cudagraph_memory`) is subtracted too
   (`VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` defaults to 1 in the v0.20.0 wheel and to 0 in
   v0.19.1; vLLM's own comment and log line say "default since v0.21.0").
4. `v1/core/kv_cache_utils.py`: the KV cache is cut into blocks of 16 tokens per layer group
   (MLA models, `MLAAttentionSpec`: one kv_lora_rank + qk_rope_head_dim latent per token and
   layer instead of per-head K and V, replicated on every TP rank; FlashMLA's 64-token blocks
   on Hopper with an fp8 cache only change the rounding);
   num_blocks = available // bytes_per_block. Sliding-window and chunked-local layers only
   need a window's worth of blocks per request (`SlidingWindowSpec.max_memory_usage_bytes`),
   which the hybrid allocator (V1 from v0.10) turns into more requests per pool; the logged
   "GPU KV cache size" is max_concurrency x max_model_len. If one max_model_len request does
   not fit (one block is held back as the null block), vLLM refuses to start and suggests the
   largest max_model_len that would fit (`estimate_max_model_len`, a binary search).

The activation peak cannot be read from source alone: it is what the caching allocator saw.
`_activation_bytes` models it as the largest of tokens x (MLP and hidden-state tensors), the
sampler's [max_num_seqs x vocab] buffers, and, for multimodal checkpoints, the vision tower over
the profile's dummy images (`_vision_items`), with constants fitted on the real start-up logs in
`bench/data/vllm_memory_logs.csv` (see `bench/sizing_accuracy.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from appliance.catalog import ChatModel, ModelArchitecture, ModelVariant
from appliance.vocabulary import (
    FindingSeverity,
    KvCacheDtype,
    Quantization,
    SleepLevel,
    kv_cache_dtype_bytes,
)

GIB = 1 << 30
GB = 1_000_000_000
BLOCK_SIZE = 16
PINNED_VLLM_VERSION = "0.32.0"

EntryPoint = Literal["serve", "offline"]

# --- Calibrated constants (fitted on bench/data/vllm_memory_logs.csv; see module docstring) ---
# Peak activation per scheduled token, in units of the model dtype: the MLP's gate_up output
# (2 x intermediate), the activated half (1 x intermediate) and the down-projection input
# share the peak (~3.5 x intermediate / TP), plus residual and attention tensors (~1.15 x
# hidden). Fitted on the V0 logs that print the activation peak: Llama-3.1-8B at 20,000 and
# 29,000 tokens (RTX 3090, v0.6.4) and Qwen2.5-1.5B at 32,768 tokens (T4, v0.7.2).
_MLP_ACTIVATION_FACTOR = 3.5
_HIDDEN_ACTIVATION_FACTOR = 1.15
# The sampler's dummy run holds fp32 logits [max_num_seqs x vocab] (FlashInfer's fused top-k /
# top-p kernel adds little: 4 bytes per logit fits the v0.10.1 and v0.27.1 logs). Without
# FlashInfer the PyTorch path sorts the logits (fp32 values + int64 indices + softmax + masks):
# ~32 bytes per logit, fitted on the v0.10.1 log of a box without FlashInfer. vLLM v0.21 also
# warms the PyTorch path during the profile; the v0.27.1 log shows no such peak, so it is not
# modelled.
_SAMPLER_BYTES_PER_LOGIT = 4
_SAMPLER_BYTES_PER_LOGIT_NATIVE = 32
# The Triton top-k/top-p kernel (v0.17 to v0.20 by default) masks the fp32 logits in place, so
# the peak is the tensors the sampler keeps at once, not a fit: the bf16 logits of
# `compute_logits` (2 bytes), their fp32 copy (4), the softmax probabilities (4) and
# `random_sample`'s exponential noise (4).
_SAMPLER_BYTES_PER_LOGIT_TRITON = 2 + 4 + 4 + 4
# V0 (`vllm/worker/model_runner.py`, v0.6.5 to v0.10): `profile_run` samples every dummy
# sequence with SamplingParams(top_p=0.99, top_k=vocab_size - 1), i.e. through the PyTorch
# top-k/top-p path (`_apply_top_k_top_p`: sorted fp32 logits + int64 indices, softmax, cumsum,
# the int64 inverse permutation, the gathered logits, then the sampler's probs and logprobs) on
# [max_num_seqs x vocab] logits. Only the driver worker samples ("Only perform sampling in the
# driver worker" in `ModelRunner.execute_model`; the logits are gathered to rank 0 first), and
# the executor keeps the *minimum* block count over all workers
# (`determine_num_available_blocks`: "we take the minimum number of blocks across all
# workers"), so under TP the driver's larger peak sets the KV cache even though the other ranks
# log a much smaller activation peak. 39 bytes per logit fits the two fitted V0 logs whose peak
# exceeds the forward pass: Qwen2.5-7B on an RTX 4060 (v0.7.3: 1.42 GiB at 256 x 152,064
# logits) and Llama-3-8B on an H100 (v0.6.5: 1.26 GiB at 256 x 128,256). The v0.6.4 logs of
# vllm#10517 show no such peak (0.06 GiB over the weights at 35,000 tokens), so it starts with
# the v0.6.5 profiling overhaul (vllm#10511).
_SAMPLER_BYTES_PER_LOGIT_V0 = 39
# Non-torch growth after the start-up snapshot (cuBLAS/cuDNN workspaces, attention backend
# buffers), and the extra for NCCL / custom all-reduce buffers under tensor parallelism (fitted
# on the V1 TP 2 logs). V0 from v0.6.5 has the same cause: `Worker.init_device`
# (`vllm/worker/worker.py`, v0.6.5 to v0.10) takes `baseline_snapshot = MemorySnapshot()` before
# `init_worker_distributed_environment`, so the NCCL communicators and the custom all-reduce
# buffers (`vllm/distributed/device_communicators/custom_all_reduce.py`: an 8 MiB meta + data
# buffer per rank, IPC-shared) count as non-torch memory; the same TP extra is added there.
_NON_TORCH_BYTES = int(0.28 * GIB)
_NON_TORCH_TP_EXTRA_BYTES = int(0.12 * GIB)
# Hopper under tensor parallelism: NCCL's first collectives on NVLink/NVSwitch (NVLS) leave
# ~1.85 GiB per GPU of non-torch memory that Ampere and Ada boxes do not show. Logged non-torch
# at TP 2 / TP 4 minus TP 1 on H100 80GB: 1.79 GiB (v0.6.5, Llama-3-8B, vllm#10511), 1.85 and
# 1.96 GiB (v0.19.0, Llama-3.3-70B FP8), 1.83 and 1.89 GiB (v0.19.0, Qwen2.5-7B). A PCIe
# H100 without NVSwitch may hold less: the estimate errs on the safe side there.
_NCCL_HOPPER_TP_BYTES = int(1.85 * GIB)
# V0 logged it directly: 0.35 GiB before the v0.6.5 profiling overhaul (RTX 3090), then
# 0.01-0.08 GiB on one GPU (T4, RTX 4060, RTX 4090 D logs).
_NON_TORCH_V0_OLD_BYTES = int(0.35 * GIB)
_NON_TORCH_V0_BYTES = int(0.05 * GIB)
# CUDA context + NCCL communicators created before the start-up snapshot: outside vLLM's
# budget, but they reduce the free memory the snapshot sees.
_CUDA_CONTEXT_BYTES = int(0.45 * GIB)
# `profile_cudagraph_memory`: the first capture holds the activations of the largest capture
# size; every further graph costs a few MiB of pool memory (vLLM floors it at 1 MiB).
_CUDA_GRAPH_BYTES_PER_GRAPH = 4 << 20
_CUDA_GRAPH_MAX_CAPTURE_SIZE = 512


def parse_version(version: str) -> tuple[int, int, int]:
    """`"0.32.0"`, `"v0.10.1.1"`, `"0.11.0rc2.dev5"` -> (major, minor, patch)."""
    text = version.strip().lstrip("vV")
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


V1Sampler = Literal["flashinfer", "sort", "triton"]


def _v1_sampler(v: tuple[int, int, int]) -> V1Sampler:
    """The top-k/top-p path of V1's `TopKTopPSampler` by default, read from each release's
    `v1/sample/ops/topk_topp_sampler.py` and `envs.py` (PyPI wheels):

    - v0.8.x: FlashInfer >= 0.2.3 "is not backward compatible", so it is switched off: the
      PyTorch sort path;
    - v0.9 to v0.11: FlashInfer unless VLLM_USE_FLASHINFER_SAMPLER=0 (the image ships it);
    - v0.12 to v0.20: FlashInfer only on opt-in (VLLM_USE_FLASHINFER_SAMPLER=1); the native path
      sorts the logits until v0.16, and from v0.17 runs a Triton kernel in place for 8 or more
      rows (`apply_top_k_top_p`: `HAS_TRITON and logits.shape[0] >= 8`);
    - v0.21 on: FlashInfer by default again (the env var defaults to True).
    """
    if v < (0, 9, 0) or (0, 12, 0) <= v < (0, 17, 0):
        return "sort"
    if v < (0, 12, 0) or v >= (0, 21, 0):
        return "flashinfer"
    return "triton"


@dataclass(frozen=True)
class VllmRules:
    """The version-dependent behaviours that move the memory budget.

    Each flag names the release it was checked against (vLLM wheels from PyPI: the engine and
    config sources are identical in the CUDA and CPU builds).
    """

    version: tuple[int, int, int]
    v1_engine: bool  # V1 is the default engine from v0.8.0; V0 was removed in v0.11
    other_processes_shrink_kv: bool  # before v0.6.4 (and V1 before v0.9.2): total - free
    cuda_graphs_in_budget: bool  # v0.20.0: VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1
    hybrid_kv_allocator: bool  # v0.10: sliding-window / chunked layers hold a window only
    h100_batch_defaults: bool  # v0.9: >=70 GiB non-A100 cards default to 8192/16384 tokens
    b200_batch_defaults: bool  # >=160 GiB cards default to 16384 tokens (present in v0.32)
    null_block_reserved: bool  # the start-up check plans against num_blocks - 1 (v0.32)
    v0_driver_sampler_peak: bool  # V0 from v0.6.5: the driver's profile samples top-k/top-p
    v1_sampler: V1Sampler  # which top-k/top-p path the profile's dummy sampler run takes
    v1_context_is_non_torch: bool  # V1 before v0.9.2: its own CUDA context counted too
    default_gpu_memory_utilization: float  # CacheConfig's default: 0.92 from v0.20, 0.9 before

    @classmethod
    def for_version(
        cls, version: str = PINNED_VLLM_VERSION, *, v1_engine: bool | None = None
    ) -> VllmRules:
        """Rules of a release; `v1_engine` overrides the default engine (VLLM_USE_V1=0 or a
        feature that forced V0 before v0.11)."""
        v = parse_version(version)
        v1 = (v >= (0, 8, 0)) if v1_engine is None else v1_engine
        return cls(
            version=v,
            v1_engine=v1,
            # V1 before v0.9.2 also counted every byte in use on the card that its own torch
            # allocator did not hold as non-torch memory, other processes included (fixed by
            # vllm#19312, "[V1] Reuse V0's memory_profiling util for gpu worker memory
            # profiling"): there too other processes came out of the KV cache.
            other_processes_shrink_kv=v < (0, 6, 4) or (v1 and v < (0, 9, 2)),
            cuda_graphs_in_budget=v >= (0, 20, 0),
            hybrid_kv_allocator=v >= (0, 10, 0),
            h100_batch_defaults=v >= (0, 9, 0),
            b200_batch_defaults=v >= (0, 22, 0),
            null_block_reserved=v >= (0, 22, 0),
            v0_driver_sampler_peak=v >= (0, 6, 5),
            v1_sampler=_v1_sampler(v),
            # The same V1 releases measured non-torch memory as (total - free) - torch
            # allocated after the profile (`Worker.determine_available_memory`, v0.8.4): the
            # worker's own CUDA context came out of the KV cache as well.
            v1_context_is_non_torch=v1 and v < (0, 9, 2),
            default_gpu_memory_utilization=0.92 if v >= (0, 20, 0) else 0.9,
        )


# The pinned release's default (`CacheConfig.gpu_memory_utilization` in vllm/config/cache.py:
# 0.92 from v0.20): the one default a profile, `estimate` and `recommend` all start from.
DEFAULT_GPU_MEMORY_UTILIZATION = VllmRules.for_version().default_gpu_memory_utilization


@dataclass(frozen=True, kw_only=True)
class EngineFlags:
    """The vLLM flags that change the memory budget, with vLLM's own defaults (None = vLLM's
    default for this GPU and entry point)."""

    gpu_memory_utilization: float | None = None  # None: the release's default (VllmRules)
    max_model_len: int | None = None  # None: the model's own limit (max_model_len_limit)
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: KvCacheDtype = "auto"
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None  # V0 only; V1 always chunks
    entry_point: EntryPoint = "serve"  # `vllm serve` vs the offline `LLM` class
    block_size: int = BLOCK_SIZE
    # The image ships FlashInfer; without it the PyTorch sampler's sort peaks far higher.
    flashinfer_sampler: bool = True
    # Prefix caching (vLLM V1's default, and the profile's): with Gated DeltaNet layers it puts
    # their state in "align" mode, two state blocks per request instead of one.
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        utilization = self.gpu_memory_utilization
        if utilization is not None and not 0.0 < utilization <= 1.0:
            msg = f"gpu_memory_utilization must be in (0, 1], not {self.gpu_memory_utilization}"
            raise ValueError(msg)
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                msg = f"{name} must be positive, not {value}"
                raise ValueError(msg)


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory split at vLLM start-up. GiB figures are rounded for display; the
    token and block counts are exact for the inputs given. `asdict()` / `to_json_dict()`
    give plain JSON."""

    vllm_version: str
    tensor_parallel_size: int
    gpu_memory_gib: float
    gpu_memory_utilization: float  # as given, or the release's default
    requested_gib: float  # total x gpu_memory_utilization
    weights_gib: float
    activation_gib: float
    non_torch_gib: float
    cuda_graph_gib: float  # the estimate vLLM subtracts (0 when not counted in this version)
    other_processes_gib: float
    kv_cache_gib: float  # "Available KV cache memory"
    kv_bytes_per_token: int  # per GPU, summed over layers (full-attention equivalent)
    num_gpu_blocks: int
    kv_cache_tokens: int  # "GPU KV cache size: N tokens"
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_concurrency: float  # requests of max_model_len tokens held at once
    fits: bool
    reason: str
    largest_fitting_max_model_len: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to size: its architecture, its checkpoint's bytes, and where it came from.

    `model`/`variant` are set for catalog models (so the recommender's tiers and other variants
    are at hand); `quantization` is None when a local checkpoint's format is not one the
    appliance models (its rules are then skipped).
    """

    architecture: ModelArchitecture
    weight_bytes: int
    label: str
    quantization: Quantization | None
    source: str  # "catalog", "catalog-repo", "hub" or "local"
    model: ChatModel | None = None
    variant: ModelVariant | None = None
    params_billion: float | None = None
    active_params_billion: float | None = None
    # safetensors dtype → parameter count, where the headers were read (a Hub repo)
    parameters_by_dtype: dict[str, int] | None = None
    repo: str | None = None  # the Hub repo read (source "hub")
    sha: str | None = None
    linear_parameters: int = 0  # what an FP8/INT4 quantisation would shrink (weights.hub)

    @classmethod
    def of_variant(
        cls, model: ChatModel, variant: ModelVariant, source: str = "catalog"
    ) -> ResolvedModel:
        """A catalog model's checkpoint, as the catalog sizes it."""
        return cls(
            architecture=model.architecture,
            weight_bytes=variant.weight_bytes,
            label=f"{model.key} ({variant.quantization}, {variant.repo})",
            quantization=variant.quantization,
            source=source,
            model=model,
            variant=variant,
            params_billion=model.params_billion,
            active_params_billion=model.active_params_billion,
        )


# ---------------------------------------------------------------------------------------------
# Building blocks


def kv_dtype_bytes(kv_cache_dtype: KvCacheDtype) -> int:
    """bf16/fp16 KV cache: 2 bytes per element; fp8 (e4m3/e5m2): 1."""
    return kv_cache_dtype_bytes(kv_cache_dtype)


def kv_heads_per_gpu(architecture: ModelArchitecture, tensor_parallel_size: int) -> int:
    """KV heads are split across TP ranks; with more ranks than heads each rank keeps a
    replica of one head (vLLM: max(1, num_kv_heads // tp)). MLA caches one latent "head"
    that every rank keeps whole."""
    if architecture.uses_mla:
        return 1
    return max(1, architecture.num_key_value_heads // tensor_parallel_size)


def kv_page_bytes_per_layer(
    architecture: ModelArchitecture,
    tensor_parallel_size: int,
    kv_cache_dtype: KvCacheDtype = "auto",
    block_size: int = BLOCK_SIZE,
) -> int:
    """One block of one layer: 2 (K and V) x block_size x heads x head_dim x dtype bytes.

    MLA (`MLAAttentionSpec`): no separate K and V, one latent of kv_lora_rank +
    qk_rope_head_dim per token, the same on every TP rank."""
    latent = architecture.mla_latent_size
    if latent is not None:
        return block_size * latent * kv_dtype_bytes(kv_cache_dtype)
    return (
        2
        * block_size
        * kv_heads_per_gpu(architecture, tensor_parallel_size)
        * architecture.head_dim
        * kv_dtype_bytes(kv_cache_dtype)
    )


def kv_bytes_per_token(
    architecture: ModelArchitecture,
    tensor_parallel_size: int = 1,
    kv_cache_dtype: KvCacheDtype = "auto",
) -> int:
    """Per GPU, all attention layers with a cache of their own, as if every one kept full
    attention (Gated DeltaNet layers keep no per-token KV, their fixed state is in
    `ModelArchitecture.gdn_state_bytes`; Gemma 4's KV-shared tail reuses earlier layers')."""
    linear = set(architecture.linear_attention_layers or ())
    return sum(
        _layer_token_bytes(architecture, layer, tensor_parallel_size, kv_cache_dtype)
        for layer in range(architecture.cached_layer_count)
        if layer not in linear
    )


def _layer_token_bytes(
    architecture: ModelArchitecture,
    layer: int,
    tensor_parallel_size: int,
    kv_cache_dtype: KvCacheDtype,
) -> int:
    """One token of one layer's cache per GPU: K and V of its own head count and width
    (Gemma 4's global layers differ from its sliding ones), or MLA's latent."""
    if architecture.global_head_dim is None or architecture.uses_mla:
        return kv_page_bytes_per_layer(architecture, tensor_parallel_size, kv_cache_dtype, 1)
    heads, head_dim = architecture.layer_kv_shape(layer)
    return 2 * max(1, heads // tensor_parallel_size) * head_dim * kv_dtype_bytes(kv_cache_dtype)


def hybrid_mamba_block_size(
    architecture: ModelArchitecture,
    tensor_parallel_size: int,
    kv_cache_dtype: KvCacheDtype = "auto",
    block_size: int = BLOCK_SIZE,
) -> int:
    """The attention block size vLLM sets for a model with Gated DeltaNet layers
    (`HybridAttentionMambaModelConfig.verify_and_update_config`, vllm/model_executor/models/
    config.py): the smallest multiple of 16 tokens whose attention page holds one layer's
    state, `16 x cdiv(mamba_page, 16 x attention_page_per_token)`; the state page is then padded
    to the attention page. Qwen3-Next at TP 2 gets 544 tokens, the Qwen3.5/3.6-27B shape at
    TP 1 784 (as vLLM 0.30 logs them). Without linear layers: `block_size` unchanged."""
    state = architecture.gdn_state_bytes(tensor_parallel_size)
    if not state:
        return block_size
    per_token = kv_page_bytes_per_layer(architecture, tensor_parallel_size, kv_cache_dtype, 1)
    needed = 16 * math.ceil(state / (16 * per_token))
    return max(block_size, needed)


@dataclass(frozen=True)
class _LayerGroup:
    kind: Literal["full", "sliding", "chunked", "mamba"]
    layers: int  # layers in the group, padding included
    window: int | None = None
    # Tokens one block of this group holds when its layers' pages are narrower than the widest
    # kind's and vLLM grows their block size to match (`unify_kv_cache_spec_page_size`).
    tokens_per_block: int | None = None


def _local_layer_indices(architecture: ModelArchitecture) -> tuple[set[int], int | None, str]:
    """Which layers attend locally, the window, and how ("sliding" or "chunked")."""
    n = architecture.num_hidden_layers
    if architecture.attention_chunk_size is not None:
        # Llama 4: chunked local attention except on the global (NoPE) layers, every 4th
        # layer when the config does not list them.
        global_layers = architecture.global_attention_layers
        if global_layers is None:
            global_layers = tuple(i for i in range(n) if (i + 1) % 4 == 0)
        local = set(range(n)) - set(global_layers)
        return local, architecture.attention_chunk_size, "chunked"
    if architecture.sliding_window is not None:
        if architecture.sliding_window_layers is None:
            return set(range(n)), architecture.sliding_window, "sliding"
        return set(architecture.sliding_window_layers), architecture.sliding_window, "sliding"
    return set(), None, "sliding"


def _layer_groups(architecture: ModelArchitecture, hybrid: bool) -> list[_LayerGroup]:
    """vLLM's KV cache groups (`_get_kv_cache_groups_uniform_page_size`): layers of one kind
    are split into groups of equal size (the smaller kind's count, or the larger one's when
    they are within 1.5x), the last group padded. Without the hybrid allocator every layer is
    one full-attention group."""
    n = architecture.cached_layer_count
    linear = architecture.linear_attention_layers
    if linear:
        # Gated DeltaNet layers are their own spec (`MambaSpec`) whatever the allocator; the
        # hybrid allocator is the only one that serves them (vLLM refuses them without it).
        return _uniform_groups({"full": n - len(linear), "mamba": len(linear)}, None)
    local, window, kind = _local_layer_indices(architecture)
    local = {layer for layer in local if layer < n}  # the KV-shared tail holds no cache
    if not local or not hybrid:
        return [_LayerGroup("full", n)]
    if len(local) == n:
        return [_LayerGroup(kind, n, window)]  # type: ignore[arg-type]
    return _uniform_groups({"full": n - len(local), kind: len(local)}, window)


def _uniform_groups(counts: dict[str, int], window: int | None) -> list[_LayerGroup]:
    """Groups of one size over layers of each kind (`_get_kv_cache_groups_uniform_page_size`)."""
    counts = {kind: count for kind, count in counts.items() if count}
    smallest, largest = min(counts.values()), max(counts.values())
    group_size = largest if largest < smallest * 1.5 else smallest
    groups: list[_LayerGroup] = []
    for group_kind, count in counts.items():
        for _ in range(math.ceil(count / group_size)):
            groups.append(
                _LayerGroup(group_kind, group_size, None if group_kind == "full" else window)  # type: ignore[arg-type]
            )
    return groups


def _blocks_per_request(
    group: _LayerGroup,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int,
    mamba_blocks: int = 1,
) -> int:
    """`max_memory_usage_bytes // page_size` of the group's spec, as in kv_cache_interface.
    `MambaSpec`: one state block per request ("none" mode), two with prefix caching ("align")."""
    if group.kind == "mamba":
        return mamba_blocks
    block_size = group.tokens_per_block or block_size
    if group.kind == "full" or group.window is None:
        return math.ceil(max_model_len / block_size)
    if group.kind == "sliding":
        tokens = min(group.window - 1 + max_num_batched_tokens, max_model_len)
        return math.ceil(tokens / block_size) + 1
    tokens = min(group.window + max_num_batched_tokens, max_model_len)
    return math.ceil(tokens / block_size)


def kv_cache_capacity(
    architecture: ModelArchitecture,
    available_bytes: int,
    max_model_len: int,
    *,
    tensor_parallel_size: int = 1,
    flags: EngineFlags | None = None,
    max_num_batched_tokens: int = 8192,
    vllm_version: str = PINNED_VLLM_VERSION,
) -> tuple[int, float]:
    """("GPU KV cache size" tokens, "Maximum concurrency") vLLM V1 logs for a KV budget of
    `available_bytes` per GPU ("Available KV cache memory"): the paging half of
    `estimate_memory`, without the activation and non-torch model in front of it."""
    flags = flags or EngineFlags()
    rules = VllmRules.for_version(vllm_version)
    layout = _kv_layout(architecture, tensor_parallel_size, flags, rules, max_num_batched_tokens)
    _, concurrency, _ = layout.capacity(available_bytes, max_model_len)
    return int(concurrency * max_model_len), concurrency


def requests_held(
    architecture: ModelArchitecture,
    estimate: MemoryEstimate,
    request_tokens: int,
    *,
    flags: EngineFlags | None = None,
) -> float:
    """Requests of `request_tokens` the estimate's KV cache holds at once, paged as vLLM pages
    them: for hybrid models (sliding-window, chunked or Gated DeltaNet layers) this is not
    kv_cache_tokens / request_tokens, since only some groups grow with the request."""
    if not estimate.fits:
        return 0.0
    _, concurrency = kv_cache_capacity(
        architecture,
        int(estimate.kv_cache_gib * GIB),
        min(request_tokens, estimate.max_model_len),
        tensor_parallel_size=estimate.tensor_parallel_size,
        flags=flags,
        max_num_batched_tokens=estimate.max_num_batched_tokens,
        vllm_version=estimate.vllm_version,
    )
    return concurrency


def default_batch_limits(
    gpu_memory_bytes: int,
    *,
    gpu_name: str = "",
    entry_point: EntryPoint = "serve",
    rules: VllmRules | None = None,
) -> tuple[int, int]:
    """vLLM's defaults for (max_num_batched_tokens, max_num_seqs) on this card
    (`EngineArgs.get_batch_defaults`; V1 only). A100s keep the small defaults on purpose
    (vLLM PR #17885)."""
    rules = rules or VllmRules.for_version()
    serve = entry_point == "serve"
    if rules.b200_batch_defaults and gpu_memory_bytes >= 160 * GIB:
        return 16384, 1024
    if (
        rules.h100_batch_defaults
        and gpu_memory_bytes >= 70 * GIB
        and "a100" not in gpu_name.lower()
    ):
        return (8192 if serve else 16384), 1024
    return (2048 if serve else 8192), 256


def _scheduler_limits(
    flags: EngineFlags,
    max_model_len: int,
    gpu_memory_bytes: int,
    gpu_name: str,
    rules: VllmRules,
) -> tuple[int, int, list[str]]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM resolves them."""
    notes: list[str] = []
    if rules.v1_engine:
        default_tokens, default_seqs = default_batch_limits(
            gpu_memory_bytes, gpu_name=gpu_name, entry_point=flags.entry_point, rules=rules
        )
        max_num_seqs = flags.max_num_seqs or default_seqs
        if flags.max_num_batched_tokens is not None:
            return flags.max_num_batched_tokens, max_num_seqs, notes
        tokens = min(default_tokens, max_num_seqs * max_model_len)
        return tokens, min(max_num_seqs, tokens), notes
    # V0: without chunked prefill one prompt of max_model_len must fit in a batch; the API
    # server turned chunked prefill on by itself above 32K tokens (512-token chunks).
    max_num_seqs = flags.max_num_seqs or 256
    chunked = flags.enable_chunked_prefill
    if chunked is None:
        chunked = flags.entry_point == "serve" and max_model_len > 32768
        if chunked:
            notes.append("V0 enables chunked prefill by itself above 32K tokens")
    if flags.max_num_batched_tokens is not None:
        return flags.max_num_batched_tokens, max_num_seqs, notes
    return (512 if chunked else max(max_model_len, 2048)), max_num_seqs, notes


def _mlp_width(architecture: ModelArchitecture) -> int:
    """The MLP width one token's activations pass through (MoE: the routed experts' share)."""
    if architecture.num_experts is not None and architecture.moe_intermediate_size is not None:
        routed = architecture.moe_intermediate_size * (architecture.num_experts_per_token or 1)
        shared = architecture.moe_intermediate_size * (architecture.num_shared_experts or 0)
        return max(routed + shared, architecture.intermediate_size if shared == 0 else 0)
    return architecture.intermediate_size


def _per_token_activation_bytes(
    architecture: ModelArchitecture, tensor_parallel_size: int, dtype_bytes: int
) -> float:
    mlp = _MLP_ACTIVATION_FACTOR * _mlp_width(architecture) / tensor_parallel_size
    hidden = _HIDDEN_ACTIVATION_FACTOR * architecture.hidden_size
    return dtype_bytes * (mlp + hidden)


def _vision_items(
    architecture: ModelArchitecture,
    *,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    rules: VllmRules,
) -> int:
    """Dummy images the profile run pushes through the vision tower (0 for text models)."""
    per_item = architecture.mm_tokens_per_item
    if per_item is None:
        return 0
    if not rules.v1_engine:
        # V0 `ModelRunner.profile_run`: max_num_seqs = min(max_num_seqs,
        # max_num_batched_tokens // max_mm_tokens) dummy sequences, one image each.
        return max(1, min(max_num_seqs, max_num_batched_tokens // per_item))
    # V1 `MultiModalBudget._get_max_items` (v0.32): as many items as the encoder budget
    # (max_num_batched_tokens, at least one item) holds, capped by what the decoder could take.
    encoder_items = max(max_num_batched_tokens, per_item) // per_item
    decoder_items = max_num_seqs * max(1, max_model_len // per_item)
    return max(1, min(encoder_items, decoder_items))


def _activation_bytes(
    architecture: ModelArchitecture,
    *,
    tensor_parallel_size: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    rules: VllmRules,
    flashinfer_sampler: bool,
    dtype_bytes: int = 2,
) -> int:
    """Peak torch allocation during `profile_run` (calibrated, see module docstring)."""
    forward = max_num_batched_tokens * _per_token_activation_bytes(
        architecture, tensor_parallel_size, dtype_bytes
    )
    rows = min(max_num_seqs, max_num_batched_tokens)
    items = _vision_items(
        architecture,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        rules=rules,
    )
    encoder = items * _vision_activation_bytes(architecture, tensor_parallel_size, dtype_bytes)
    if not rules.v1_engine:
        if items:
            rows = items  # V0 profiles multimodal models with one sequence per image
        if not rules.v0_driver_sampler_peak:
            return int(max(forward, encoder))
        # The driver worker's peak (see _SAMPLER_BYTES_PER_LOGIT_V0): it sets the KV cache.
        per_logit = _SAMPLER_BYTES_PER_LOGIT_V0
    else:
        path = rules.v1_sampler
        if path == "flashinfer" and not flashinfer_sampler:
            path = "sort"  # a wheel install without FlashInfer falls back to PyTorch
        if path == "triton" and rows < 8:
            path = "sort"
        per_logit = {
            "flashinfer": _SAMPLER_BYTES_PER_LOGIT,
            "sort": _SAMPLER_BYTES_PER_LOGIT_NATIVE,
            "triton": _SAMPLER_BYTES_PER_LOGIT_TRITON,
        }[path]
    sampler = rows * architecture.vocab_size * per_logit
    # The vision tower runs first and keeps only its outputs; the sampler runs after the forward
    # pass has freed its activations: the peak is the largest of the three, the hidden states
    # staying alive across the last two.
    kept = max_num_batched_tokens * architecture.hidden_size * dtype_bytes
    return int(max(forward, sampler + kept, encoder))


def _vision_activation_bytes(
    architecture: ModelArchitecture, tensor_parallel_size: int, dtype_bytes: int
) -> float:
    """One dummy image through the vision tower: its patch tokens times the same per-token
    activation model as the language layers (MLP sharded by TP as vLLM shards the tower)."""
    if architecture.vision_patches_per_item is None:
        return 0.0
    width = architecture.vision_intermediate_size or 0
    hidden = architecture.vision_hidden_size or 0
    per_token = dtype_bytes * (
        _MLP_ACTIVATION_FACTOR * width / tensor_parallel_size + _HIDDEN_ACTIVATION_FACTOR * hidden
    )
    return architecture.vision_patches_per_item * per_token


def _cuda_graph_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default capture sizes: 1, 2, 4, then steps of 8 up to 256 and of 16 up to the
    cap of min(2 x max_num_seqs, 512)."""
    cap = min(2 * max_num_seqs, _CUDA_GRAPH_MAX_CAPTURE_SIZE)
    sizes = [s for s in (1, 2, 4) if s <= cap]
    sizes += list(range(8, min(cap, 256) + 1, 8))
    sizes += list(range(272, cap + 1, 16))
    return sizes


def _cuda_graph_bytes(
    architecture: ModelArchitecture,
    tensor_parallel_size: int,
    max_num_seqs: int,
    dtype_bytes: int = 2,
) -> int:
    """`profile_cudagraph_memory`: first capture + (n - 1) x per-graph, for the piecewise
    graphs and the full decode graphs (FULL_AND_PIECEWISE, the default mode)."""
    sizes = _cuda_graph_sizes(max_num_seqs)
    full_decode = [s for s in sizes if s <= max_num_seqs]
    first = max(sizes) * _per_token_activation_bytes(
        architecture, tensor_parallel_size, dtype_bytes
    )
    graphs = len(sizes) - 1 + len(full_decode)
    return int(first + graphs * _CUDA_GRAPH_BYTES_PER_GRAPH)


@dataclass(frozen=True)
class _KvLayout:
    """How the KV pool is cut: groups of layers sharing block ids, and one layer's page."""

    groups: tuple[_LayerGroup, ...]
    page_bytes: int
    block_size: int
    max_num_batched_tokens: int
    null_block_reserved: bool
    mamba_blocks: int = 1

    @property
    def bytes_per_block(self) -> int:
        return max(g.layers for g in self.groups) * self.page_bytes

    def blocks_per_request(self, max_model_len: int) -> int:
        return sum(
            _blocks_per_request(
                g, max_model_len, self.max_num_batched_tokens, self.block_size, self.mamba_blocks
            )
            for g in self.groups
        )

    def capacity(self, available_bytes: int, max_model_len: int) -> tuple[int, float, bool]:
        """(num_blocks, max_concurrency, fits) for one max_model_len."""
        num_blocks = max(0, available_bytes // self.bytes_per_block)
        per_request = self.blocks_per_request(max_model_len)
        usable = num_blocks - (1 if self.null_block_reserved else 0)
        concurrency = num_blocks / per_request if per_request else 0.0
        return num_blocks, concurrency, available_bytes > 0 and usable >= per_request

    def largest_fitting_len(self, available_bytes: int, max_model_len: int, v1: bool) -> int:
        """vLLM's `estimate_max_model_len`: a binary search over 1..max_model_len (0 when not
        even one token fits). V0 compared max_model_len with num_blocks x block_size."""
        if not v1:
            blocks = max(0, available_bytes // self.bytes_per_block)
            return int(min(max_model_len, blocks * self.block_size))
        low, high, best = 1, max_model_len, 0
        while low <= high:
            mid = (low + high) // 2
            if self.capacity(available_bytes, mid)[2]:
                best, low = mid, mid + 1
            else:
                high = mid - 1
        return best


def _kv_layout(
    architecture: ModelArchitecture,
    tp: int,
    flags: EngineFlags,
    rules: VllmRules,
    max_num_batched_tokens: int,
) -> _KvLayout:
    block_size = hybrid_mamba_block_size(architecture, tp, flags.kv_cache_dtype, flags.block_size)
    groups = _layer_groups(architecture, rules.v1_engine and rules.hybrid_kv_allocator)
    page_bytes = kv_page_bytes_per_layer(architecture, tp, flags.kv_cache_dtype, block_size)
    if architecture.global_head_dim is not None and not architecture.uses_mla:
        groups, page_bytes = _unified_pages(architecture, groups, tp, flags, block_size)
    return _KvLayout(
        groups=tuple(groups),
        page_bytes=page_bytes,
        block_size=block_size,
        max_num_batched_tokens=max_num_batched_tokens,
        null_block_reserved=rules.null_block_reserved,
        mamba_blocks=2 if flags.enable_prefix_caching else 1,
    )


def _unified_pages(
    architecture: ModelArchitecture,
    groups: list[_LayerGroup],
    tp: int,
    flags: EngineFlags,
    block_size: int,
) -> tuple[list[_LayerGroup], int]:
    """Layers whose heads differ in width (Gemma 4) have pages of different sizes; vLLM's
    `unify_kv_cache_spec_page_size` (v1/core/kv_cache_utils.py) keeps the widest page and
    multiplies the block size of the narrower layers by the ratio (their page must divide it).
    Returns the groups with their tokens per block, and the common page."""
    layers = range(architecture.cached_layer_count)
    local = next((i for i in layers if architecture.is_local_layer(i)), None)
    full = next((i for i in layers if not architecture.is_local_layer(i)), None)
    per_token = {
        kind: _layer_token_bytes(architecture, layer, tp, flags.kv_cache_dtype)
        for kind, layer in (("local", local), ("full", full))
        if layer is not None
    }
    widest = max(per_token.values())
    unified = []
    for group in groups:
        own = per_token["full" if group.kind == "full" else "local"]
        if widest % own:
            msg = f"vLLM cannot unify KV pages of {own} and {widest} bytes per token"
            raise ValueError(msg)
        unified.append(replace(group, tokens_per_block=block_size * (widest // own)))
    return unified, widest * block_size


@dataclass(frozen=True)
class _NonKv:
    requested: int
    weights: int
    activation: int
    non_torch: int
    cuda_graph: int

    @property
    def available(self) -> int:
        return self.requested - self.weights - self.activation - self.non_torch - self.cuda_graph


def _non_kv(
    architecture: ModelArchitecture,
    *,
    weight_bytes: int,
    gpu_memory_bytes: int,
    tp: int,
    flags: EngineFlags,
    utilization: float,
    rules: VllmRules,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    compute_capability: tuple[int, int],
) -> _NonKv:
    if rules.v1_engine:
        non_torch = _NON_TORCH_BYTES + (_NON_TORCH_TP_EXTRA_BYTES if tp > 1 else 0)
        if rules.v1_context_is_non_torch:
            non_torch += _CUDA_CONTEXT_BYTES
    elif rules.version < (0, 6, 5):
        non_torch = _NON_TORCH_V0_OLD_BYTES
    else:
        non_torch = _NON_TORCH_V0_BYTES + (_NON_TORCH_TP_EXTRA_BYTES if tp > 1 else 0)
    if tp > 1 and compute_capability >= (9, 0):
        non_torch += _NCCL_HOPPER_TP_BYTES
    cuda_graph = 0
    if rules.cuda_graphs_in_budget and not flags.enforce_eager:
        cuda_graph = _cuda_graph_bytes(architecture, tp, max_num_seqs)
    return _NonKv(
        requested=math.ceil(gpu_memory_bytes * utilization),
        weights=math.ceil(weight_bytes / tp),
        activation=_activation_bytes(
            architecture,
            tensor_parallel_size=tp,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            rules=rules,
            flashinfer_sampler=flags.flashinfer_sampler,
        ),
        non_torch=non_torch,
        cuda_graph=cuda_graph,
    )


def _free_memory_refusal(
    gpu_memory_bytes: int, other_processes_bytes: int, requested: int, utilization: float
) -> str:
    """vLLM's `request_memory` check, or "" when the card has room."""
    free_at_start = gpu_memory_bytes - other_processes_bytes - _CUDA_CONTEXT_BYTES
    if free_at_start >= requested:
        return ""
    return (
        f"vLLM refuses to start: {free_at_start / GIB:.2f} GiB free on the GPU at start-up "
        f"(other processes hold {other_processes_bytes / GIB:.2f} GiB) is less than "
        f"gpu_memory_utilization {utilization} x {gpu_memory_bytes / GIB:.2f} GiB = "
        f"{requested / GIB:.2f} GiB; lower gpu_memory_utilization or free the GPU"
    )


def estimate_memory(
    architecture: ModelArchitecture,
    weight_bytes: int,
    gpu_memory_bytes: int,
    *,
    gpu_count: int = 1,
    tensor_parallel_size: int | None = None,
    compute_capability: tuple[int, int] = (8, 0),
    flags: EngineFlags | None = None,
    vllm_version: str = PINNED_VLLM_VERSION,
    other_processes_bytes: int = 0,
    gpu_name: str = "",
    v1_engine: bool | None = None,
) -> MemoryEstimate:
    """Per-GPU memory budget vLLM computes at start-up, and whether it starts.

    `weight_bytes` is the whole checkpoint as loaded (safetensors payload; every MoE expert);
    each TP rank holds 1/TP of it. `gpu_memory_bytes` is one card's total; pass the total CUDA
    reports (`torch.cuda.mem_get_info`, what vLLM multiplies by gpu_memory_utilization) rather
    than NVML's slightly larger figure where you have it. `other_processes_bytes` is memory
    already held on that card (TEI, a desktop) when vLLM starts. `gpu_name` only matters for
    vLLM's A100 exception to the batch defaults; `v1_engine` forces V0 or V1 for releases that
    had both.
    """
    flags = flags or EngineFlags()
    rules = VllmRules.for_version(vllm_version, v1_engine=v1_engine)
    tp = tensor_parallel_size or gpu_count
    if tp <= 0 or gpu_count <= 0:
        msg = "gpu_count and tensor_parallel_size must be positive"
        raise ValueError(msg)
    max_model_len = flags.max_model_len or architecture.max_model_len_limit
    max_num_batched_tokens, max_num_seqs, notes = _scheduler_limits(
        flags, max_model_len, gpu_memory_bytes, gpu_name, rules
    )
    utilization = flags.gpu_memory_utilization or rules.default_gpu_memory_utilization
    budget = _non_kv(
        architecture,
        weight_bytes=weight_bytes,
        gpu_memory_bytes=gpu_memory_bytes,
        tp=tp,
        flags=flags,
        utilization=utilization,
        rules=rules,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        compute_capability=compute_capability,
    )
    available = budget.available
    reason = ""
    if rules.other_processes_shrink_kv:
        available -= other_processes_bytes
    elif rules.v1_engine:
        # Only V1's `Worker.init_device` (`vllm/v1/worker/gpu_worker.py`) refuses when free memory
        # is below the requested share; V0's (`vllm/worker/worker.py`) has no such check and
        # profiles against its own baseline snapshot, so other processes change neither.
        reason = _free_memory_refusal(
            gpu_memory_bytes, other_processes_bytes, budget.requested, utilization
        )

    layout = _kv_layout(architecture, tp, flags, rules, max_num_batched_tokens)
    block_size = layout.block_size
    num_blocks, concurrency, kv_fits = layout.capacity(available, max_model_len)
    kv_tokens = int(concurrency * max_model_len) if rules.v1_engine else num_blocks * block_size
    largest: int | None = None
    if available <= 0:
        reason = reason or (
            f"no memory left for the KV cache: weights {budget.weights / GIB:.2f} GiB + "
            f"activations {budget.activation / GIB:.2f} GiB + non-torch "
            f"{budget.non_torch / GIB:.2f} GiB + CUDA graphs {budget.cuda_graph / GIB:.2f} GiB "
            f"exceed the {budget.requested / GIB:.2f} GiB vLLM may use"
        )
    elif not kv_fits:
        largest = layout.largest_fitting_len(available, max_model_len, rules.v1_engine)
        needed = layout.blocks_per_request(max_model_len) * layout.bytes_per_block
        reason = reason or (
            f"one request of max_model_len {max_model_len} needs {needed / GIB:.2f} GiB of KV "
            f"cache but only {available / GIB:.2f} GiB is available; the largest "
            f"max_model_len that fits is {largest}"
        )
    fits = not reason
    if fits:
        reason = (
            f"fits: {kv_tokens:,} KV tokens, {concurrency:.2f} requests of {max_model_len} tokens"
        )
    latent = architecture.mla_latent_size
    if latent is not None:
        notes.append(
            f"multi-head latent attention: each layer caches one {latent}-value latent per "
            "token, the whole of it on every GPU, so tensor parallelism frees weight memory but "
            "does not shrink the KV cost per token"
        )
    if architecture.profiles_vision:
        notes.append(
            "multimodal: vLLM runs the vision tower over a batch of dummy images at start-up; "
            "its activations are in the peak"
        )
    if architecture.linear_attention_layers:
        linear = len(architecture.linear_attention_layers)
        per_layer = architecture.gdn_state_bytes(tp) / (1 << 20)
        copies = layout.mamba_blocks
        notes.append(
            f"hybrid linear attention: {linear} of {architecture.num_hidden_layers} layers are "
            f"Gated DeltaNet and keep a fixed state instead of a KV cache, "
            f"{per_layer:.2f} MiB per layer and request, held {copies}x "
            f"({'prefix caching' if copies > 1 else 'no prefix caching'}): "
            f"{linear * per_layer * copies:.0f} MiB per request per GPU whatever its length; "
            f"vLLM pages it in {block_size}-token attention blocks"
        )
    if compute_capability < (8, 0):
        notes.append("compute capability below 8.0: vLLM runs the model in fp16, not bf16")
    if not rules.cuda_graphs_in_budget and not flags.enforce_eager:
        notes.append(
            "this vLLM version captures CUDA graphs after sizing the KV cache: they come out "
            "of the (1 - gpu_memory_utilization) headroom"
        )
    return MemoryEstimate(
        vllm_version=".".join(str(p) for p in rules.version),
        tensor_parallel_size=tp,
        gpu_memory_gib=round(gpu_memory_bytes / GIB, 3),
        gpu_memory_utilization=utilization,
        requested_gib=round(budget.requested / GIB, 3),
        weights_gib=round(budget.weights / GIB, 3),
        activation_gib=round(budget.activation / GIB, 3),
        non_torch_gib=round(budget.non_torch / GIB, 3),
        cuda_graph_gib=round(budget.cuda_graph / GIB, 3),
        other_processes_gib=round(other_processes_bytes / GIB, 3),
        kv_cache_gib=round(available / GIB, 3),
        kv_bytes_per_token=kv_bytes_per_token(architecture, tp, flags.kv_cache_dtype),
        num_gpu_blocks=num_blocks,
        kv_cache_tokens=max(0, kv_tokens),
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_concurrency=round(concurrency, 2),
        fits=fits,
        reason=reason,
        largest_fitting_max_model_len=largest,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# What the card gives CUDA, what TEI takes beside vLLM, and how fast decode runs

# NVML's "total" includes memory the driver keeps for itself; CUDA (and so vLLM's
# gpu_memory_utilization) sees less. Logged pairs (NVML total -> torch total): RTX 3090
# 24.00 -> 23.58 GiB, RTX 4090 D 23.99 -> 23.55, H100 80GB 79.65 -> 79.22, T4 15.00 -> 14.56,
# A100-40GB 40.00 -> 39.38, A100-80GB 80.00 -> 79.25. 0.44 GiB is the common case; the A100s
# hold back more and are under-estimated by up to 0.3 GiB.
DRIVER_RESERVED_BYTES = int(0.44 * GIB)


def cuda_total_bytes(nvml_total_bytes: int, nvml_reserved_bytes: int | None = None) -> int:
    """The total CUDA reports for a card (what vLLM multiplies by gpu_memory_utilization),
    from NVML's figures: NVML's own reserved figure when it gave one, else the logged gap."""
    reserved = nvml_reserved_bytes if nvml_reserved_bytes else DRIVER_RESERVED_BYTES
    return max(0, nvml_total_bytes - reserved)


# TEI beside vLLM on one card: fp16 weights (params x 2 bytes whatever the file's dtype) plus
# its CUDA context and the activations of one --max-batch-tokens batch (16384 by default; an
# XLM-R-large encoder such as bge-m3 peaks near 1 GiB there). Deliberately generous: vLLM
# refuses to start when TEI's share eats into gpu_memory_utilization.
TEI_RUNTIME_OVERHEAD_BYTES = int(1.5 * GIB)


def tei_memory_bytes(params_million: float, bytes_per_param: int = 2) -> int:
    """GPU memory a TEI container holds for an embedding model of this size (fp16 weights
    unless the model must run in float32)."""
    return int(params_million * 1e6 * bytes_per_param) + TEI_RUNTIME_OVERHEAD_BYTES


# Decode is memory-bound: every step reads the active weights once and each running request's
# KV cache. Achieved bandwidth is ~70 % of the data-sheet figure in vLLM decode benchmarks
# (small batches, CUDA graphs on); one tensor-parallel step adds two all-reduces per layer.
DECODE_BANDWIDTH_EFFICIENCY = 0.7
_ALL_REDUCE_SECONDS_P2P = 8e-6
_ALL_REDUCE_SECONDS_NO_P2P = 25e-6  # NCCL through host memory on GeForce cards
DECODE_MODEL_TEXT = (
    "decode tokens/s = batch / step time; step time = (active weights per GPU + batch x "
    "(prompt + output/2) tokens x KV bytes per token per GPU) / (GPU bandwidth x "
    f"{DECODE_BANDWIDTH_EFFICIENCY}) + 2 all-reduces per layer under TP "
    f"({_ALL_REDUCE_SECONDS_P2P * 1e6:g} us with P2P, {_ALL_REDUCE_SECONDS_NO_P2P * 1e6:g} us "
    "without)"
)


@dataclass(frozen=True)
class DecodeSpeed:
    batch: int
    step_ms: float
    tokens_per_second_per_request: float
    tokens_per_second_total: float
    bound: str = "memory bandwidth"  # or "compute": which limit sets the speed


def decode_speed(
    *,
    active_weight_bytes: int,
    kv_bytes_per_token_per_gpu: int,
    num_hidden_layers: int,
    bandwidth_gb_s: float,
    batch: int,
    context_tokens: int,
    tensor_parallel_size: int = 1,
    p2p: bool = True,
) -> DecodeSpeed:
    """The memory-bandwidth model in `DECODE_MODEL_TEXT` (an upper bound a well-tuned server
    gets close to; prefill and scheduling are not counted)."""
    batch = max(1, batch)
    bytes_per_step = (
        active_weight_bytes / tensor_parallel_size
        + batch * context_tokens * kv_bytes_per_token_per_gpu
    )
    seconds = bytes_per_step / (bandwidth_gb_s * GB * DECODE_BANDWIDTH_EFFICIENCY)
    if tensor_parallel_size > 1:
        per_reduce = _ALL_REDUCE_SECONDS_P2P if p2p else _ALL_REDUCE_SECONDS_NO_P2P
        seconds += 2 * num_hidden_layers * per_reduce
    return DecodeSpeed(
        batch=batch,
        step_ms=round(seconds * 1000, 2),
        tokens_per_second_per_request=round(1 / seconds, 1),
        tokens_per_second_total=round(batch / seconds, 1),
    )


# ---------------------------------------------------------------------------------------------
# Baseline and hard rules


@dataclass(frozen=True)
class RuleOfThumb:
    """ "params x bytes + KV + ~7 GB": the sizing rule from the reference articles, kept only
    to measure the memory model against."""

    weights_gb: float
    overhead_gb: float
    kv_cache_gb: float
    kv_cache_tokens: int
    fits: bool


RULE_OF_THUMB_OVERHEAD_GB = 7.0


def rule_of_thumb(
    params_billion: float,
    bytes_per_param: float,
    gpu_memory_bytes: int,
    kv_bytes_per_token_total: int,
    max_model_len: int,
    *,
    gpu_count: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> RuleOfThumb:
    """Total VRAM needed = params_B x bytes_per_param + KV + ~7 GB CUDA overhead (decimal GB,
    as the articles write it), applied to all cards together: what is left after weights and
    the overhead is KV cache, and it "fits" when one max_model_len sequence fits."""
    budget_gb = gpu_memory_bytes * gpu_count * gpu_memory_utilization / GB
    weights_gb = params_billion * bytes_per_param
    kv_gb = budget_gb - weights_gb - RULE_OF_THUMB_OVERHEAD_GB
    tokens = max(0, int(kv_gb * GB // kv_bytes_per_token_total)) if kv_gb > 0 else 0
    return RuleOfThumb(
        weights_gb=round(weights_gb, 3),
        overhead_gb=RULE_OF_THUMB_OVERHEAD_GB,
        kv_cache_gb=round(kv_gb, 3),
        kv_cache_tokens=tokens,
        fits=tokens >= max_model_len,
    )


@dataclass(frozen=True)
class RuleFinding:
    """One hard rule's verdict: errors stop a deployment, warnings explain a trade-off, and
    `flag` names a vLLM flag the runtime must pass (e.g. `--disable-custom-all-reduce`)."""

    rule: str
    severity: FindingSeverity
    message: str
    flag: str | None = None


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# Hopper's Triton MXFP4 path pads nothing in `create_weights`, yet vLLM v0.14.1 logged "Model
# loading took 64.38 GiB" for gpt-oss-120b on an H100 ("Using Triton backend", vLLM issue
# #33155) against 60.77 GiB of checkpoint: the swizzled layout holds the experts 6.4 % larger.
# Measured on that one log, not derived.
_HOPPER_MXFP4_EXPERT_GROWTH = 1.0636


def mxfp4_backend(compute_capability: tuple[int, int]) -> str:
    """The MoE kernel vLLM picks for MXFP4 experts (`get_mxfp4_backend`, vllm/model_executor/
    layers/quantization/mxfp4.py): FlashInfer on Blackwell data-centre cards (10.x), the
    Triton kernels on Hopper (confirmed on 9.0-10.x only), Marlin weight-only W4A16
    everywhere else from 8.0 (Ampere, Ada, GeForce/RTX PRO Blackwell 12.x)."""
    if compute_capability[0] == 10:
        return "flashinfer"
    if compute_capability[0] == 9:
        return "triton"
    return "marlin"


def loaded_weight_bytes(
    architecture: ModelArchitecture,
    weight_bytes: int,
    quantization: str | None,
    compute_capability: tuple[int, int],
    tensor_parallel_size: int = 1,
) -> int:
    """What the checkpoint occupies once vLLM has loaded it (all ranks together).

    Equal to the safetensors payload except for MXFP4 experts, whose kernels pad each
    expert matrix (`Mxfp4MoEMethod.create_weights`): Marlin rounds hidden_size up to 256 and
    each rank's intermediate size up to 128, FlashInfer both to 256 (gpt-oss's 2880 becomes
    3072 x 2944 or 3072 x 3072). For gpt-oss-120b on Marlin this gives 65.90 GiB against the
    65.97 GiB vLLM logged (issue #23278).
    """
    experts = architecture.num_experts
    if quantization != "mxfp4" or experts is None:
        return weight_bytes
    hidden = architecture.hidden_size
    inter = architecture.moe_intermediate_size or architecture.intermediate_size
    moe_layers = len(architecture.moe_layers or range(architecture.num_hidden_layers))

    def expert_bytes(h: int, i: int) -> int:
        # gate_up (2i x h) and down (h x i): 4-bit values, one UE8 scale per 32, BF16 biases.
        values = 3 * h * i
        return moe_layers * experts * (values // 2 + values // 32 + (2 * i + h) * 2)

    stored = expert_bytes(hidden, inter)
    backend = mxfp4_backend(compute_capability)
    if backend == "triton":
        return weight_bytes + round(stored * (_HOPPER_MXFP4_EXPERT_GROWTH - 1))
    tp = tensor_parallel_size
    hidden_align, inter_align = (256, 128) if backend == "marlin" else (256, 256)
    padded = expert_bytes(_round_up(hidden, hidden_align), _round_up(inter // tp, inter_align) * tp)
    return weight_bytes + padded - stored


def _mxfp4_findings(cc: tuple[int, int]) -> list[RuleFinding]:
    cc_text = f"{cc[0]}.{cc[1]}"
    found: list[RuleFinding] = []
    # vLLM's Mxfp4Config.get_min_capability is 80; below Hopper (and on 11.x/12.x) the
    # experts run through Marlin as weight-only W4A16 (its log: "Your GPU does not have
    # native support for FP4 computation ... Weight-only FP4 compression will be used
    # leveraging the Marlin kernel").
    if cc < (8, 0):
        found.append(
            RuleFinding(
                "mxfp4",
                "error",
                f"MXFP4 checkpoints need compute capability 8.0+ in vLLM; this GPU is {cc_text}.",
            )
        )
    elif mxfp4_backend(cc) == "marlin":
        found.append(
            RuleFinding(
                "mxfp4-marlin",
                "warning",
                f"MXFP4 runs weight-only through the Marlin kernel on {cc_text} (native FP4 "
                "MoE kernels need Hopper 9.0 or Blackwell 10.x): memory as planned, "
                "compute-heavy prefill slower.",
            )
        )
    return found


def _format_findings(quantization: str, cc: tuple[int, int]) -> list[RuleFinding]:
    """NVFP4 and W8A8-INT8 as vLLM gates them.

    NVFP4 (vllm/model_executor/layers/quantization/modelopt.py at c9a5990,
    ModelOptNvFp4Config.get_min_capability 75): FP4 tensor cores only on Blackwell (10.x
    data-centre, 12.x GeForce/RTX PRO); below, the weights run through the FP4 Marlin kernel with
    16-bit activations (W4A16_NVFP4 -> Marlin). W8A8-INT8 (compressed-tensors
    CompressedTensorsW8A8Int8, cutlass scaled_mm) needs 7.5.
    """
    cc_text = f"{cc[0]}.{cc[1]}"
    if quantization == "nvfp4":
        if cc < (7, 5):
            return [
                RuleFinding(
                    "nvfp4",
                    "error",
                    f"NVFP4 checkpoints need compute capability 7.5+ in vLLM; this GPU is "
                    f"{cc_text}.",
                )
            ]
        if cc[0] not in (10, 12):
            return [
                RuleFinding(
                    "nvfp4-marlin",
                    "warning",
                    f"NVFP4 has FP4 tensor cores only on Blackwell (10.x, 12.x); on {cc_text} "
                    "vLLM runs it weight-only through the FP4 Marlin kernel: memory as "
                    "planned, no FP4 speed-up.",
                )
            ]
    if quantization == "int8" and cc < (7, 5):
        return [
            RuleFinding(
                "int8-w8a8",
                "error",
                f"W8A8-INT8 checkpoints need compute capability 7.5+ in vLLM; this GPU is "
                f"{cc_text}.",
            )
        ]
    return []


def check_rules(
    architecture: ModelArchitecture,
    *,
    quantization: Quantization,
    compute_capability: tuple[int, int],
    tensor_parallel_size: int = 1,
    p2p_supported: bool = True,
    params_billion: float | None = None,
    active_params_billion: float | None = None,
) -> list[RuleFinding]:
    """vLLM's refusals and the appliance's own hard rules, each with an operator's message."""
    findings: list[RuleFinding] = []
    tp = tensor_parallel_size
    heads, kv_heads = architecture.num_attention_heads, architecture.num_key_value_heads
    if heads % tp:
        findings.append(
            RuleFinding(
                "tp-divides-heads",
                "error",
                f"tensor parallel size {tp} does not divide the {heads} attention heads; vLLM "
                f"refuses to start. Use a TP size that divides {heads}.",
            )
        )
    if kv_heads % tp and tp % kv_heads:
        findings.append(
            RuleFinding(
                "tp-kv-heads",
                "error",
                f"tensor parallel size {tp} and the {kv_heads} KV heads do not divide one "
                "another; vLLM cannot split or replicate them evenly.",
            )
        )
    elif tp > kv_heads:
        findings.append(
            RuleFinding(
                "tp-kv-heads-replicated",
                "warning",
                f"TP {tp} exceeds the {kv_heads} KV heads: each KV head is replicated on "
                f"{tp // kv_heads} GPUs, so the KV cache does not shrink per GPU beyond TP "
                f"{kv_heads}.",
            )
        )
    if architecture.intermediate_size % tp:
        findings.append(
            RuleFinding(
                "tp-divides-mlp",
                "error",
                f"tensor parallel size {tp} does not divide intermediate_size "
                f"{architecture.intermediate_size}.",
            )
        )
    cc = compute_capability
    cc_text = f"{cc[0]}.{cc[1]}"
    if quantization in ("awq", "gptq") and cc < (8, 0):
        findings.append(
            RuleFinding(
                "int4-marlin",
                "warning" if cc >= (7, 5) else "error",
                f"{quantization.upper()} Marlin kernels need compute capability 8.0+; this GPU "
                f"is {cc_text}, so vLLM falls back to the slower non-Marlin kernels"
                + ("" if cc >= (7, 5) else ", which need 7.5+ — not supported here")
                + ".",
            )
        )
    if quantization == "fp8":
        if cc >= (8, 9):
            pass
        elif cc >= (8, 0):
            findings.append(
                RuleFinding(
                    "fp8-w8a8",
                    "warning",
                    f"FP8 W8A8 needs compute capability 8.9+ (Ada, Hopper); on {cc_text} vLLM "
                    "runs the checkpoint as weight-only FP8 through the Marlin kernel (its log: "
                    "'Your GPU does not have native support for FP8 computation ... Weight-only "
                    "FP8 compression will be used'): the memory saving stays, compute-heavy "
                    "prefill gets slower.",
                )
            )
        else:
            findings.append(
                RuleFinding(
                    "fp8-w8a8",
                    "error",
                    f"FP8 checkpoints need compute capability 8.0+ (weight-only Marlin) and "
                    f"8.9+ for W8A8; this GPU is {cc_text}.",
                )
            )
    findings.extend(_mxfp4_findings(cc) if quantization == "mxfp4" else ())
    findings.extend(_format_findings(quantization, cc))
    if quantization == "bf16" and cc < (8, 0):
        findings.append(
            RuleFinding(
                "bf16",
                "warning",
                f"bf16 needs compute capability 8.0+; on {cc_text} vLLM casts the model to fp16 "
                "(same memory, small numeric risk).",
                flag="--dtype=half",
            )
        )
    if tp > 1 and not p2p_supported:
        findings.append(
            RuleFinding(
                "custom-all-reduce",
                "warning",
                "these GPUs have no peer-to-peer access (consumer cards): vLLM's custom "
                "all-reduce needs it, so run with --disable-custom-all-reduce (NCCL only).",
                flag="--disable-custom-all-reduce",
            )
        )
    if architecture.num_experts is not None:
        total = f"{params_billion:g} B" if params_billion is not None else "all"
        active = f"{active_params_billion:g} B" if active_params_billion is not None else "a few"
        findings.append(
            RuleFinding(
                "moe-resident",
                "warning",
                f"mixture of experts: {active} parameters are active per token but {total} must "
                f"be resident — all {architecture.num_experts} experts are loaded on the GPU.",
            )
        )
    return findings


# ---------------------------------------------------------------------------------------------
# Several chat models on one box (spec.switching, issue #19): one awake, the others asleep.

# What a sleeping vLLM engine still holds on each of its GPUs: sleep mode releases the weights
# and the KV cache but not the CUDA context nor the captured CUDA graphs (vllm#17117: "Sleep
# mode freed 23.74 GiB memory, 4.75 GiB memory is still in use" at level 2, an early V0;
# vllm#28714, v0.11.1, Qwen3-4B at level 1: "Sleep mode freed 35.43 GiB memory, 1.19 GiB memory
# is still in use"; vllm#32714: 1.14 GB per GPU after a level-1 sleep on 0.13.0, Qwen3-30B on
# 4x RTX 3090, and 16 GB on 0.14/0.15 until a later fix; vllm#47654: 7.0 GiB per GPU for
# Kimi-K2.6 at TP 8, of which 1.4 GiB CUDA graphs). Modelled as the CUDA context, the non-torch
# memory and the CUDA-graph estimate of the engine's own budget, and never below the 1.19 GiB
# a small model was seen to keep.
SLEEPING_RESIDUAL_FLOOR_BYTES = int(1.19 * GIB)


def sleeping_residual_bytes(estimate: MemoryEstimate | None) -> int:
    """Per-GPU memory a sleeping engine keeps (see SLEEPING_RESIDUAL_FLOOR_BYTES)."""
    if estimate is None:
        return SLEEPING_RESIDUAL_FLOOR_BYTES
    kept = _CUDA_CONTEXT_BYTES + int((estimate.non_torch_gib + estimate.cuda_graph_gib) * GIB)
    return max(SLEEPING_RESIDUAL_FLOOR_BYTES, kept)


@dataclass(frozen=True)
class SwitchedEngine:
    """One of several chat models, as the switching check sizes it."""

    served_name: str
    requested_bytes: int  # per GPU while awake: total x gpu_memory_utilization
    residual_bytes: int  # per GPU while asleep
    weight_bytes: int | None  # the whole checkpoint, kept in host RAM at level 1; None unknown


@dataclass(frozen=True)
class SwitchingFit:
    """Whether the models fit together, worst case first: the largest awake budget beside every
    other engine's residual on each GPU, and (level 1) every sleeping model's weights in host
    RAM. `reason` is one line with the numbers."""

    fits: bool
    reason: str
    gpu_need_bytes: int
    gpu_memory_bytes: int
    host_need_bytes: int
    host_memory_bytes: int | None
    sleep_level: int = 1  # the level sized for (spec.switching's, or the one auto chose)
    sleep_reason: str = ""  # why auto chose it; "" when the profile set it


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


# `sleep_level: auto` keeps level 1 only while the sleeping models' weights leave this share of
# the host's RAM to the OS, Docker, the page cache the next wake reads through, and the engines'
# own processes (vLLM's docs ask for "enough CPU memory to store the model weights" at level 1,
# docs/features/sleep_mode.md; the share is the appliance's choice).
SLEEP_RAM_HEADROOM = 0.25


def sleeping_weight_bytes(weights: Sequence[int | None]) -> int | None:
    """The most weight bytes the sleeping models hold in host RAM at level 1, whichever one is
    awake (all but the smallest); None when a model's size is not known."""
    if any(w is None for w in weights):
        return None
    known = [w for w in weights if w is not None]
    return sum(known) - min(known) if known else 0


def choose_sleep_level(
    sleeping_bytes: int | None, host_memory_bytes: int | None
) -> tuple[SleepLevel, str]:
    """`sleep_level: auto`: level 1 (the weights wait in host RAM, the fast wake) where they
    fit with `SLEEP_RAM_HEADROOM` to spare, else level 2 (dropped; the wake reloads them).
    Unknown sizes choose 2, which needs no RAM. The reason is one line with the numbers."""
    if sleeping_bytes is None:
        return 2, "sleep level 2 (auto): a model's weight size is not known, so none is kept in RAM"
    if host_memory_bytes is None:
        return 2, "sleep level 2 (auto): this box's RAM is not known, so no weights are kept in it"
    room = int(host_memory_bytes * (1 - SLEEP_RAM_HEADROOM))
    numbers = (
        f"the sleeping models' weights {_gib(sleeping_bytes)}, {_gib(room)} usable of "
        f"{_gib(host_memory_bytes)} host RAM ({SLEEP_RAM_HEADROOM:.0%} kept free)"
    )
    if sleeping_bytes <= room:
        return 1, f"sleep level 1 (auto): weights wait in host RAM for a fast wake: {numbers}"
    return 2, f"sleep level 2 (auto): weights are dropped and reloaded on wake: {numbers}"


def switching_fit(
    engines: Sequence[SwitchedEngine],
    *,
    gpu_memory_bytes: int,
    other_processes_bytes: int,
    host_memory_bytes: int | None,
    sleep_level: int,
) -> SwitchingFit:
    """The awake engine's full budget plus every sleeping one's residual (and whatever else
    holds the GPU) must fit each GPU, whichever engine is awake; at sleep level 1 the sleeping
    models' weights must fit the host's RAM ("Please make sure there's enough CPU memory to
    store the model weights", vLLM's docs/features/sleep_mode.md)."""
    residual_total = sum(e.residual_bytes for e in engines)
    awake = max(engines, key=lambda e: e.requested_bytes - e.residual_bytes)
    asleep = residual_total - awake.residual_bytes
    gpu_need = awake.requested_bytes + asleep + other_processes_bytes
    known = [e.weight_bytes for e in engines if e.weight_bytes is not None]
    host_need = sum(known) - min(known) if sleep_level == 1 and len(known) == len(engines) else 0
    if sleep_level == 1 and len(known) != len(engines):
        host_need = sum(known)
    others = f" + {_gib(other_processes_bytes)} beside them" if other_processes_bytes else ""
    if gpu_need > gpu_memory_bytes:
        free = max(0, gpu_memory_bytes - asleep - other_processes_bytes)
        utilization = math.floor(free / gpu_memory_bytes * 100) / 100
        reason = (
            f"{awake.served_name} awake needs {_gib(awake.requested_bytes)} and the "
            f"{len(engines) - 1} sleeping model(s) keep {_gib(asleep)} (CUDA context and graphs)"
            f"{others}: {_gib(gpu_need)} per GPU > {_gib(gpu_memory_bytes)}; the awake model "
            f"may take {_gib(free)} (gpu_memory_utilization {utilization:.2f})"
        )
        return SwitchingFit(False, reason, gpu_need, gpu_memory_bytes, host_need, host_memory_bytes)
    if host_memory_bytes is not None and host_need > host_memory_bytes:
        reason = (
            f"sleep level 1 keeps the sleeping models' weights in host RAM: {_gib(host_need)} "
            f"> {_gib(host_memory_bytes)} on this box"
        )
        return SwitchingFit(False, reason, gpu_need, gpu_memory_bytes, host_need, host_memory_bytes)
    reason = (
        f"{len(engines)} chat models fit: {_gib(gpu_need)} of {_gib(gpu_memory_bytes)} per GPU "
        f"with {awake.served_name} awake"
        + (f", {_gib(host_need)} of weights in host RAM" if host_need else "")
    )
    return SwitchingFit(True, reason, gpu_need, gpu_memory_bytes, host_need, host_memory_bytes)
