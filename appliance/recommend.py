"""`appliance estimate` and `appliance recommend`: the memory model applied to a GPU, a box and a
workload, with reasons a person can check.

Pure: takes what `appliance.hardware` and `appliance.local_model` produced (a `Box`, a
`ResolvedModel`) and the catalog's data; no NVML, Docker, disk or network here.

What must stay true:
- Every candidate the recommender ranks starts in vLLM by the memory model (`estimate_memory`
  says it fits, with TEI's share held back when it shares the GPU) and passes the hard rules
  (`check_rules`); everything else is in `rejected`, each with its reason.
- The top candidate becomes a `Profile` that validates and survives `dump_profile` /
  `parse_profile`.
- Ranking is a stated formula (`SCORE_TEXT`), not a hidden preference: quality tier within a size
  class, speed from the bandwidth model (`sizing.DECODE_MODEL_TEXT`), and whether the workload's
  users fit at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from appliance.catalog import (
    ChatModel,
    EmbeddingModel,
    EngineEvidence,
    ModelVariant,
    load_catalog,
)
from appliance.cpu_target import (
    CPU_MAX_PARAMS_BILLION,
    CpuEstimate,
    cpu_estimate_json,
    render_cpu_estimate,
)
from appliance.errors import BadInputError, RefusedError
from appliance.fit import (
    QUANTIZATION_QUALITY_LOSS,
    TENSOR_PARALLEL_SIZES,
    GpuTarget,
    budget,
    estimate_cpu_for,
    gpu_target_from_box,
    rule_findings,
    utilization_text,
)
from appliance.hardware.box import Box
from appliance.profile import (
    EmbeddingsSpec,
    EngineSpec,
    FallbackSpec,
    GatewaySpec,
    ModelSpec,
    Profile,
    RemoteApi,
    Spec,
    StorageSpec,
)
from appliance.sglang_sizing import SglangMemoryEstimate, estimate_sglang_memory
from appliance.sizing import (
    DECODE_MODEL_TEXT,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    PINNED_VLLM_VERSION,
    DecodeSpeed,
    EngineFlags,
    MemoryEstimate,
    ResolvedModel,
    RuleFinding,
    decode_speed,
    kv_bytes_per_token,
    loaded_weight_bytes,
    requests_held,
    tei_memory_bytes,
)
from appliance.vocabulary import EngineKind, KvCacheDtype, Quantization

WorkloadKind = Literal["chat", "rag", "batch"]
Preference = Literal["quality", "balanced", "speed"]
# The remote API a recommended profile names for fallback, left off until an admin switches it
# on: OpenAI's, which most teams already hold a key for. The key is named, never written; the
# admin changes base_url, model_map and api_key_env for another OpenAI-compatible API.
FALLBACK_BASE_URL = "https://api.openai.com/v1"
FALLBACK_API_KEY_ENV = "OPENAI_API_KEY"
FALLBACK_REMOTE_MODEL = "gpt-4o-mini"  # in the list-price table, so `appliance cost` prices it
# Kept free beside TEI and vLLM's own CUDA context, so neither start-up races the other.
_START_UP_MARGIN_BYTES = int(0.25 * GIB)
_CUDA_CONTEXT_BYTES = int(0.45 * GIB)  # vLLM's context, created before its free-memory check
# The engine's why where no entry of the catalog's engine_evidence.yaml matches the candidate.
NO_ENGINE_EVIDENCE_TEXT = (
    "vLLM: no public reproducible benchmark shows SGLang ahead for this workload"
)


# ---------------------------------------------------------------------------------------------
# The GPU being sized


# ---------------------------------------------------------------------------------------------
# appliance estimate


# ---------------------------------------------------------------------------------------------
# appliance recommend


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What the box is for. `context` is the max_model_len wanted; a request is typically
    `prompt_tokens + output_tokens` long; `users` requests run at once at peak."""

    kind: WorkloadKind
    users: int
    prompt_tokens: int
    output_tokens: int
    context: int
    preference: Preference = "balanced"
    embeddings: bool = False  # TEI on the same box; it shares GPU 0 unless a GPU is left free
    embedding_model: str = "bge-m3"
    allow_gated: bool = False  # a Hugging Face token with the licence accepted is at hand
    vllm_version: str = PINNED_VLLM_VERSION

    # Typical shapes per kind: chat turns carry history, RAG prompts carry retrieved chunks,
    # batch jobs are short and throughput-bound.
    DEFAULTS: ClassVar[dict[str, tuple[int, int, int, int, Preference, bool]]] = {
        "chat": (10, 1500, 500, 8192, "balanced", False),
        "rag": (10, 4000, 400, 16384, "balanced", True),
        "batch": (64, 1000, 500, 4096, "speed", False),
    }

    def __post_init__(self) -> None:
        for name in ("users", "prompt_tokens", "output_tokens", "context"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.prompt_tokens + self.output_tokens > self.context:
            raise BadInputError(
                f"a typical request ({self.prompt_tokens} prompt + {self.output_tokens} output "
                f"tokens) is longer than the context {self.context}",
                hint="raise --context, or lower --prompt-tokens / --output-tokens",
            )

    @classmethod
    def for_kind(
        cls,
        kind: WorkloadKind,
        *,
        users: int | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
        context: int | None = None,
        preference: Preference | None = None,
        embeddings: bool | None = None,
        embedding_model: str = "bge-m3",
        allow_gated: bool = False,
        vllm_version: str = PINNED_VLLM_VERSION,
    ) -> Workload:
        """A workload with the kind's typical numbers for whatever is not given."""
        if kind not in cls.DEFAULTS:
            raise BadInputError(f"unknown workload {kind!r}", hint="use chat, rag or batch")
        d_users, d_prompt, d_output, d_context, d_pref, d_emb = cls.DEFAULTS[kind]
        context = context or max(d_context, (prompt_tokens or 0) + (output_tokens or 0))
        output = output_tokens or min(d_output, max(1, context // 4))
        prompt = prompt_tokens or max(1, min(d_prompt, context - output))
        return cls(
            kind=kind,
            users=users or d_users,
            prompt_tokens=prompt,
            output_tokens=output,
            context=context,
            preference=preference or d_pref,
            embeddings=d_emb if embeddings is None else embeddings,
            embedding_model=embedding_model,
            allow_gated=allow_gated,
            vllm_version=vllm_version,
        )

    @property
    def request_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class Candidate:
    """One deployable choice, with the numbers that justify it."""

    model_key: str
    model_name: str
    repo: str
    quantization: Quantization
    quality_tier: str
    size_class: str
    params_billion: float
    tensor_parallel_size: int
    gpus: tuple[int, ...]
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    kv_cache_dtype: KvCacheDtype
    enable_prefix_caching: bool
    disable_custom_all_reduce: bool
    profile_quantization: Quantization  # fp16 where the GPU has no bf16
    embeddings_gpu: int | None  # None: no TEI on a GPU
    tei_reserved_gib: float
    estimate: MemoryEstimate
    concurrency_at_context: float  # requests of max_model_len held at once
    concurrency_at_request: int  # whole requests of prompt + output tokens the KV cache holds
    running_at_once: int  # requests decoding together in `decode`: the users, up to max_num_seqs
    decode: DecodeSpeed
    score: float
    why: str
    warnings: tuple[str, ...] = ()
    # The chat engine: SGLang only where a benchmark in engine_evidence.yaml matches (see
    # `matching_evidence`); then `sglang_estimate` is SGLang's own budget for the same settings,
    # and the fit, max_num_seqs and concurrency_at_request come from it.
    engine: EngineKind = "vllm"
    engine_why: str = NO_ENGINE_EVIDENCE_TEXT
    sglang_estimate: SglangMemoryEstimate | None = None

    def at_once_text(self) -> str:
        """The card's numbers, from the same fields as the profile and the why: what vLLM runs
        at once (the profile's max_num_seqs) and the decode speed each user sees."""
        return (
            f"{self.max_num_seqs} at once · "
            f"{self.decode.tokens_per_second_per_request:.0f} tok/s per user"
        )

    def to_json_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["estimate"] = self.estimate.to_json_dict()
        data["sglang_estimate"] = (
            self.sglang_estimate.to_json_dict() if self.sglang_estimate is not None else None
        )
        return data


@dataclass(frozen=True)
class Rejected:
    model_key: str
    quantization: Quantization
    tensor_parallel_size: int | None  # None: rejected whatever the TP
    reason: str


@dataclass(frozen=True)
class Recommendation:
    target: GpuTarget
    workload: Workload
    candidates: tuple[Candidate, ...]  # best first
    rejected: tuple[Rejected, ...]
    decode_model: str = DECODE_MODEL_TEXT
    score_model: str = field(default="")
    embedding: EmbeddingModel | None = None
    considered: str = "the catalog"  # what was ranked: the catalog, or `recommend --model`'s repo

    @property
    def top(self) -> Candidate:
        """The first choice; RefusedError (exit 4) when nothing fits, with the reasons."""
        if not self.candidates:
            reasons = sorted({r.reason.split(":")[0] for r in self.rejected})
            raise RefusedError(
                f"nothing in {self.considered} fits {self.target.label} for a "
                f"{self.workload.kind} "
                f"workload of {self.workload.users} users at {self.workload.context} tokens",
                hint="rejected because: "
                + "; ".join(reasons)
                + ". Try fewer --users, a shorter --context, or a larger box",
            )
        return self.candidates[0]

    def to_profile(
        self, name: str | None = None, index: int = 0, storage: StorageSpec | None = None
    ) -> Profile:
        """The chosen candidate (the top one by default) as a valid profile; `storage` where the
        box keeps weights and state, when not the defaults under /var/lib/llm-appliance."""
        chosen = self.top if index == 0 else self.candidates[index]
        engine = EngineSpec(
            kind=chosen.engine,
            max_model_len=chosen.max_model_len,
            max_num_seqs=chosen.max_num_seqs,
            gpu_memory_utilization=chosen.gpu_memory_utilization,
            enable_prefix_caching=chosen.enable_prefix_caching,
            kv_cache_dtype=chosen.kv_cache_dtype,
            tensor_parallel_size=chosen.tensor_parallel_size,
            disable_custom_all_reduce=chosen.disable_custom_all_reduce,
        )
        embeddings = None
        if self.workload.embeddings and self.embedding is not None:
            embeddings = EmbeddingsSpec(
                repo=self.embedding.repo,
                served_model_name=self.embedding.key,
                device="gpu" if chosen.embeddings_gpu is not None else "cpu",
                gpu=chosen.embeddings_gpu,
                extra_args=(
                    ("--dtype", self.embedding.tei_dtype) if self.embedding.tei_dtype else ()
                ),
            )
        spec = Spec(
            model=ModelSpec(
                repo=chosen.repo,
                quantization=chosen.profile_quantization,
                served_model_name=chosen.model_key,
            ),
            engine=engine,
            gpus=list(chosen.gpus),
            embeddings=embeddings,
            gateway=GatewaySpec(fallback=_fallback_to_complete(chosen.model_key)),
            storage=storage or StorageSpec(),
        )
        description = (
            f"{self.target.label} — {chosen.model_name} {chosen.quantization.upper()} for "
            f"{self.workload.kind}, {self.workload.users} users (appliance recommend)"
        )
        return Profile.from_spec(
            name or profile_name(self.target, self.workload), spec, description
        )

    def profile_comment(self, index: int = 0) -> str:
        """Why the profile holds these numbers, for `dump_profile(profile, comment=...)`."""
        chosen = self.candidates[index]
        paragraphs = [
            f"Written by `appliance recommend` for {self.target.label}, workload "
            f"{self.workload.kind}: {self.workload.users} users, {self.workload.prompt_tokens}"
            f" prompt + {self.workload.output_tokens} output tokens, context "
            f"{self.workload.context}.",
            f"Why: {chosen.why}",
            f"Memory per GPU: {_candidate_split_text(chosen)}.",
            f"Speed model: {self.decode_model}.",
            f"Fallback is off. To overflow to the remote API below when the box is down or "
            f"busy, set {FALLBACK_API_KEY_ENV} in the gateway's environment "
            "(/etc/llm-appliance/gateway.env for its systemd unit), then run `appliance fallback "
            "auto`. For another OpenAI-compatible API, change base_url, model_map and "
            "api_key_env (or api_key_file).",
        ]
        return "\n".join(
            textwrap.fill(text, width=96, subsequent_indent="  ") for text in paragraphs
        )

    def to_json_dict(self) -> dict[str, object]:
        return {
            "target": dataclasses.asdict(self.target),
            "workload": dataclasses.asdict(self.workload),
            "decode_model": self.decode_model,
            "score_model": self.score_model,
            "candidates": [c.to_json_dict() for c in self.candidates],
            "rejected": [dataclasses.asdict(r) for r in self.rejected],
        }


def _fallback_to_complete(served_model_name: str) -> FallbackSpec:
    """A remote API block an admin completes by setting one environment variable (mode off)."""
    return FallbackSpec(
        remote=RemoteApi(
            base_url=FALLBACK_BASE_URL,
            api_key_env=FALLBACK_API_KEY_ENV,
            model_map={served_model_name: FALLBACK_REMOTE_MODEL},
        )
    )


def profile_name(target: GpuTarget, workload: Workload) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", f"{target.label}-{workload.kind}".lower()).strip("-")
    return slug[:40].strip("-") or "recommended"


def _candidate_split_text(c: Candidate) -> str:
    """The memory split of the engine the candidate runs on."""
    return (
        _split_text(c.estimate)
        if c.sglang_estimate is None
        else _sglang_split_text(c.sglang_estimate)
    )


def _sglang_split_text(e: SglangMemoryEstimate) -> str:
    return (
        f"{e.static_budget_gib:.1f} GiB for SGLang's weights and KV pool (mem_fraction_static "
        f"{e.mem_fraction_static:g} x {e.pre_load_free_gib:.1f} GiB free) = weights "
        f"{e.weights_gib:.1f} + KV cache {e.kv_cache_gib:.1f} GiB ({e.kv_cache_tokens:,} tokens); "
        f"{e.outside_fraction_gib:.1f} GiB outside it for activations and CUDA graphs"
    )


def _split_text(e: MemoryEstimate) -> str:
    return (
        f"{e.requested_gib:.1f} GiB for vLLM = weights {e.weights_gib:.1f} + activations "
        f"{e.activation_gib:.1f} + non-torch {e.non_torch_gib:.1f} + CUDA graphs "
        f"{e.cuda_graph_gib:.1f} + KV cache {e.kv_cache_gib:.1f} GiB "
        f"({e.kv_cache_tokens:,} tokens)"
    )


# --- Calibration by measurement (#18 point 4) ------------------------------------------------


@dataclass(frozen=True)
class MeasuredLevel:
    """One concurrency level of a kept `appliance bench` run."""

    users: int
    output_tokens_per_second: float  # the level's output throughput, all users together
    tokens_per_second_per_user: float  # 1 / the level's mean TPOT


@dataclass(frozen=True)
class EngineSettings:
    """The engine settings that change a measured speed: a kept run describes a candidate only
    when it ran the settings the candidate's profile runs. `recommend` writes max_num_seqs and
    the KV cache dtype, and leaves max_num_batched_tokens to vLLM and the image to the catalog's
    pin (None for both)."""

    max_num_seqs: int | None = None  # None: vLLM's default
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    image: str | None = None  # the profile's own image; None: the catalog's pinned one

    def differences(self, wanted: EngineSettings) -> list[str]:
        """`name this, not that` for each setting that is not `wanted`'s."""

        def shown(value: object, default: str) -> str:
            return default if value is None else str(value)

        return [
            f"{f.name} {shown(getattr(self, f.name), 'default')}, not "
            f"{shown(getattr(wanted, f.name), 'default')}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(wanted, f.name)
        ]


@dataclass(frozen=True)
class Measurement:
    """A kept `appliance bench` result as the recommender weighs it: where a candidate is the
    same model repo and quantization at the same tensor-parallel size, on GPUs of the same
    name and count, under the same engine version (`matches`), and ran the engine settings the
    candidate's profile runs (`settings`), its measured speed replaces the bandwidth model's
    (`appliance.operations.calibration` reads them from the state dir)."""

    measured_at: str  # ISO 8601
    gpu_name: str
    gpu_count: int
    repo: str
    quantization: str
    engine_version: str
    tensor_parallel_size: int
    levels: tuple[MeasuredLevel, ...]
    input_len: int = 0
    output_len: int = 0
    engine: EngineKind = "vllm"  # the ranking's speed is vLLM's; SGLang's runs never match
    source: str = "appliance bench"
    settings: EngineSettings = EngineSettings()

    def matches(self, target: GpuTarget, variant: ModelVariant, tp: int, vllm_version: str) -> bool:
        """Of this candidate on this box under this engine release, whatever its settings."""
        quantizations = {variant.quantization}
        if variant.quantization == "bf16":
            quantizations.add("fp16")  # a GPU without bf16 runs the bf16 weights as fp16
        return (
            bool(self.levels)
            and self.engine == "vllm"
            and self.gpu_name == target.name
            and self.gpu_count == target.count
            and self.repo.lower() == variant.repo.lower()
            and self.quantization in quantizations
            and self.tensor_parallel_size == tp
            and _release(self.engine_version) == _release(vllm_version)
        )

    def level_for(self, users: int) -> MeasuredLevel:
        """The measured level nearest `users` (the larger on a tie)."""
        return min(self.levels, key=lambda level: (abs(level.users - users), -level.users))

    @property
    def day(self) -> str:
        return self.measured_at[:10]


def _release(version: str) -> str:
    """`0.32.0+cu128` -> `0.32.0`: a local build tag is the same engine release."""
    return version.partition("+")[0]


@dataclass(frozen=True)
class Calibration:
    """The measurement that describes a candidate as its profile runs, or why none does."""

    measurement: Measurement | None = None
    passed_over: str = ""  # for the why: runs of this candidate here, of other settings


def calibration_for(measured_here: Sequence[Measurement], wanted: EngineSettings) -> Calibration:
    """The newest of `measured_here` (runs that `match` the candidate) that ran `wanted`; where
    none did, the bandwidth model stays and `passed_over` says which settings the newest ran."""
    same = [m for m in measured_here if m.settings == wanted]
    if same:
        return Calibration(max(same, key=lambda m: m.measured_at))
    if not measured_here:
        return Calibration()
    newest = max(measured_here, key=lambda m: m.measured_at)
    count = len(measured_here)
    runs = "1 bench run" if count == 1 else f"{count} bench runs"
    return Calibration(
        passed_over=f"the model's estimate: {runs} of this model here ran other engine settings "
        f"({', '.join(newest.settings.differences(wanted))}"
        + (" in the newest" if count > 1 else "")
        + ")"
    )


def measured_text(measurement: Measurement, level: MeasuredLevel) -> str:
    """The why's words for a measured speed."""
    workload = (
        f", {measurement.input_len} in / {measurement.output_len} out tokens"
        if measurement.input_len
        else ""
    )
    return (
        f"measured {measurement.day}: {level.output_tokens_per_second:,.0f} output tok/s at "
        f"{level.users} users, {level.tokens_per_second_per_user:,.0f} tok/s per user "
        f"({measurement.source}{workload})"
    )


# --- Scoring ---------------------------------------------------------------------------------

_TIER_POINTS = {"good": 0.0, "better": 1.0, "best": 2.0}
_FP8_KV_PENALTY = 0.1
# (quality weight, speed weight) per preference.
_WEIGHTS: dict[str, tuple[float, float]] = {
    "quality": (1.0, 0.25),
    "balanced": (1.0, 0.6),
    "speed": (0.5, 1.5),
}
_INTERACTIVE_TOKENS_PER_SECOND = 20.0  # speed score 0; each doubling adds 1
_BATCH_TOKENS_PER_SECOND = 500.0
_READING_SPEED = 10.0  # tokens/s per user below which chat feels stuck
# Users beyond what the KV cache holds at once wait in vLLM's queue: their first token comes a
# whole answer later, which costs more than a size class of quality.
_QUEUE_PENALTY = 10.0
_UNKNOWN_BANDWIDTH_GB_S = 1000.0  # a card the catalog does not know: an RTX 4090's figure
SCORE_TEXT = (
    "score = q x quality + s x speed + fit; quality = the model's Artificial Analysis "
    "Intelligence Index x 8/14 where the catalog cites one, else 3 x size class (small <= 10B, "
    "medium <= 35B, large) + tier (good 0, better 1, best 2); minus format (fp8 0.1, awq 0.3, "
    "gptq 0.35, "
    "fp8 KV 0.1); speed = log2(decode tokens/s per user / 20) (batch: total / 500), within "
    "+-3; fit = -10 x (1 - held / users) when fewer than the users' requests fit at once, else "
    "+0.3 x log2(held / users) up to 0.6; -2 x the share of the wanted context a model cannot "
    "hold; -2 when chat decodes under 10 tokens/s per user; (q, s) = quality (1, 0.25), "
    "balanced (1, 0.6), speed (0.5, 1.5)"
)


# A leaderboard score becomes quality points on the same scale as the size-class rule: the
# Artificial Analysis Intelligence Index of Llama 3.3 70B (14, the catalog's "large best", 8
# points under the old rule) anchors it, so 1 index point = 8/14 quality points. Models without
# a cited score keep the size-class rule; an MoE's total size no longer decides where a score
# exists (Mixtral 8x7B: index 8 -> 4.6 points, below Qwen3 32B's 5).
_POINTS_PER_INDEX_POINT = 8 / 14


def _quality_points(model: ChatModel) -> float:
    evidence = model.quality_evidence
    if evidence is not None:
        return round(evidence.score * _POINTS_PER_INDEX_POINT, 2)
    _, size_index = _size_class(model.params_billion)
    return 3 * size_index + _TIER_POINTS[model.quality_tier]


def _quality_text(model: ChatModel, size_class: str) -> str:
    evidence = model.quality_evidence
    if evidence is None:
        return f"{model.quality_tier} {size_class} model ({model.params_billion:g} B)"
    active = f", {model.active_params_billion:g} B active" if model.active_params_billion else ""
    return (
        f"{size_class} model ({model.params_billion:g} B{active}) scoring {evidence.score:g} on "
        f"the {evidence.board} ({evidence.as_of})"
    )


def _size_class(params_billion: float) -> tuple[str, int]:
    if params_billion <= 10:
        return "small", 0
    if params_billion <= 35:
        return "medium", 1
    return "large", 2


@dataclass(frozen=True)
class _Trial:
    estimate: MemoryEstimate
    held: float  # requests of request_tokens held at once
    kv_dtype: KvCacheDtype
    max_num_seqs: int


def _target_seqs(workload: Workload) -> int:
    if workload.kind == "batch":
        return max(workload.users, 64)
    return max(8, math.ceil(workload.users * 1.25 / 8) * 8)


def _utilization(target: GpuTarget, tei_bytes: int) -> float:
    """vLLM's share: its default, or less when TEI must fit beside it before vLLM starts."""
    if tei_bytes == 0:
        return DEFAULT_GPU_MEMORY_UTILIZATION
    room = target.memory_bytes - tei_bytes - _CUDA_CONTEXT_BYTES - _START_UP_MARGIN_BYTES
    return max(
        0.05,
        min(DEFAULT_GPU_MEMORY_UTILIZATION, math.floor(room / target.memory_bytes * 100) / 100),
    )


def recommend(
    box: Box,
    workload: Workload,
    models: Sequence[ChatModel] | None = None,
    measurements: Sequence[Measurement] = (),
) -> Recommendation:
    """Ranked choices for this box and workload (see `recommend_for_target`)."""
    return recommend_for_target(
        gpu_target_from_box(box), workload, models, measurements=measurements
    )


def recommend_for_target(
    target: GpuTarget,
    workload: Workload,
    models: Sequence[ChatModel] | None = None,
    evidence: Sequence[EngineEvidence] | None = None,
    *,
    measurements: Sequence[Measurement] = (),
) -> Recommendation:
    """Every catalog model (or only `models`: `recommend --model ORG/NAME`) x variant x TP that
    vLLM can run here, sized for the workload, ranked by `SCORE_TEXT`; the rest rejected with
    the reason. Each candidate runs on SGLang only where an entry of `evidence` (the catalog's
    engine_evidence.yaml by default) matches it (`matching_evidence`). Where one of
    `measurements` matches a vLLM candidate (`Measurement.matches`), its measured speed replaces
    the bandwidth model's, and the why says so."""
    catalog = load_catalog()
    benchmarks = tuple(catalog.engine_evidence if evidence is None else evidence)
    embedding: EmbeddingModel | None = None
    if workload.embeddings:
        embedding = catalog.embedding(workload.embedding_model)
        if embedding is None:
            keys = ", ".join(e.key for e in catalog.embeddings)
            raise BadInputError(
                f"{workload.embedding_model!r} is not an embedding model in the catalog",
                hint=f"use one of: {keys}",
            )
        if embedding.gated and not workload.allow_gated:
            raise RefusedError(
                f"{embedding.repo} is gated: the Hub needs a token with its licence accepted",
                hint="set HF_TOKEN and allow gated models, or pick another embedding model",
            )
    candidates: list[Candidate] = []
    rejected: list[Rejected] = []
    cc = target.compute_capability
    for model in catalog.models if models is None else models:
        for variant in model.variants:
            if (variant.gated or model.gated) and not workload.allow_gated:
                rejected.append(
                    Rejected(
                        model.key,
                        variant.quantization,
                        None,
                        f"gated: {variant.repo} needs a Hugging Face token with its licence "
                        "accepted (allow gated models once HF_TOKEN is set)",
                    )
                )
                continue
            if variant.quantization == "fp8" and cc < (8, 9):
                rejected.append(
                    Rejected(
                        model.key,
                        variant.quantization,
                        None,
                        f"needs compute capability 8.9 for FP8: this GPU is {cc[0]}.{cc[1]}, so "
                        "vLLM would run it weight-only (slower prefill); the INT4 variants fit "
                        "better here",
                    )
                )
                continue
            for tp in TENSOR_PARALLEL_SIZES:
                if tp > target.count:
                    break
                option = _option(target, workload, model, variant, tp=tp, embedding=embedding)
                measured_here = tuple(
                    m for m in measurements if m.matches(target, variant, tp, workload.vllm_version)
                )
                option = dataclasses.replace(option, measured_here=measured_here)
                outcome = _size_candidate(option)
                if not isinstance(outcome, Rejected):
                    outcome = _choose_engine(option, outcome, benchmarks)
                if isinstance(outcome, Rejected):
                    rejected.append(outcome)
                else:
                    candidates.append(outcome)
    candidates.sort(key=lambda c: (-c.score, c.tensor_parallel_size, c.model_key, c.quantization))
    return Recommendation(
        target=target,
        workload=workload,
        candidates=tuple(candidates),
        rejected=tuple(rejected),
        decode_model=f"{DECODE_MODEL_TEXT}; {COMPUTE_MODEL_TEXT}",
        score_model=SCORE_TEXT,
        embedding=embedding,
        considered="the catalog" if models is None else " or ".join(m.name for m in models),
    )


@dataclass(frozen=True)
class _Option:
    """One model variant at one TP size on the target, before its settings are chosen."""

    target: GpuTarget
    workload: Workload
    model: ChatModel
    variant: ModelVariant
    tp: int
    findings: tuple[RuleFinding, ...]
    embeddings_gpu: int | None  # TEI goes on a GPU this engine leaves free, else on GPU 0
    tei_bytes: int  # held by TEI on this engine's GPU 0 (0 when it runs elsewhere)
    utilization: float
    max_model_len: int
    measured_here: tuple[Measurement, ...] = ()  # kept runs of this option, any settings
    calibration: Calibration = Calibration()  # the one of them its chosen settings ran

    @property
    def measurement(self) -> Measurement | None:
        return self.calibration.measurement

    def reject(self, reason: str) -> Rejected:
        return Rejected(self.model.key, self.variant.quantization, self.tp, reason)

    def trial(self, kv_cache_dtype: KvCacheDtype, max_num_seqs: int) -> _Trial:
        flags = EngineFlags(
            gpu_memory_utilization=self.utilization,
            max_model_len=self.max_model_len,
            max_num_seqs=max_num_seqs,
            kv_cache_dtype=kv_cache_dtype,
            # As the candidate will run (see `enable_prefix_caching` below): it decides how
            # many state blocks each request of a Gated DeltaNet model holds.
            enable_prefix_caching=self.workload.kind in ("chat", "rag"),
        )
        estimate = budget(
            ResolvedModel.of_variant(self.model, self.variant),
            self.target,
            tp=self.tp,
            flags=flags,
            vllm_version=self.workload.vllm_version,
            other_processes_bytes=self.tei_bytes,
        )
        architecture = ResolvedModel.of_variant(self.model, self.variant).architecture
        held = requests_held(architecture, estimate, self.workload.request_tokens, flags=flags)
        return _Trial(estimate, held, kv_cache_dtype, max_num_seqs)


def _option(
    target: GpuTarget,
    workload: Workload,
    model: ChatModel,
    variant: ModelVariant,
    *,
    tp: int,
    embedding: EmbeddingModel | None,
) -> _Option:
    findings = rule_findings(ResolvedModel.of_variant(model, variant), target, tp)
    embeddings_gpu: int | None = None
    tei_bytes = 0
    if embedding is not None:
        embeddings_gpu = tp if tp < target.count else 0
        if embeddings_gpu == 0:
            tei_bytes = tei_memory_bytes(embedding.params_million, embedding.tei_bytes_per_param)
    return _Option(
        target=target,
        workload=workload,
        model=model,
        variant=variant,
        tp=tp,
        findings=tuple(findings),
        embeddings_gpu=embeddings_gpu,
        tei_bytes=tei_bytes,
        utilization=_utilization(target, tei_bytes),
        max_model_len=min(workload.context, model.architecture.max_model_len_limit),
    )


def _choose_settings(option: _Option) -> tuple[_Trial, str] | Rejected:
    """The KV cache dtype and max_num_seqs for an option, or why it cannot run.

    fp8 KV cache only where the GPU has FP8 (8.9+) and only when it buys what the workload
    needs (one max_model_len request, or the users' requests at once). max_num_seqs covers
    the users with a quarter to spare, but no more than the KV cache holds at once, so extra
    requests queue instead of being preempted mid-answer.
    """
    workload = option.workload
    seqs = _target_seqs(workload)
    chosen = option.trial("auto", seqs)
    fp8_note = ""
    short = not chosen.estimate.fits or chosen.held < workload.users
    if short and option.target.compute_capability >= (8, 9):
        with_fp8 = option.trial("fp8", seqs)
        if with_fp8.estimate.fits and with_fp8.held > chosen.held:
            fp8_note = (
                f"fp8 KV cache because bf16 KV holds {chosen.held:.0f} requests of "
                f"{workload.request_tokens} tokens, fp8 {with_fp8.held:.0f}"
                if chosen.estimate.fits
                else "fp8 KV cache because a bf16 KV cache does not hold one max_model_len request"
            )
            chosen = with_fp8
    if not chosen.estimate.fits:
        return option.reject(f"does not fit: {chosen.estimate.reason}")
    final_seqs = max(1, min(seqs, math.floor(chosen.held)))
    if final_seqs != seqs:
        fewer = option.trial(chosen.kv_dtype, final_seqs)
        # Fewer sequences never need more memory; keep the first trial if rounding disagrees.
        chosen = fewer if fewer.estimate.fits else chosen
    return chosen, fp8_note


@dataclass(frozen=True)
class _Score:
    total: float
    size_class: str
    speed: DecodeSpeed
    batch: int
    margin: float  # requests held at once / users
    slow: bool


def _score(option: _Option, chosen: _Trial) -> _Score:
    """`SCORE_TEXT`, computed."""
    model, variant, workload = option.model, option.variant, option.workload
    batch = max(1, min(workload.users, chosen.max_num_seqs, math.floor(chosen.held) or 1))
    active_bytes = variant.weight_bytes
    if model.active_params_billion is not None:
        share = model.active_params_billion / model.params_billion
        active_bytes = int(variant.weight_bytes * share)
    speed = decode_speed(
        active_weight_bytes=active_bytes,
        kv_bytes_per_token_per_gpu=kv_bytes_per_token(
            model.architecture, option.tp, chosen.kv_dtype
        ),
        num_hidden_layers=model.architecture.num_hidden_layers,
        bandwidth_gb_s=option.target.bandwidth_gb_s or _UNKNOWN_BANDWIDTH_GB_S,
        batch=batch,
        context_tokens=workload.prompt_tokens + workload.output_tokens // 2,
        tensor_parallel_size=option.tp,
        p2p=option.target.p2p,
    )
    speed = compute_bound(
        speed,
        option.target,
        active_params_billion=model.active_params_billion or model.params_billion,
        quantization=variant.quantization,
        tensor_parallel_size=option.tp,
    )
    if option.measurement is not None:
        speed = _measured_speed(option.measurement.level_for(batch))
    size_name, _ = _size_class(model.params_billion)
    quality = _quality_points(model)
    quality -= QUANTIZATION_QUALITY_LOSS[variant.quantization]
    if chosen.kv_dtype == "fp8":
        quality -= _FP8_KV_PENALTY
    if workload.kind == "batch":
        ratio = speed.tokens_per_second_total / _BATCH_TOKENS_PER_SECOND
    else:
        ratio = speed.tokens_per_second_per_request / _INTERACTIVE_TOKENS_PER_SECOND
    speed_score = max(-3.0, min(3.0, math.log2(max(ratio, 1e-6))))
    q_weight, s_weight = _WEIGHTS[workload.preference]
    margin = chosen.held / workload.users
    fit = -_QUEUE_PENALTY * (1 - margin) if margin < 1 else 0.3 * min(math.log2(margin), 2.0)
    penalties = 0.0
    if option.max_model_len < workload.context:
        penalties -= 2 * (1 - option.max_model_len / workload.context)
    slow = workload.kind != "batch" and speed.tokens_per_second_per_request < _READING_SPEED
    if slow:
        penalties -= 2
    total = round(q_weight * quality + s_weight * speed_score + fit + penalties, 3)
    return _Score(total, size_name, speed, batch, margin, slow)


def _measured_speed(level: MeasuredLevel) -> DecodeSpeed:
    per_user = level.tokens_per_second_per_user
    return DecodeSpeed(
        batch=level.users,
        step_ms=round(1000 / per_user, 2) if per_user > 0 else 0.0,
        tokens_per_second_per_request=round(per_user, 1),
        tokens_per_second_total=round(level.output_tokens_per_second, 1),
        bound="measured",
    )


# --- The compute bound of decode speed (#14 part 4) -----------------------------------------

# Decode runs the weight GEMMs for every token: 2 FLOPs per active parameter. At a large batch
# that, not memory bandwidth, is the limit. Vendor peaks are not reached by skinny decode GEMMs;
# half the dense peak is the planning figure used here (stated, not measured).
COMPUTE_EFFICIENCY = 0.5
COMPUTE_MODEL_TEXT = (
    "decode is also capped at (dense tensor TFLOP/s of the weights' path x "
    f"{COMPUTE_EFFICIENCY} x GPUs) / (2 x active parameters) tokens/s in total (BF16/FP16 and "
    "INT4 AWQ/GPTQ on the 16-bit tensor cores, FP8 on FP8 ones from compute capability 8.9; "
    "vendor datasheet figures without sparsity); the slower of the two bounds applies"
)


def compute_bound(
    speed: DecodeSpeed,
    target: GpuTarget,
    *,
    active_params_billion: float,
    quantization: Quantization,
    tensor_parallel_size: int,
) -> DecodeSpeed:
    """`speed` (the bandwidth bound), slowed to the compute bound where that is lower. A card
    without a catalog compute figure keeps the bandwidth bound alone."""
    spec = load_catalog().gpu(target.key) if target.key else None
    tflops = spec.tflops_for(quantization) if spec is not None else None
    if tflops is None or active_params_billion <= 0:
        return speed
    flops_per_token = 2 * active_params_billion * 1e9
    ceiling = tflops * 1e12 * COMPUTE_EFFICIENCY * tensor_parallel_size / flops_per_token
    if speed.tokens_per_second_total <= ceiling:
        return speed
    return DecodeSpeed(
        batch=speed.batch,
        step_ms=round(speed.batch / ceiling * 1000, 2),
        tokens_per_second_per_request=round(ceiling / speed.batch, 1),
        tokens_per_second_total=round(ceiling, 1),
        bound="compute",
    )


def _bound_text(option: _Option, speed: DecodeSpeed) -> str:
    """Which bound sets the speed, with the numbers behind a compute bound."""
    if speed.bound != "compute":
        return "(memory-bandwidth-bound)"
    spec = load_catalog().gpu(option.target.key) if option.target.key else None
    tflops = spec.tflops_for(option.variant.quantization) if spec is not None else None
    model = option.model
    active = model.active_params_billion or model.params_billion
    path = (
        "FP8"
        if spec is not None and tflops == (spec.dense_tflops and spec.dense_tflops.fp8)
        else "16-bit"
    )
    return (
        f"(compute-bound: 2 x {active:g} B active parameters per token against {tflops:g} dense "
        f"TFLOP/s {path} per GPU x {COMPUTE_EFFICIENCY})"
    )


def _speed_text(option: _Option, score: _Score) -> str:
    measurement = option.measurement
    if measurement is not None:
        return measured_text(measurement, measurement.level_for(score.batch))
    passed_over = option.calibration.passed_over
    return (
        f"~{score.speed.tokens_per_second_per_request:.0f} tokens/s per user, "
        f"~{score.speed.tokens_per_second_total:.0f} in total with {score.batch} running "
        + _bound_text(option, score.speed)
        + (f"; {passed_over}" if passed_over else "")
    )


def _why(option: _Option, chosen: _Trial, score: _Score, fp8_note: str, no_p2p: bool) -> str:
    model, variant, workload, estimate = (
        option.model,
        option.variant,
        option.workload,
        chosen.estimate,
    )
    parts = [
        f"{_quality_text(model, score.size_class)} in "
        f"{variant.quantization.upper()}: {estimate.weights_gib:.1f} GiB of weights per GPU "
        f"leave {estimate.kv_cache_gib:.1f} GiB of KV cache = {estimate.kv_cache_tokens:,} "
        "tokens",
        f"the KV cache holds {math.floor(chosen.held)} requests of {workload.request_tokens} "
        "tokens at once "
        + ("(all " if score.margin >= 1 else "(only part of the ")
        + f"{workload.users} users)",
        f"max_num_seqs {chosen.max_num_seqs} "
        + (
            "(no more than the KV cache holds, so the rest queue instead of being preempted)"
            if chosen.max_num_seqs >= math.floor(chosen.held)
            else "(at least 64 for batch throughput)"
            if workload.kind == "batch"
            else "(the users with a quarter to spare)"
        ),
        _speed_text(option, score),
    ]
    if option.tp > 1:
        parts.append(
            f"tensor parallel {option.tp}"
            + (" with custom all-reduce off (no P2P)" if no_p2p else "")
        )
    if fp8_note:
        parts.append(fp8_note)
    if option.tei_bytes:
        parts.append(
            f"{option.tei_bytes / GIB:.1f} GiB held back for TEI on GPU 0 "
            f"(gpu_memory_utilization {option.utilization})"
        )
    elif option.embeddings_gpu is not None:
        parts.append(f"TEI on the free GPU {option.embeddings_gpu}")
    if option.max_model_len < workload.context:
        parts.append(f"context capped at the model's {option.max_model_len} tokens")
    if score.slow:
        parts.append("slower than reading speed per user")
    return "; ".join(parts)


def _size_candidate(option: _Option) -> Candidate | Rejected:
    errors = [f for f in option.findings if f.severity == "error"]
    if errors:
        return option.reject(errors[0].message)
    if option.max_model_len < option.workload.request_tokens:
        return option.reject(
            f"context too short: the model holds {option.max_model_len} tokens, a typical "
            f"request is {option.workload.request_tokens}"
        )
    settings = _choose_settings(option)
    if isinstance(settings, Rejected):
        return settings
    chosen, fp8_note = settings
    wanted = EngineSettings(max_num_seqs=chosen.max_num_seqs, kv_cache_dtype=chosen.kv_dtype)
    option = dataclasses.replace(option, calibration=calibration_for(option.measured_here, wanted))
    score = _score(option, chosen)
    no_p2p = any(f.flag == "--disable-custom-all-reduce" for f in option.findings)
    profile_quantization: Quantization = option.variant.quantization
    if any(f.flag == "--dtype=half" for f in option.findings):
        profile_quantization = "fp16"
    estimate = chosen.estimate
    return Candidate(
        model_key=option.model.key,
        model_name=option.model.name,
        repo=option.variant.repo,
        quantization=option.variant.quantization,
        quality_tier=option.model.quality_tier,
        size_class=score.size_class,
        params_billion=option.model.params_billion,
        tensor_parallel_size=option.tp,
        gpus=tuple(range(option.tp)),
        max_model_len=option.max_model_len,
        max_num_seqs=chosen.max_num_seqs,
        gpu_memory_utilization=option.utilization,
        kv_cache_dtype=chosen.kv_dtype,
        enable_prefix_caching=option.workload.kind in ("chat", "rag"),
        disable_custom_all_reduce=no_p2p,
        profile_quantization=profile_quantization,
        embeddings_gpu=option.embeddings_gpu,
        tei_reserved_gib=round(option.tei_bytes / GIB, 2),
        estimate=estimate,
        concurrency_at_context=estimate.max_concurrency,
        concurrency_at_request=math.floor(chosen.held),
        running_at_once=score.batch,
        decode=score.speed,
        score=score.total,
        why=_why(option, chosen, score, fp8_note, no_p2p),
        warnings=tuple(f.message for f in option.findings if f.severity == "warning"),
    )


def matching_evidence(
    evidence: Sequence[EngineEvidence],
    *,
    workload: Workload,
    hf_architecture: str,
    gpu_key: str | None,
    tensor_parallel_size: int,
) -> EngineEvidence | None:
    """The first benchmark that speaks for SGLang on this candidate, or None.

    Conservative on purpose: a benchmark covers only what it measured. The workload kind must
    be one it stands for, the model's config.json architecture one it ran, the box's GPU (the
    catalog key) and the tensor-parallel size the ones it ran on, and the typical prompt inside
    the prompt lengths it measured. A figure from another GPU, model architecture or prompt
    length says nothing here, so the candidate stays on vLLM."""
    for entry in evidence:
        low, high = entry.prompt_tokens_range
        if (
            workload.kind in entry.workload_kinds
            and hf_architecture in entry.hf_architectures
            and gpu_key is not None
            and gpu_key in entry.gpus
            and tensor_parallel_size == entry.tensor_parallel_size
            and low <= workload.prompt_tokens <= high
        ):
            return entry
    return None


def evidence_text(entry: EngineEvidence) -> str:
    """The why of an SGLang choice: the source and the smallest lead it measured."""
    point = entry.smallest_margin
    low, high = entry.prompt_tokens_range
    return (
        f"SGLang: {entry.source}: {point.sglang_margin * 100:.1f} % more {entry.metric} "
        f"(its smallest lead, at {point.prompt_tokens:,} prompt + {point.output_tokens:,} output "
        f"tokens; measured {low:,}-{high:,}-token prompts) on {entry.model}, "
        f"{entry.gpu_count} x {', '.join(entry.gpus)} at TP{entry.tensor_parallel_size}, "
        f"{entry.shape}; vLLM {entry.vllm_version} against SGLang {entry.sglang_version}, "
        f"{entry.date}"
    )


def _choose_engine(
    option: _Option, candidate: Candidate, evidence: Sequence[EngineEvidence]
) -> Candidate:
    """The candidate on SGLang where a benchmark matches and SGLang's own budget
    (`appliance.sglang_sizing`, the same model `plan` uses for an SGLang profile) holds the
    settings; otherwise unchanged, on vLLM, with the reason."""
    resolved = ResolvedModel.of_variant(option.model, option.variant)
    entry = matching_evidence(
        evidence,
        workload=option.workload,
        hf_architecture=resolved.architecture.hf_architecture,
        gpu_key=option.target.key,
        tensor_parallel_size=option.tp,
    )
    if entry is None:
        return candidate
    loaded = loaded_weight_bytes(
        resolved.architecture,
        resolved.weight_bytes,
        resolved.quantization,
        option.target.compute_capability,
        option.tp,
    )
    estimate = estimate_sglang_memory(
        resolved.architecture,
        math.ceil(loaded / option.tp),
        option.target.memory_bytes,
        tensor_parallel_size=option.tp,
        mem_fraction_static=candidate.gpu_memory_utilization,
        context_length=candidate.max_model_len,
        kv_cache_dtype=candidate.kv_cache_dtype,
        other_processes_bytes=option.tei_bytes,
    )
    if not estimate.fits:
        return dataclasses.replace(
            candidate,
            engine_why=f"vLLM: {entry.key} shows SGLang ahead for this workload, but "
            f"SGLang's own budget does not hold it here ({estimate.reason})",
        )
    held = estimate.kv_cache_tokens // option.workload.request_tokens
    why = evidence_text(entry)
    return dataclasses.replace(
        candidate,
        engine="sglang",
        engine_why=why,
        sglang_estimate=estimate,
        concurrency_at_context=estimate.max_concurrency,
        concurrency_at_request=held,
        max_num_seqs=max(1, min(candidate.max_num_seqs, held)),
        why=f"{candidate.why}; {why}",
    )


def _unshown_models_text(r: Recommendation, limit: int) -> list[str]:
    """One line per model that fits but has no variant above the cut: its best variant, its
    rank, and the numbers that put it there, so no model that fits is silently passed over."""
    shown = {c.model_key for c in r.candidates[:limit]}
    lines: list[str] = []
    for rank, c in enumerate(r.candidates, start=1):
        if rank <= limit or c.model_key in shown:
            continue
        shown.add(c.model_key)
        users = r.workload.users
        held = (
            f"holds {c.concurrency_at_request} of the {users} users' requests at once"
            if c.concurrency_at_request < users
            else f"holds {c.concurrency_at_request} requests at once"
        )
        lines.append(
            f"   #{rank} {c.model_key} {c.quantization.upper()}"
            + (f" TP{c.tensor_parallel_size}" if c.tensor_parallel_size > 1 else "")
            + f" score {c.score:.2f}: {c.quality_tier} {c.size_class} model, {held}, "
            f"~{c.decode.tokens_per_second_per_request:.0f} tok/s per user"
        )
    return lines


def render_recommendation(
    recommendation: Recommendation, limit: int = 5, rejected_limit: int = 12
) -> str:
    """The ranked list as text: the top choices with their split and why, then what was
    rejected and why, then the models behind the numbers."""
    r = recommendation
    w = r.workload
    lines = [
        f"{r.target.label} ({r.target.count} x {r.target.name}, "
        f"{r.target.memory_bytes / GIB:.1f} GiB each, compute capability "
        f"{r.target.compute_capability[0]}.{r.target.compute_capability[1]}) — {w.kind}: "
        f"{w.users} users, {w.prompt_tokens} + {w.output_tokens} tokens per request, context "
        f"{w.context}, preference {w.preference}"
        + (f", embeddings {w.embedding_model}" if w.embeddings else ""),
        "",
    ]
    if not r.candidates:
        lines.append("Nothing fits.")
    for rank, c in enumerate(r.candidates[:limit], start=1):
        lines.append(
            f"{rank}. {c.model_key} {c.quantization.upper()}"
            + (f" TP{c.tensor_parallel_size}" if c.tensor_parallel_size > 1 else "")
            + f"  score {c.score:.2f}"
        )
        lines.append(
            f"   max_model_len {c.max_model_len}, max_num_seqs {c.max_num_seqs}, "
            f"gpu_memory_utilization {utilization_text(c.gpu_memory_utilization)}, "
            "kv_cache_dtype "
            f"{c.kv_cache_dtype}, prefix caching {'on' if c.enable_prefix_caching else 'off'}"
            + (", disable_custom_all_reduce" if c.disable_custom_all_reduce else "")
            + (", engine sglang" if c.engine == "sglang" else "")
        )
        lines.append(f"   memory per GPU: {_candidate_split_text(c)}")
        lines.append(
            f"   concurrency: {c.max_num_seqs} at once (max_num_seqs); the KV cache holds "
            f"{c.concurrency_at_request} requests of {w.request_tokens} tokens, "
            f"{c.concurrency_at_context:.2f} of {c.max_model_len}; decode "
            f"~{c.decode.tokens_per_second_per_request:.0f} tok/s per user, "
            f"~{c.decode.tokens_per_second_total:.0f} total with {c.running_at_once} running"
        )
        lines.append(f"   why: {c.why}")
        lines.extend(f"   warning: {warning}" for warning in c.warnings)
    if len(r.candidates) > limit:
        lines.append(f"   … and {len(r.candidates) - limit} more that fit (see --json)")
        lines.extend(_unshown_models_text(r, limit))
    if r.rejected:
        lines += ["", "Rejected:"]
        gated = sorted({item.model_key for item in r.rejected if item.reason.startswith("gated")})
        if gated:
            lines.append(f"  gated (needs HF_TOKEN with the licence accepted): {', '.join(gated)}")
        others = [item for item in r.rejected if not item.reason.startswith("gated")]
        for item in others[:rejected_limit]:
            tp = f" TP{item.tensor_parallel_size}" if item.tensor_parallel_size else ""
            lines.append(f"  {item.model_key} {item.quantization.upper()}{tp}: {item.reason}")
        if len(others) > rejected_limit:
            lines.append(f"  … and {len(others) - rejected_limit} more (see --json)")
    lines += ["", f"Speed model: {r.decode_model}.", f"Ranking: {r.score_model}."]
    return "\n".join(lines)


def would_need_lines(
    target: GpuTarget, workload: Workload, models: Sequence[ChatModel]
) -> list[str]:
    """`recommend --model` on a BF16/FP16 base repo: for each quantised checkpoint it does not
    ship (one unpublished variant per model, see `local_model.hub_candidates`), its estimated
    weight size and whether it would fit this box for this workload, and at which TP."""
    if not models:
        return []
    lines = ["Quantised variants this repo does not ship would need:"]
    for model in models:
        variant = model.variants[0]
        ranked = recommend_for_target(target, workload, [model])
        size = f"~{variant.weight_bytes / GIB:.1f} GiB of weights"
        if ranked.candidates:
            best = ranked.candidates[0]
            tp = f" at TP{best.tensor_parallel_size}" if best.tensor_parallel_size > 1 else ""
            verdict = f"would fit{tp}: max_model_len {best.max_model_len}, {best.at_once_text()}"
        else:
            reasons = sorted({r.reason.split(":")[0] for r in ranked.rejected})
            verdict = "would not fit either: " + "; ".join(reasons)
        lines.append(f"  {variant.quantization.upper()} ({size}): {verdict}")
    lines.append(
        "  (sizes estimated from the safetensors headers; look for a published "
        "FP8 / AWQ / GPTQ repo of this model and run recommend --model on it)"
    )
    return lines


# ---------------------------------------------------------------------------------------------
# appliance recommend --device cpu


@dataclass(frozen=True)
class CpuRecommendation:
    """The CPU target's verdict on each model: fits (largest first) or the reason it does not."""

    workload: Workload
    fits: tuple[tuple[ResolvedModel, CpuEstimate], ...]
    rejected: tuple[tuple[str, str], ...]  # (model, reason)

    @property
    def top(self) -> tuple[ResolvedModel, CpuEstimate]:
        if self.fits:
            return self.fits[0]
        reasons = [reason for _, reason in self.rejected]
        if reasons and all("above the CPU target's limit" in r for r in reasons):
            raise RefusedError(
                f"none of the {len(reasons)} models considered is within the CPU target's "
                f"{CPU_MAX_PARAMS_BILLION:g}B-parameter limit",
                hint="name a small Hub model, e.g. appliance recommend --device cpu --workload "
                "chat --model Qwen/Qwen2.5-0.5B-Instruct; or use a GPU box",
            )
        raise RefusedError(
            f"nothing fits the CPU target: {reasons[0] if reasons else 'no model to size'}"
        )

    def to_profile(self, storage: StorageSpec | None = None) -> Profile:
        """The top model as a CPU-target profile."""
        model, estimate = self.top
        repo = model.variant.repo if model.variant is not None else model.repo
        if repo is None or model.quantization is None:
            raise BadInputError(f"{model.label} has no Hub repo to write into a profile")
        served = model.model.key if model.model is not None else repo.rsplit("/", 1)[-1].lower()
        spec = Spec(
            model=ModelSpec(repo=repo, quantization=model.quantization, served_model_name=served),
            engine=EngineSpec(
                device="cpu",
                max_model_len=estimate.max_model_len,
                max_num_seqs=self.workload.users,
            ),
            gateway=GatewaySpec(fallback=_fallback_to_complete(served)),
            storage=storage or StorageSpec(),
        )
        name = f"cpu-{self.workload.kind}"
        text = f"CPU target — {served} for {self.workload.kind} (appliance recommend --device cpu)"
        return Profile.from_spec(name, spec, text)

    def render(self) -> str:
        lines = [f"CPU target, {self.workload.kind} with {self.workload.users} users:"]
        for model, estimate in self.fits:
            lines.append(f"  fits  {model.label}")
            lines += [f"        {line}" for line in render_cpu_estimate(estimate).splitlines()[1:]]
        lines += [f"  no    {label}: {reason}" for label, reason in self.rejected]
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "device": "cpu",
            "fits": [{"model": m.label, **cpu_estimate_json(e)} for m, e in self.fits],
            "rejected": [{"model": label, "reason": reason} for label, reason in self.rejected],
        }


def recommend_cpu(
    box: Box, workload: Workload, models: Sequence[ResolvedModel] | None = None
) -> CpuRecommendation:
    """Each model (the catalog's bf16 checkpoints by default) on the box's CPU target, with
    max_model_len = the workload's context and max_num_seqs = its users."""
    if models is None:
        models = [
            ResolvedModel.of_variant(m, variant)
            for m in load_catalog().models
            if (variant := m.variant("bf16")) is not None
        ]
    fits: list[tuple[ResolvedModel, CpuEstimate]] = []
    rejected: list[tuple[str, str]] = []
    for model in models:
        try:
            estimate = estimate_cpu_for(
                model, box, max_model_len=workload.context, max_num_seqs=workload.users
            )
        except RefusedError as error:
            rejected.append((model.label, error.message))
            continue
        fits.append((model, estimate))
    fits.sort(key=lambda pair: -pair[1].weight_bytes)
    return CpuRecommendation(workload, tuple(fits), tuple(rejected))
