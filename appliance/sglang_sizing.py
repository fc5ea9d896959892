"""How much GPU memory SGLang gives its KV pool, computed the way SGLang computes it at start-up.

Pure: no IO. The per-token KV bytes and the weights a GPU holds come from `appliance.sizing`'s
building blocks (`kv_bytes_per_token`, `loaded_weight_bytes`); what differs from vLLM is the
budget around them.

What SGLang does (read from its source; the pinned release is 0.5.21. The same formula is in
0.4.x `model_runner.py::profile_max_num_token`, in v0.5.8
`model_executor/model_runner_kv_cache_mixin.py::profile_max_num_token` and in the 2026 main's
`mem_cache/kv_cache_configurator.py` / `model_runner_kv_cache_mixin.py::_profile_available_bytes`
with `model_executor/pool_configurator.py::calculate_pool_sizes`; the v0.5.21 tag itself could
not be read here, so it is taken to be the same as both sides of it):

1. `ModelRunner` measures the free GPU memory after creating its CUDA context and the
   torch-distributed/NCCL groups and before loading the weights (`pre_model_load_memory`, named
   `total_gpu_memory`/`min_per_gpu_memory` in 0.4.x; logged as "Load weight begin. avail
   mem=... GB"; under tensor parallelism the smallest of the ranks).
2. After the weights are loaded it measures free memory again ("Load weight end. avail mem=A")
   and keeps `rest = A - pre_model_load_memory x (1 - mem_fraction_static)` for the KV pool.
   So weights + KV pool = mem_fraction_static x pre-load free memory; activations, CUDA graphs,
   the sampler and NCCL buffers all live in the other (1 - mem_fraction_static) share, which
   SGLang does not measure. `rest <= 0` stops start-up ("Not enough memory. Please try to
   increase --mem-fraction-static" in 0.1-0.4; "Loaded weights leave no GPU memory for the KV
   cache ... Raise --mem-fraction-static above ..." with the minimum 1 - A / pre in 0.5.x).
3. `calculate_pool_sizes`: tokens = rest // cell_size, rounded down to the page size
   (`--page-size`, 1 unless an attention backend asks for more), where for MHA/GQA cell_size =
   KV heads per TP rank (`get_num_kv_heads(tp)` = max(1, heads // tp)) x (head_dim +
   v_head_dim) x layers x the KV dtype's bytes, and for MLA (kv_lora_rank + qk_rope_head_dim) x
   layers x bytes. It logs "KV Cache is allocated. #tokens: N".
4. SGLang starts even when N is shorter than the context length; it then rejects longer
   prompts. The appliance refuses that profile, as it does for vLLM, because one request of
   max_model_len would not fit.

Checked against public start-up logs by bench/sglang_sizing_accuracy.py.

Not modelled: SGLang's separate full/sliding-window pools for hybrid SWA models (gpt-oss,
Gemma) and its Mamba/linear-attention state pool (sized here as if every attention layer kept
full KV, the cautious side); a speculative draft model; the multimodal cache 0.5.x reserves out
of the pool (`mm_runtime_reservation_gb`); and the opt-in post-capture sizing
(`SGLANG_ENABLE_POST_CAPTURE_KV_SIZING`, default off, sgl-project/sglang#30157), which sizes the
pool after CUDA-graph capture from measured free memory. The appliance sets none of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from appliance.catalog import ModelArchitecture
from appliance.sizing import GIB, kv_bytes_per_token
from appliance.vocabulary import KvCacheDtype

PINNED_SGLANG_VERSION = "0.5.21"
# `--page-size`'s default (server_args page_size=1 in the logged ServerArgs of 0.4 and 0.5).
SGLANG_PAGE_SIZE = 1
# Memory the CUDA context and the torch-distributed/NCCL groups hold before "Load weight
# begin": CUDA's total less the logged pre-load free memory, on the one public log that shows
# both for a known card (QwQ-32B on 4x L4, 22.05 - 21.63 GiB; bench/data/sglang_memory_logs.csv).
# Within plan's 0.3 % of the logged KV tokens there (bench/sglang_sizing_accuracy.py).
SGLANG_PRE_LOAD_OVERHEAD_BYTES = int(0.42 * GIB)
# The highest mem_fraction_static the nearest-settings search offers (as for vLLM's utilization).
_MAX_SUGGESTED_FRACTION = 0.95


@dataclass(frozen=True)
class SglangMemoryEstimate:
    """Per GPU, in SGLang's terms: the static budget (weights + KV pool) and what is left."""

    sglang_version: str
    gpu_memory_gib: float  # one card's total, as CUDA reports it
    tensor_parallel_size: int
    mem_fraction_static: float
    other_processes_gib: float
    pre_load_free_gib: float  # free before the weights load (SGLang's base for the fraction)
    static_budget_gib: float  # mem_fraction_static x pre_load_free: weights + KV pool
    weights_gib: float
    outside_fraction_gib: float  # (1 - fraction) x pre_load_free: activations, CUDA graphs
    kv_cache_gib: float
    kv_bytes_per_token: int
    kv_cache_tokens: int
    context_length: int
    max_concurrency: float  # requests of context_length the pool holds at once
    fits: bool
    reason: str
    # The longest context_length one request can have (None when the pool is empty).
    largest_fitting_context_length: int | None
    # The smallest mem_fraction_static that holds one context_length request.
    fraction_needed: float

    def to_json_dict(self) -> dict[str, object]:
        return {"engine": "sglang", **asdict(self)}


def sglang_kv_pool_bytes(
    pre_load_free_bytes: float, post_load_free_bytes: float, mem_fraction_static: float
) -> float:
    """SGLang's KV budget: free memory after the weights, less the (1 - fraction) share of the
    free memory before them (negative when the weights overrun the static budget)."""
    return post_load_free_bytes - pre_load_free_bytes * (1 - mem_fraction_static)


def sglang_kv_tokens(
    pool_bytes: float, bytes_per_token: int, page_size: int = SGLANG_PAGE_SIZE
) -> int:
    """`calculate_pool_sizes`: whole tokens of the pool, rounded down to the page size."""
    if pool_bytes <= 0:
        return 0
    tokens = int(pool_bytes) // bytes_per_token
    return tokens // page_size * page_size


def estimate_sglang_memory(
    architecture: ModelArchitecture,
    weight_bytes_per_gpu: int,
    gpu_memory_bytes: int,
    *,
    tensor_parallel_size: int = 1,
    mem_fraction_static: float,
    context_length: int | None = None,
    kv_cache_dtype: KvCacheDtype = "auto",
    other_processes_bytes: int = 0,
    pre_load_overhead_bytes: int = SGLANG_PRE_LOAD_OVERHEAD_BYTES,
    page_size: int = SGLANG_PAGE_SIZE,
) -> SglangMemoryEstimate:
    """SGLang's KV pool on one of `tensor_parallel_size` GPUs of `gpu_memory_bytes` (CUDA's
    total), with `weight_bytes_per_gpu` loaded on each, and whether one request of
    `context_length` (default: the length the model's config allows) fits in it."""
    context = context_length or architecture.max_model_len_limit
    pre_load = gpu_memory_bytes - pre_load_overhead_bytes - other_processes_bytes
    per_token = kv_bytes_per_token(architecture, tensor_parallel_size, kv_cache_dtype)
    static_budget = pre_load * mem_fraction_static
    pool = static_budget - weight_bytes_per_gpu  # = post-load free - pre-load x (1 - fraction)
    tokens = sglang_kv_tokens(pool, per_token, page_size)
    needed = (weight_bytes_per_gpu + context * per_token) / pre_load if pre_load > 0 else math.inf
    fraction_needed = math.ceil(needed * 100) / 100 if math.isfinite(needed) else math.inf
    largest = tokens if tokens > 0 else None
    if pre_load <= 0:
        fits = False
        reason = (
            f"other processes ({other_processes_bytes / GIB:.2f} GiB) leave no free memory "
            "for SGLang on this GPU"
        )
    elif pool <= 0:
        fits = False
        reason = (
            f"the weights ({weight_bytes_per_gpu / GIB:.2f} GiB per GPU) fill SGLang's static "
            f"budget (mem_fraction_static {mem_fraction_static:g} x {pre_load / GIB:.2f} GiB "
            f"free = {static_budget / GIB:.2f} GiB), so SGLang {PINNED_SGLANG_VERSION} refuses "
            "to start (no memory left for the KV cache)"
        )
    elif tokens < context:
        fits = False
        reason = (
            f"SGLang's KV pool holds {tokens:,} tokens, fewer than one request of "
            f"context_length {context:,}: SGLang would start but reject prompts of "
            f"{max(tokens, 1):,} tokens or more"
        )
    else:
        fits = True
        reason = (
            f"fits: SGLang's KV pool holds {tokens:,} tokens, "
            f"{tokens / context:.2f} requests of {context:,}"
        )
    return SglangMemoryEstimate(
        sglang_version=PINNED_SGLANG_VERSION,
        gpu_memory_gib=gpu_memory_bytes / GIB,
        tensor_parallel_size=tensor_parallel_size,
        mem_fraction_static=mem_fraction_static,
        other_processes_gib=other_processes_bytes / GIB,
        pre_load_free_gib=pre_load / GIB,
        static_budget_gib=static_budget / GIB,
        weights_gib=weight_bytes_per_gpu / GIB,
        outside_fraction_gib=(pre_load - static_budget) / GIB,
        kv_cache_gib=max(pool, 0) / GIB,
        kv_bytes_per_token=per_token,
        kv_cache_tokens=tokens,
        context_length=context,
        max_concurrency=tokens / context,
        fits=fits,
        reason=reason,
        largest_fitting_context_length=largest,
        fraction_needed=fraction_needed,
    )


def nearest_sglang_settings(
    estimate: SglangMemoryEstimate, *, fp8_kv_tokens: int | None = None
) -> list[str]:
    """What makes SGLang hold one request, as profile keys, nearest first: a shorter
    max_model_len, a higher gpu_memory_utilization (SGLang's mem_fraction_static), an fp8 KV
    cache (`fp8_kv_tokens`: the pool's tokens with one, where the GPU has fp8)."""
    found: list[str] = []
    largest = estimate.largest_fitting_context_length
    if largest is not None and largest >= 1:
        found.append(f"spec.engine.max_model_len: {largest}")
    if estimate.mem_fraction_static < estimate.fraction_needed <= _MAX_SUGGESTED_FRACTION:
        found.append(f"spec.engine.gpu_memory_utilization: {estimate.fraction_needed:g}")
    if fp8_kv_tokens is not None and fp8_kv_tokens >= estimate.context_length:
        found.append("spec.engine.kv_cache_dtype: fp8")
    return found
