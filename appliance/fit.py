"""Fitting: whether a model, or a profile, fits a box, and the nearest settings that do.

The memory model (`sizing`) computes a budget for numbers it is given; this module turns a box
and a profile into those numbers (the GPUs the chat engine gets by `spec.gpus`, the memory TEI
holds beside it, the profile's own engine flags) and words the verdict in the operator's terms:
exit 4 with the nearest settings that fit, as CLI flags for `estimate` and as profile keys for
`plan` and `apply`. `recommend` ranks what fits; it does not decide fitting.

Pure: the resolved model is handed in (`local_model.resolve_profile_model` reads it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.catalog import GpuSpec, load_catalog
from appliance.cpu_target import CpuEstimate, estimate_cpu
from appliance.errors import BadInputError, EnvironmentNotReadyError, RefusedError
from appliance.hardware.box import Box, GpuInfo
from appliance.profile import Profile
from appliance.sglang_sizing import (
    SglangMemoryEstimate,
    estimate_sglang_memory,
    nearest_sglang_settings,
)
from appliance.sizing import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    PINNED_VLLM_VERSION,
    EngineFlags,
    MemoryEstimate,
    ResolvedModel,
    RuleFinding,
    SwitchedEngine,
    SwitchingFit,
    check_rules,
    choose_sleep_level,
    cuda_total_bytes,
    estimate_memory,
    loaded_weight_bytes,
    sleeping_residual_bytes,
    sleeping_weight_bytes,
    switching_fit,
    tei_memory_bytes,
)
from appliance.vocabulary import KvCacheDtype, Quantization, SleepLevel

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# What a checkpoint format costs in quality against BF16, in the recommender's points; also the
# order the nearest-settings search tries other checkpoints in (closest to the one asked first).
# MXFP4 is gpt-oss's only published checkpoint, the one its benchmark scores were measured on.
QUANTIZATION_QUALITY_LOSS: dict[str, float] = {
    "bf16": 0.0,
    "fp16": 0.0,
    "mxfp4": 0.0,
    "fp8": 0.1,
    "int8": 0.15,
    "nvfp4": 0.25,
    "awq": 0.3,
    "gptq": 0.35,
}


@dataclass(frozen=True)
class GpuTarget:
    """The cards one vLLM instance runs on, as sizing needs them (the smallest card decides)."""

    label: str  # "RTX 4090", "2x L40S", "24 GiB GPU"
    name: str  # NVML name, or a description for a bare memory size
    key: str | None  # GPU catalog key, when the card is in the catalog
    count: int
    memory_bytes: int  # one card's total as CUDA reports it (vLLM's base for utilization)
    compute_capability: tuple[int, int]
    bandwidth_gb_s: float | None
    p2p: bool  # peer-to-peer between the cards (False on GeForce)
    notes: tuple[str, ...] = ()


def _find_gpu(name: str) -> GpuSpec | None:
    catalog = load_catalog()
    found = catalog.gpu(name) or catalog.gpu_by_name(name)
    if found is not None:
        return found
    wanted = re.sub(r"[^a-z0-9]", "", name.lower())
    for gpu in catalog.gpus:
        key = re.sub(r"[^a-z0-9]", "", gpu.key)
        if wanted in (key, f"rtx{key}", key.removeprefix("rtx")):
            return gpu
    return None


def _target_from_spec(spec: GpuSpec, count: int, memory_bytes: int | None = None) -> GpuTarget:
    return GpuTarget(
        label=f"{count}x {spec.key}" if count > 1 else spec.key,
        name=spec.name,
        key=spec.key,
        count=count,
        memory_bytes=memory_bytes or cuda_total_bytes(spec.memory_total_bytes),
        compute_capability=spec.compute_capability,
        bandwidth_gb_s=spec.memory_bandwidth_gb_s,
        p2p=spec.p2p_default,
    )


def resolve_gpu(
    gpu: str | None = None, gpu_memory_gib: float | None = None, gpus: int = 1
) -> GpuTarget:
    """`--gpu NAME` (a catalog key such as rtx4090, or an NVML name) and/or `--gpu-memory-gib N`
    (one card's total as CUDA reports it; overrides the catalog's figure), times `--gpus N`."""
    if gpus < 1:
        raise BadInputError(f"--gpus must be at least 1, not {gpus}")
    memory = int(gpu_memory_gib * GIB) if gpu_memory_gib is not None else None
    if memory is not None and memory <= 0:
        raise BadInputError(f"--gpu-memory-gib must be positive, not {gpu_memory_gib}")
    if gpu is not None:
        spec = _find_gpu(gpu)
        if spec is None:
            keys = ", ".join(g.key for g in load_catalog().gpus)
            raise BadInputError(
                f"{gpu!r} is not a GPU in the catalog",
                hint=f"use one of: {keys}; or give the card's memory with --gpu-memory-gib N",
            )
        return _target_from_spec(spec, gpus, memory)
    if memory is None:
        raise BadInputError(
            "no GPU to size for",
            hint="give --simulate NAME (e.g. rtx4090, 2x4090, l40s, h100) or --gpu-memory-gib N",
        )
    return GpuTarget(
        label=f"{gpus}x {gpu_memory_gib:g} GiB GPU" if gpus > 1 else f"{gpu_memory_gib:g} GiB GPU",
        name=f"{gpu_memory_gib:g} GiB GPU",
        key=None,
        count=gpus,
        memory_bytes=memory,
        compute_capability=(8, 0),
        bandwidth_gb_s=None,
        p2p=True,
        notes=("GPU model unknown: assumed compute capability 8.0 and P2P between cards",),
    )


def gpu_target_from_box(box: Box) -> GpuTarget:
    """The box's GPUs as one target: the smallest card's memory and the lowest capability
    decide, because vLLM gives every tensor-parallel rank the same budget."""
    if not box.gpus:
        raise EnvironmentNotReadyError(
            "this box has no GPU that NVML can see, so there is nothing to size for",
            hint="run `appliance detect` for why, or try `--simulate rtx4090`",
        )
    catalog = load_catalog()
    specs = [catalog.gpu(g.catalog_key) if g.catalog_key else None for g in box.gpus]
    memories: list[int] = []
    for gpu, spec in zip(box.gpus, specs, strict=True):
        if gpu.memory_total_bytes is not None:
            memories.append(cuda_total_bytes(gpu.memory_total_bytes, gpu.memory_reserved_bytes))
        elif spec is not None:
            memories.append(cuda_total_bytes(spec.memory_total_bytes))
    if not memories:
        raise EnvironmentNotReadyError(
            "no GPU on this box reports its memory size (unified memory?)",
            hint="size by hand: appliance estimate MODEL --gpu-memory-gib N",
        )
    capabilities = [g.compute_capability for g in box.gpus if g.compute_capability is not None]
    capabilities += [s.compute_capability for s in specs if s is not None]
    bandwidths = [s.memory_bandwidth_gb_s for s in specs if s is not None]
    p2p = box.peer_to_peer
    if p2p is None:
        p2p = len(box.gpus) == 1 or all(s is not None and s.p2p_default for s in specs)
    notes: list[str] = []
    if not capabilities:
        notes.append("compute capability unknown: assumed 8.0")
    names = sorted({g.name for g in box.gpus})
    count = len(box.gpus)
    first = specs[0]
    short = first.key if first is not None and len(names) == 1 else " + ".join(names)
    return GpuTarget(
        label=box.simulated or (f"{count}x {short}" if count > 1 else short),
        name=" + ".join(names),
        key=first.key if first is not None and len(names) == 1 else None,
        count=count,
        memory_bytes=min(memories),
        compute_capability=min(capabilities) if capabilities else (8, 0),
        bandwidth_gb_s=min(bandwidths) if len(bandwidths) == count else None,
        p2p=p2p,
        notes=tuple(notes),
    )


class DoesNotFitError(RefusedError):
    """vLLM would refuse to start with these settings (exit 4). Carries the estimate, so
    `--json` can still print the split, and the nearest settings that do fit."""

    def __init__(
        self, message: str, hint: str | None, estimate: MemoryEstimate, nearest: tuple[str, ...]
    ) -> None:
        super().__init__(message, hint)
        self.estimate = estimate
        self.nearest = nearest


def _quantization_of(model: ResolvedModel) -> Quantization | None:
    return model.quantization


def rule_findings(
    model: ResolvedModel, target: GpuTarget, tensor_parallel_size: int
) -> list[RuleFinding]:
    quantization = _quantization_of(model)
    if quantization is None:
        return []
    return check_rules(
        model.architecture,
        quantization=quantization,
        compute_capability=target.compute_capability,
        tensor_parallel_size=tensor_parallel_size,
        p2p_supported=target.p2p,
        params_billion=model.params_billion,
        active_params_billion=model.active_params_billion,
    )


def budget(
    model: ResolvedModel,
    target: GpuTarget,
    *,
    tp: int,
    flags: EngineFlags,
    vllm_version: str,
    other_processes_bytes: int,
) -> MemoryEstimate:
    return estimate_memory(
        model.architecture,
        loaded_weight_bytes(
            model.architecture,
            model.weight_bytes,
            model.quantization,
            target.compute_capability,
            tp,
        ),
        target.memory_bytes,
        gpu_count=max(tp, target.count),
        tensor_parallel_size=tp,
        compute_capability=target.compute_capability,
        flags=flags,
        vllm_version=vllm_version,
        other_processes_bytes=other_processes_bytes,
        gpu_name=target.name,
    )


def estimate_for(
    model: ResolvedModel,
    target: GpuTarget,
    *,
    tensor_parallel_size: int | None = None,
    flags: EngineFlags | None = None,
    vllm_version: str = PINNED_VLLM_VERSION,
    other_processes_bytes: int = 0,
) -> MemoryEstimate:
    """What `appliance estimate` prints: the per-GPU split for `model` on `target`.

    Raises RefusedError when a hard rule stops vLLM (TP does not divide the heads, a
    quantization the GPU cannot run), and DoesNotFitError when vLLM would refuse to start; both
    say why and what nearest setting would work. BadInputError for a TP larger than the GPUs.
    """
    flags = flags or EngineFlags()
    tp = tensor_parallel_size or target.count
    if tp > target.count:
        raise BadInputError(
            f"--tp {tp} needs {tp} GPUs but --gpus is {target.count}",
            hint=f"add --gpus {tp}, or lower --tp",
        )
    _refuse_beyond_model_limit(model, flags)
    findings = rule_findings(model, target, tp)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise RefusedError(
            "; ".join(f.message for f in errors),
            hint=f"model {model.label} on {target.label}",
        )
    estimate = budget(
        model,
        target,
        tp=tp,
        flags=flags,
        vllm_version=vllm_version,
        other_processes_bytes=other_processes_bytes,
    )
    notes = estimate.notes + target.notes + tuple(f.message for f in findings)
    estimate = dataclasses.replace(estimate, notes=notes)
    if estimate.fits:
        return estimate
    nearest = nearest_fitting_settings(
        model,
        target,
        estimate,
        flags=flags,
        vllm_version=vllm_version,
        other_processes_bytes=other_processes_bytes,
    )
    hint = (
        "nearest settings that fit: " + "; ".join(nearest)
        if nearest
        else "nothing close fits on this GPU: choose a smaller model or a larger GPU"
    )
    raise DoesNotFitError(
        f"{model.label} does not fit on {target.label}: {estimate.reason}",
        hint,
        estimate,
        tuple(nearest),
    )


# ---------------------------------------------------------------------------------------------
# A profile on a box


def chat_gpus(profile: Profile, box: Box) -> tuple[GpuInfo, ...]:
    """The box's GPUs the chat engine gets, in the order the profile lists them (none on the
    CPU target)."""
    if profile.spec.engine.device == "cpu":
        return ()
    wanted = profile.spec.gpus
    if wanted == "all":
        return tuple(box.gpus)
    chosen: list[GpuInfo] = []
    for ref in wanted:
        chosen.append(box_gpu(box, ref, "spec.gpus"))
    return tuple(chosen)


def box_gpu(box: Box, ref: int | str, where: str) -> GpuInfo:
    if not box.gpus:
        # Not the profile's fault: the box has no GPU the driver shows (or no driver at all).
        raise EnvironmentNotReadyError(
            f"{where} names GPU {ref}, but this box has no GPU that NVML can see",
            hint="run `appliance detect` for what is missing (driver, GPU), "
            "or plan for another box with --simulate NAME",
        )
    for gpu in box.gpus:
        if ref in (gpu.index, gpu.uuid):
            return gpu
    present = ", ".join(f"{g.index} ({g.uuid})" for g in box.gpus) or "none"
    raise BadInputError(
        f"{where} names GPU {ref}, which this box does not have (GPUs here: {present})",
        hint="list GPUs by the index or UUID `nvidia-smi -L` prints on this box",
    )


def tei_gpu(profile: Profile, box: Box) -> GpuInfo | None:
    """The GPU TEI runs on: the one the profile names, else the chat engine's first; None on
    the CPU or with embeddings off."""
    embeddings = profile.spec.embeddings
    if not profile.spec.embeddings_enabled or embeddings is None or embeddings.device == "cpu":
        return None
    if embeddings.gpu is not None:
        return box_gpu(box, embeddings.gpu, "spec.embeddings.gpu")
    chat = chat_gpus(profile, box)
    return chat[0] if chat else None


def tei_bytes_beside_chat(profile: Profile, box: Box) -> int:
    """GPU memory TEI holds on one of the chat engine's GPUs before vLLM starts (0 when TEI runs
    on the CPU, on another GPU, or its model's size is not known here)."""
    gpu = tei_gpu(profile, box)
    embeddings = profile.spec.embeddings
    if gpu is None or embeddings is None or embeddings.repo is None:
        return 0
    if gpu.index not in {chat.index for chat in chat_gpus(profile, box)}:
        return 0
    model = load_catalog().embedding(embeddings.repo)
    if model is None:
        return 0
    return tei_memory_bytes(model.params_million, model.tei_bytes_per_param)


def gpu_target_for_profile(profile: Profile, box: Box) -> GpuTarget | None:
    """The GPUs the profile's chat engine gets (`spec.gpus`), as sizing needs them; None when
    it gets none (the CPU target, or a box with no GPU)."""
    gpus = chat_gpus(profile, box) if box.gpus else ()
    if not gpus:
        return None
    return gpu_target_from_box(box.model_copy(update={"gpus": list(gpus)}))


def fit_profile(
    profile: Profile, box: Box, model: ResolvedModel | None
) -> MemoryEstimate | SglangMemoryEstimate | CpuEstimate | None:
    """The profile's chat engine on this box, sized from the profile's own settings: on the GPUs
    `spec.gpus` gives it with TEI's share taken out, or in host RAM on the CPU target. None for
    what is not sized (`model` None: not resolvable here; a GPU profile on a box with no GPU).

    Raises `RefusedError` / `DoesNotFitError` (exit 4) for what vLLM would refuse, with the
    nearest settings that fit worded as profile keys.
    """
    if model is None:
        return None
    engine = profile.spec.engine
    if engine.device == "cpu":
        return estimate_cpu_for(
            model,
            box,
            max_model_len=engine.max_model_len,
            max_num_seqs=engine.max_num_seqs,
            kv_cache_gib=engine.cpu_kv_cache_gib,
            kv_cache_dtype=engine.kv_cache_dtype,
        )
    target = gpu_target_for_profile(profile, box)
    if target is None:
        return None
    if engine.kind == "sglang":
        return fit_sglang(profile, model, target, tei_bytes_beside_chat(profile, box))
    flags = EngineFlags(
        gpu_memory_utilization=engine.gpu_memory_utilization,
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        kv_cache_dtype=engine.kv_cache_dtype,
        enforce_eager=engine.enforce_eager,
    )
    try:
        return estimate_for(
            model,
            target,
            tensor_parallel_size=engine.tensor_parallel_size,
            flags=flags,
            other_processes_bytes=tei_bytes_beside_chat(profile, box),
        )
    except DoesNotFitError as error:
        if error.nearest:
            error.hint = "nearest settings that fit: " + "; ".join(
                in_profile_terms(setting, model) for setting in error.nearest
            )
        raise


def fit_sglang(
    profile: Profile, model: ResolvedModel, target: GpuTarget, other_processes_bytes: int
) -> SglangMemoryEstimate:
    """An SGLang profile on its GPUs, by SGLang's own budget (`appliance.sglang_sizing`):
    RefusedError (exit 4) when SGLang would refuse to start or could not hold one request of
    max_model_len, with the nearest settings that fit as profile keys."""
    engine = profile.spec.engine
    estimate, nearest = estimate_sglang_for(
        model,
        target,
        tensor_parallel_size=engine.tensor_parallel_size,
        mem_fraction_static=engine.gpu_memory_utilization,
        context_length=engine.max_model_len,
        kv_cache_dtype=engine.kv_cache_dtype,
        other_processes_bytes=other_processes_bytes,
        limit_hint="set spec.engine.max_model_len: {limit} or less",
    )
    if estimate.fits:
        return estimate
    raise RefusedError(
        f"{model.label} does not fit on {target.label}: {estimate.reason}",
        hint="nearest settings that fit: " + "; ".join(nearest)
        if nearest
        else "nothing close fits on this GPU: choose a smaller model or a larger GPU",
    )


def estimate_sglang_for(
    model: ResolvedModel,
    target: GpuTarget,
    *,
    tensor_parallel_size: int,
    mem_fraction_static: float,
    context_length: int | None,
    kv_cache_dtype: KvCacheDtype = "auto",
    other_processes_bytes: int = 0,
    limit_hint: str = "use --max-model-len {limit} or less",
) -> tuple[SglangMemoryEstimate, list[str]]:
    """`model` on `target` by SGLang's budget, and when it does not fit the nearest settings
    that do, as profile keys (`nearest_sglang_settings`). RefusedError (exit 4) for what stops
    SGLang before memory: a hard rule (TP, quantization) or a context longer than the model's
    config allows (`limit_hint` says what to do, with `{limit}`)."""
    tp = tensor_parallel_size
    errors = [f for f in rule_findings(model, target, tp) if f.severity == "error"]
    if errors:
        raise RefusedError(
            "; ".join(f.message for f in errors), hint=f"model {model.label} on {target.label}"
        )
    limit = model.architecture.max_model_len_limit
    if context_length is not None and context_length > limit:
        # SGLang refuses a context_length above the model's config unless an environment
        # variable (SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN) overrides it.
        raise RefusedError(
            f"max_model_len {context_length} is longer than {model.label} allows "
            f"({limit} tokens by its config.json); SGLang refuses to start with it",
            hint=limit_hint.format(limit=limit),
        )
    # Each rank holds its 1/tp share (SGLang's "Load weight end" is per GPU), as vLLM's split.
    weights = -(
        -loaded_weight_bytes(
            model.architecture,
            model.weight_bytes,
            model.quantization,
            target.compute_capability,
            tp,
        )
        // tp
    )

    def sized(dtype: KvCacheDtype) -> SglangMemoryEstimate:
        return estimate_sglang_memory(
            model.architecture,
            weights,
            target.memory_bytes,
            tensor_parallel_size=tp,
            mem_fraction_static=mem_fraction_static,
            context_length=context_length,
            kv_cache_dtype=dtype,
            other_processes_bytes=other_processes_bytes,
        )

    estimate = sized(kv_cache_dtype)
    if estimate.fits:
        return estimate, []
    fp8 = kv_cache_dtype == "auto" and target.compute_capability >= (8, 9)
    nearest = nearest_sglang_settings(
        estimate, fp8_kv_tokens=sized("fp8").kv_cache_tokens if fp8 else None
    )
    return estimate, nearest


def _estimate_header(label: str, engine: str, gpu_memory_gib: float, tp_size: int) -> str:
    """The first line of an estimate: which engine, on how large a GPU, per GPU under TP."""
    tp = f" (per GPU, tensor parallel {tp_size})" if tp_size > 1 else ""
    return f"{label}{' — ' if label else ''}{engine}, {gpu_memory_gib:.2f} GiB GPU{tp}"


def render_sglang_estimate(estimate: SglangMemoryEstimate, label: str = "") -> str:
    """SGLang's budget as an operator reads it: the static share, its split, the verdict."""
    e = estimate
    lines = [
        _estimate_header(
            label, f"SGLang {e.sglang_version}", e.gpu_memory_gib, e.tensor_parallel_size
        ),
        f"  free before the weights {e.pre_load_free_gib:8.2f} GiB"
        + (f"  (other processes {e.other_processes_gib:.2f} GiB)" if e.other_processes_gib else ""),
        f"  SGLang's static share   {e.static_budget_gib:8.2f} GiB"
        f"  (mem_fraction_static {e.mem_fraction_static:g})",
        f"  weights               - {e.weights_gib:8.2f} GiB",
        f"  KV cache              = {e.kv_cache_gib:8.2f} GiB  ({e.kv_cache_tokens:,} tokens, "
        f"{e.kv_bytes_per_token:,} bytes each)",
        f"  outside the share       {e.outside_fraction_gib:8.2f} GiB  (activations, CUDA graphs)",
        f"  context_length {e.context_length:,}: {e.max_concurrency:.2f} requests at once",
        f"  {e.reason}" if e.fits else f"  DOES NOT FIT: {e.reason}",
    ]
    return "\n".join(lines)


def estimate_cpu_for(
    model: ResolvedModel,
    box: Box,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    kv_cache_gib: int | None = None,
    kv_cache_dtype: KvCacheDtype = "auto",
) -> CpuEstimate:
    """`model` on the CPU target of `box`, in RAM terms (`appliance.cpu_target`); RefusedError
    with the reason for what it would refuse."""
    return estimate_cpu(
        label=model.label,
        architecture=model.architecture,
        weight_bytes=model.weight_bytes,
        params_billion=model.params_billion,
        quantization=model.quantization,
        host_memory_bytes=box.host.memory_total_bytes,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_gib=kv_cache_gib,
        kv_cache_dtype=kv_cache_dtype,
    )


def _refuse_beyond_model_limit(model: ResolvedModel, flags: EngineFlags) -> None:
    """vLLM refuses a max_model_len above the length its config allows (see
    `ModelArchitecture.max_model_len_limit`) before it looks at memory."""
    limit = model.architecture.max_model_len_limit
    wanted = flags.max_model_len
    if wanted is None or wanted <= limit:
        return
    architecture = model.architecture
    rope = architecture.rope_scaling
    basis = f"max_position_embeddings {architecture.max_position_embeddings}"
    if rope is not None and limit != architecture.max_position_embeddings:
        if rope.rope_type == "yarn" and rope.original_max_position_embeddings:
            basis = f"original_max_position_embeddings {rope.original_max_position_embeddings}"
        basis += f" x {rope.rope_type} RoPE factor {rope.factor or 1:g}"
    raise RefusedError(
        f"max_model_len {wanted} is longer than {model.label} allows: {limit} tokens ({basis} "
        "in its config.json); vLLM refuses to start with it",
        hint=f"use --max-model-len {limit} or less",
    )


def nearest_fitting_settings(
    model: ResolvedModel,
    target: GpuTarget,
    estimate: MemoryEstimate,
    *,
    flags: EngineFlags,
    vllm_version: str = PINNED_VLLM_VERSION,
    other_processes_bytes: int = 0,
    limit: int = 3,
) -> list[str]:
    """Changes that make vLLM start, nearest first: a shorter max_model_len, an fp8 KV cache,
    a higher gpu_memory_utilization, then more GPUs or a smaller checkpoint of the same model
    (each with the max_model_len it can hold when the full one does not)."""
    tp = estimate.tensor_parallel_size
    found: list[str] = []
    shortest_useful = min(4096, estimate.max_model_len)

    def attempt(
        text: str,
        changed: EngineFlags,
        candidate: ResolvedModel = model,
        new_tp: int = tp,
    ) -> None:
        if len(found) >= limit:
            return
        if any(f.severity == "error" for f in rule_findings(candidate, target, new_tp)):
            return
        result = budget(
            candidate,
            target,
            tp=new_tp,
            flags=changed,
            vllm_version=vllm_version,
            other_processes_bytes=other_processes_bytes,
        )
        if result.fits:
            found.append(text)
            return
        largest = result.largest_fitting_max_model_len
        if largest is not None and largest >= shortest_useful:
            found.append(f"{text} --max-model-len {largest}".strip())

    largest = estimate.largest_fitting_max_model_len
    if largest is not None and largest >= 1:
        found.append(f"--max-model-len {largest}")
    cc = target.compute_capability
    if flags.kv_cache_dtype == "auto" and cc >= (8, 9):
        attempt("--kv-cache-dtype fp8", dataclasses.replace(flags, kv_cache_dtype="fp8"))
    if estimate.gpu_memory_utilization < 0.95:
        attempt(
            "--gpu-memory-utilization 0.95",
            dataclasses.replace(flags, gpu_memory_utilization=0.95),
        )
    bigger_tp = [t for t in TENSOR_PARALLEL_SIZES if t > tp]
    variants: list[ResolvedModel] = []
    if model.model is not None:
        for variant in sorted(
            model.model.variants, key=lambda v: QUANTIZATION_QUALITY_LOSS[v.quantization]
        ):
            if variant.weight_bytes < model.weight_bytes:
                variants.append(ResolvedModel.of_variant(model.model, variant))
    # Fewest GPUs first; on each count, the checkpoint closest to the one asked for.
    for new_tp in [tp, *bigger_tp]:
        where = "" if new_tp <= target.count else f" (on {new_tp} such GPUs)"
        tp_text = "" if new_tp == tp else f" --gpus {new_tp} --tp {new_tp}{where}"
        for candidate in ([model] if new_tp != tp else []) + variants:
            quant = f"--quantization {candidate.quantization}" if candidate is not model else ""
            attempt(f"{quant}{tp_text}".strip(), flags, candidate, new_tp)
    return found[:limit]


# `nearest_fitting_settings` speaks `appliance estimate`'s flags; a profile's reader needs keys.
_PROFILE_KEYS = {
    "max-model-len": "spec.engine.max_model_len",
    "kv-cache-dtype": "spec.engine.kv_cache_dtype",
    "gpu-memory-utilization": "spec.engine.gpu_memory_utilization",
    "tp": "spec.engine.tensor_parallel_size",
    "quantization": "spec.model.quantization",
}


def in_profile_terms(setting: str, model: ResolvedModel) -> str:
    """One of `nearest_fitting_settings`' answers as profile keys: `--quantization awq --gpus 2
    --tp 2 (on 2 such GPUs)` becomes `spec.model.repo: …-AWQ, spec.model.quantization: awq,
    spec.gpus: [0, 1], spec.engine.tensor_parallel_size: 2 (on 2 such GPUs)`."""
    where = re.search(r"\(on .*?\)", setting)
    parts: list[str] = []
    for flag, value in re.findall(r"--([a-z-]+) (\S+)", setting):
        if flag == "gpus":
            parts.append(f"spec.gpus: {list(range(int(value)))}")
        elif flag == "quantization" and model.model is not None:
            repos = [v.repo for v in model.model.variants if v.quantization == value]
            if repos:
                parts.append(f"spec.model.repo: {repos[0]}")
            parts.append(f"spec.model.quantization: {value}")
        else:
            parts.append(f"{_PROFILE_KEYS.get(flag, '--' + flag)}: {value}")
    return ", ".join(parts) + (f" {where.group(0)}" if where else "")


def estimate_json(estimate: MemoryEstimate) -> dict[str, object]:
    """`appliance estimate --json`: the estimate's fields (weights_gib, activation_gib,
    non_torch_gib, cuda_graph_gib, kv_cache_gib, kv_cache_tokens, max_concurrency, fits,
    reason, …)."""
    return estimate.to_json_dict()


def utilization_text(utilization: float) -> str:
    """A gpu_memory_utilization with where it came from: the one default (the pinned vLLM
    release's, which `estimate`, `recommend` and a profile share) or a choice."""
    if utilization == DEFAULT_GPU_MEMORY_UTILIZATION:
        return f"{utilization:g}, vLLM {PINNED_VLLM_VERSION}'s default"
    if utilization < DEFAULT_GPU_MEMORY_UTILIZATION:
        return f"{utilization:g}, below the default {DEFAULT_GPU_MEMORY_UTILIZATION:g}"
    return f"{utilization:g}, above the default {DEFAULT_GPU_MEMORY_UTILIZATION:g}"


def render_estimate(estimate: MemoryEstimate, label: str = "") -> str:
    """The estimate as an operator reads it: the per-GPU split, then the verdict."""
    e = estimate
    lines = [
        _estimate_header(label, f"vLLM {e.vllm_version}", e.gpu_memory_gib, e.tensor_parallel_size),
        f"  vLLM may use           {e.requested_gib:8.2f} GiB"
        f"  (gpu_memory_utilization {utilization_text(e.gpu_memory_utilization)})",
        f"  weights              - {e.weights_gib:8.2f} GiB",
        f"  activations (peak)   - {e.activation_gib:8.2f} GiB",
        f"  non-torch            - {e.non_torch_gib:8.2f} GiB",
        f"  CUDA graphs          - {e.cuda_graph_gib:8.2f} GiB",
        f"  = KV cache             {e.kv_cache_gib:8.2f} GiB  "
        f"({e.kv_bytes_per_token / 1024:.0f} KiB per token)",
        f"  KV cache tokens        {e.kv_cache_tokens:>8,}",
        f"  max_model_len          {e.max_model_len:>8,}   max_num_seqs {e.max_num_seqs}, "
        f"max_num_batched_tokens {e.max_num_batched_tokens}",
        f"  max concurrency        {e.max_concurrency:8.2f}   requests of max_model_len",
    ]
    if e.other_processes_gib:
        lines.insert(2, f"  (other processes hold {e.other_processes_gib:.2f} GiB)")
    verdict = e.reason.removeprefix("fits: ")
    lines.append(("FITS: " if e.fits else "DOES NOT FIT: ") + verdict)
    lines.extend(f"  note: {note}" for note in e.notes)
    return "\n".join(lines)


def fit_switching(
    profile: Profile, box: Box, models: Sequence[ResolvedModel | None]
) -> SwitchingFit | None:
    """Several chat models (spec.switching) on the chat engine's GPUs, `models` resolved in
    `spec.switched_models` order (None where not resolvable: sized by its budget and the
    residual floor). Each model must fit alone (`fit_profile`), and all together as
    `sizing.switching_fit` says; None for a profile with one chat model or a box without GPUs.

    Raises `RefusedError` (exit 4) with the numbers in one line when they do not fit together.
    """
    switching = profile.spec.switching
    target = gpu_target_for_profile(profile, box)
    if switching is None or target is None:
        return None
    views = [profile, *(profile.as_switched(m) for m in switching.models)]
    engines = []
    for view, model in zip(views, models, strict=True):
        estimate = fit_profile(view, box, model)
        engine = view.spec.engine
        engines.append(
            SwitchedEngine(
                served_name=view.spec.model.served_name,
                requested_bytes=int(target.memory_bytes * engine.gpu_memory_utilization),
                residual_bytes=sleeping_residual_bytes(
                    estimate if isinstance(estimate, MemoryEstimate) else None
                ),
                weight_bytes=model.weight_bytes if model is not None else None,
            )
        )
    level, reason = sleep_level_for(
        switching.sleep_level, [e.weight_bytes for e in engines], box.host.memory_total_bytes
    )
    verdict = switching_fit(
        engines,
        gpu_memory_bytes=target.memory_bytes,
        other_processes_bytes=tei_bytes_beside_chat(profile, box),
        host_memory_bytes=box.host.memory_total_bytes,
        sleep_level=level,
    )
    if reason:
        verdict = dataclasses.replace(verdict, sleep_level=level, sleep_reason=reason)
    if not verdict.fits:
        hint = (
            "lower gpu_memory_utilization (spec.engine's or the switched model's), or drop a "
            "model from spec.switching.models"
            if verdict.gpu_need_bytes > verdict.gpu_memory_bytes
            else "write spec.switching.sleep_level: 2, or drop a model"
        )
        raise RefusedError(verdict.reason, hint)
    return verdict


def sleep_level_for(
    asked: SleepLevel | Literal["auto"],
    weights: Sequence[int | None],
    host_memory_bytes: int | None,
) -> tuple[SleepLevel, str]:
    """The sleep level several chat models use: the profile's, or (auto) the one
    `sizing.choose_sleep_level` picks from the host's RAM; the reason ("" when the profile
    set it). `weights`: each chat model's weight bytes (None: not known)."""
    if asked != "auto":
        return asked, ""
    return choose_sleep_level(sleeping_weight_bytes(weights), host_memory_bytes)


def sleeping_residuals(
    profile: Profile, box: Box, models: Sequence[ResolvedModel | None]
) -> dict[str, int]:
    """Several chat models (spec.switching): the per-GPU memory each engine keeps while it
    sleeps, by served name (`sizing.sleeping_residual_bytes`, as `fit_switching` counts it);
    `models` resolved in `spec.switched_models` order."""
    switching = profile.spec.switching
    views = [profile, *(profile.as_switched(m) for m in switching.models)] if switching else []
    residuals = {}
    for view, model in zip(views, models, strict=True):
        estimate = fit_profile(view, box, model)
        residuals[view.spec.model.served_name] = sleeping_residual_bytes(
            estimate if isinstance(estimate, MemoryEstimate) else None
        )
    return residuals


def fits_beside(
    profile: Profile, box: Box, old_utilization: float, asleep: Sequence[int] = ()
) -> tuple[bool, str]:
    """Whether a model update's new chat engine fits beside the old one (blue/green): vLLM
    takes gpu_memory_utilization of each GPU's memory when it starts, so the two shares, TEI's
    on the same GPU and what the `asleep` engines keep (spec.switching: their residual bytes
    per GPU) must fit together. The reason is one line with the numbers."""
    if profile.spec.engine.device == "cpu":
        return False, "the chat engine runs on the CPU, where two copies of the model do not fit"
    target = gpu_target_for_profile(profile, box)
    if target is None:
        return False, "no GPU to size the two engines on"
    memory = target.memory_bytes
    new = profile.spec.engine.gpu_memory_utilization
    tei = tei_bytes_beside_chat(profile, box)
    need = int((old_utilization + new) * memory) + tei + sum(asleep)
    beside = f" + TEI {tei / GIB:.1f} GiB" if tei else ""
    if asleep:
        beside += f" + {len(asleep)} sleeping engine(s) {sum(asleep) / GIB:.1f} GiB"
    numbers = (
        f"old {old_utilization:.2f} + new {new:.2f} of {memory / GIB:.1f} GiB{beside} = "
        f"{need / GIB:.1f} GiB per GPU"
    )
    if need <= memory:
        return True, f"both engines fit: {numbers}"
    return False, f"both engines do not fit: {numbers} > {memory / GIB:.1f} GiB"
