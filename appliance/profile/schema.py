"""The profile's schema: one pydantic model per section, from `Metadata` to `Profile`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Final, Literal

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from appliance.economics import CostInputs
from appliance.profile.problems import _Issue, _num, _raise_issues
from appliance.profile.values import (
    _SGLANG_MODELLED,
    API_VERSION,
    KIND,
    AbsolutePath,
    BindHost,
    EnvVarName,
    GpuRef,
    GpuSelection,
    HttpUrl,
    ImageRef,
    LoraRank,
    Pooling,
    Port,
    RemoteModelName,
    RepoId,
    Revision,
    ServedName,
    Slug,
    StrictBool,
    StrictFloat,
    StrictInt,
    TeiArg,
    VllmArg,
    _power_of_two,
)
from appliance.sizing import DEFAULT_GPU_MEMORY_UTILIZATION
from appliance.vocabulary import (
    DEFAULT_MODELS_DIR,
    DEFAULT_STATE_DIR,
    Device,
    EngineKind,
    FallbackMode,
    KvCacheDtype,
    Quantization,
    SleepLevel,
)

# ---------------------------------------------------------------------------------------------
# The models.
# ---------------------------------------------------------------------------------------------


class _Model(BaseModel):
    """Strict, frozen base: unknown keys are errors and a loaded profile never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Metadata(_Model):
    """Who the profile is: its name is part of every container name and label the appliance sets."""

    name: Slug = Field(
        description="Short name of this deployment, used in container names and labels.",
        examples=["rtx4090-chat"],
    )
    description: str | None = Field(
        default=None,
        max_length=1000,
        description="Free text for people: which box this is for and why these numbers.",
        examples=["RTX 4090 workstation: 8B chat for the support team"],
    )


class LoraAdapter(_Model):
    """A LoRA adapter vLLM serves beside the base model; clients pick it by `name` as the model."""

    name: ServedName = Field(
        description="Model name clients send to use this adapter.", examples=["support-bot"]
    )
    repo: RepoId = Field(
        description="Hugging Face repo id of the adapter.", examples=["my-org/support-bot-lora"]
    )
    revision: Revision = Field(
        default="main",
        description="Branch, tag or full 40-character commit of the adapter repo.",
        examples=["main"],
    )


# The gateway is the service the team reaches over the LAN, so it listens on every interface by
# default; the engines behind it never do.
_ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104
_QUANT_TOKENS: Final[dict[str, Quantization]] = {"awq": "awq", "gptq": "gptq", "fp8": "fp8"}


class ModelSpec(_Model):
    """The chat model vLLM serves: which checkpoint, in which format, under which name."""

    repo: RepoId = Field(
        description="Hugging Face repo id of the checkpoint.",
        examples=["Qwen/Qwen2.5-7B-Instruct-AWQ"],
    )
    revision: Revision = Field(
        default="main",
        description="Branch, tag or full 40-character commit; pin a commit for reproducible boxes.",
        examples=["main"],
    )
    quantization: Quantization = Field(
        description="Weight format of the checkpoint: bf16/fp16 for unquantised weights, awq or "
        "gptq for INT4 checkpoints, fp8 for FP8 checkpoints, mxfp4 for MXFP4 ones (gpt-oss), "
        "nvfp4 for NVFP4 ones, int8 for W8A8-INT8 ones.",
        examples=["awq"],
    )
    served_model_name: ServedName | None = Field(
        default=None,
        description="Model name clients send; defaults to the last part of the repo id.",
        examples=["qwen2.5-7b-instruct"],
    )
    lora_adapters: tuple[LoraAdapter, ...] = Field(
        default=(),
        description="LoRA adapters served on top of this model (needs engine.max_lora_rank).",
    )

    @property
    def served_name(self) -> str:
        """The name clients use: `served_model_name`, else the repo's last part, as written."""
        return self.served_model_name or self.repo.rsplit("/", 1)[-1]

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        issues: list[_Issue] = []
        tokens = set(re.split(r"[-_.]", self.repo.rsplit("/", 1)[-1].lower()))
        named = {q for token, q in _QUANT_TOKENS.items() if token in tokens}
        if len(named) == 1 and self.quantization not in named:
            (wanted,) = named
            issues.append(
                _Issue(
                    ("quantization",),
                    f"'{self.quantization}' but the repo name says {wanted.upper()}",
                    f"write quantization: {wanted}, or pick the {self.quantization} checkpoint",
                )
            )
        seen: dict[str, int] = {}
        for index, adapter in enumerate(self.lora_adapters):
            if adapter.name == self.served_name:
                issues.append(
                    _Issue(
                        ("lora_adapters", index, "name"),
                        f"'{adapter.name}' is also the base model's served name",
                        "give the adapter its own name: clients choose it by that name",
                    )
                )
            if adapter.name in seen:
                issues.append(
                    _Issue(
                        ("lora_adapters", index, "name"),
                        f"'{adapter.name}' is used by adapter {seen[adapter.name]} too",
                        "give every adapter a different name",
                    )
                )
            seen.setdefault(adapter.name, index)
        _raise_issues(issues)
        return self


class SwitchedModelSpec(ModelSpec):
    """A further chat model that shares the chat engine's GPUs by sleeping while another one
    serves: its own vLLM container, served name and host port."""

    port: Port = Field(
        description="Its vLLM's host port, on 127.0.0.1 (the gateway's way in).", examples=[8010]
    )
    gpu_memory_utilization: Annotated[StrictFloat, Gt(0), Le(0.98)] | None = Field(
        default=None,
        description="Share of each GPU's memory it takes while awake; defaults to "
        "spec.engine.gpu_memory_utilization.",
        examples=[0.85],
    )
    max_model_len: Annotated[StrictInt, Ge(1), Le(10_485_760)] | None = Field(
        default=None,
        description="Its context limit; defaults to spec.engine.max_model_len.",
        examples=[8192],
    )

    @model_validator(mode="after")
    def _no_adapters(self) -> SwitchedModelSpec:
        if self.lora_adapters:
            _raise_issues(
                [
                    _Issue(
                        ("lora_adapters",),
                        "not served on switched models",
                        "serve LoRA adapters on spec.model",
                    )
                ]
            )
        return self


class SwitchingSpec(_Model):
    """Several chat models on one box (issue #19): each in its own vLLM container with sleep
    mode on; one is awake, the gateway wakes the one a request names and puts the other to
    sleep. spec.model is the first of them and the one awake after apply."""

    models: Annotated[tuple[SwitchedModelSpec, ...], Field(min_length=1, max_length=7)] = Field(
        description="The further chat models, beside spec.model.",
        examples=[[{"repo": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "quantization": "awq",
                    "port": 8010}]],
    )  # fmt: skip
    sleep_level: SleepLevel | Literal["auto"] = Field(
        default=1,
        description="1 keeps a sleeping model's weights in host RAM (fast wake; needs the RAM), "
        "2 drops them (the wake reloads them from disk); auto: 1 where the sleeping models' "
        "weights fit the host's RAM with a quarter of it to spare, else 2 (`plan` says which "
        "and why).",
        examples=[1, "auto"],
    )
    hold_max_requests: Annotated[StrictInt, Ge(1), Le(100_000)] = Field(
        default=64,
        description="Requests held for a sleeping model while it wakes; beyond, 503 with "
        "Retry-After (or the remote fallback in auto).",
        examples=[64],
    )
    hold_timeout_seconds: Annotated[StrictFloat, Gt(0), Le(3600)] = Field(
        default=60.0,
        description="Longest a request is held for a model to wake before a 503.",
        examples=[60.0],
    )
    drain_grace_seconds: Annotated[StrictFloat, Ge(0), Le(3600)] = Field(
        default=10.0,
        description="How long the awake model may finish its requests before it is put to "
        "sleep anyway (they are then aborted).",
        examples=[10.0],
    )
    idle_sleep_seconds: Annotated[StrictFloat, Gt(0), Le(86_400)] | None = Field(
        default=None,
        description="Put the awake model to sleep after this long without requests; leave out "
        "to keep it awake.",
        examples=[900.0],
    )


class EngineSpec(_Model):
    """The chat engine's serving flags, by vLLM's names; a flag left out keeps the engine's
    default. With `kind: sglang` each setting becomes SGLang's flag of the same meaning."""

    kind: EngineKind = Field(
        default="vllm",
        description="The server that runs the chat model: vllm (the default) or sglang (SGLang's "
        "launch_server; max_model_len becomes --context-length, max_num_seqs "
        "--max-running-requests, gpu_memory_utilization --mem-fraction-static, "
        "enable_prefix_caching: false --disable-radix-cache).",
        examples=["vllm"],
    )
    device: Device = Field(
        default="gpu",
        description="Run vLLM on the GPUs (the CUDA image) or on the host's CPU cores (vLLM's "
        "CPU image: small bf16/fp16 models on a box without a GPU; the KV cache then lives in "
        "RAM and gpu_memory_utilization does not apply).",
        examples=["gpu"],
    )
    cpu_kv_cache_gib: Annotated[StrictInt, Ge(1), Le(4096)] | None = Field(
        default=None,
        description="device: cpu only. RAM for vLLM's KV cache in GiB (VLLM_CPU_KVCACHE_SPACE); "
        "left out, a quarter of the host's RAM, at most 64.",
        examples=[4],
    )

    max_model_len: Annotated[StrictInt, Ge(1), Le(10_485_760)] | None = Field(
        default=None,
        description="Longest prompt + output in tokens; left out, the model's own maximum, which "
        "often does not fit in memory.",
        examples=[16384],
    )
    max_num_seqs: Annotated[StrictInt, Ge(1), Le(65_536)] | None = Field(
        default=None,
        description="Most requests vLLM runs at once; the rest wait in its queue.",
        examples=[32],
    )
    max_num_batched_tokens: Annotated[StrictInt, Ge(1), Le(10_485_760)] | None = Field(
        default=None,
        description="Token budget of one scheduler step (chunked prefill); at least max_num_seqs.",
        examples=[8192],
    )
    gpu_memory_utilization: Annotated[StrictFloat, Gt(0), Le(0.98)] = Field(
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        description="Share of each GPU's memory vLLM may take (weights + KV cache); leave room "
        "for TEI when it shares the GPU. The default is the pinned vLLM release's.",
        examples=[DEFAULT_GPU_MEMORY_UTILIZATION],
    )
    enable_prefix_caching: StrictBool = Field(
        default=True,
        description="Reuse the KV cache of shared prompt prefixes (system prompts, RAG context).",
        examples=[True],
    )
    kv_cache_dtype: KvCacheDtype = Field(
        default="auto",
        description="KV cache element type; fp8 halves its memory (compute capability 8.9+).",
        examples=["fp8"],
    )
    tensor_parallel_size: Annotated[StrictInt, Ge(1), Le(64), AfterValidator(_power_of_two)] = (
        Field(
            default=1,
            description="GPUs one model is split across; a power of two, at most the GPUs listed.",
            examples=[2],
        )
    )
    enforce_eager: StrictBool = Field(
        default=False,
        description="Skip CUDA graphs: saves their memory, costs decode speed.",
        examples=[False],
    )
    disable_custom_all_reduce: StrictBool = Field(
        default=False,
        description="Use NCCL instead of vLLM's custom all-reduce; needed on GPUs without P2P "
        "(GeForce cards) under tensor parallelism.",
        examples=[True],
    )
    max_loras: Annotated[StrictInt, Ge(1), Le(1024)] | None = Field(
        default=None,
        description="LoRA adapters usable in one batch (vLLM's default is 1).",
        examples=[2],
    )
    max_lora_rank: LoraRank | None = Field(
        default=None,
        description="Largest rank among the adapters; one of vLLM's allowed ranks.",
        examples=[16],
    )
    extra_args: tuple[VllmArg, ...] = Field(
        default=(),
        description="Further vLLM flags, one argument per item; flags the profile models are "
        "refused here.",
        examples=[["--enable-chunked-prefill"]],
    )

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        issues: list[_Issue] = []
        if self.kind == "sglang":
            issues += _sglang_engine_issues(self)
        if self.device == "cpu" and self.tensor_parallel_size != 1:
            issues.append(
                _Issue(
                    ("tensor_parallel_size",),
                    f"{self.tensor_parallel_size} but device is cpu: the CPU target runs one "
                    "engine on this box's cores",
                    "write tensor_parallel_size: 1, or device: gpu",
                )
            )
        if self.device == "gpu" and self.cpu_kv_cache_gib is not None:
            issues.append(
                _Issue(
                    ("cpu_kv_cache_gib",),
                    "set, but device is gpu (the GPU KV cache follows gpu_memory_utilization)",
                    "remove cpu_kv_cache_gib, or write device: cpu",
                )
            )
        _raise_issues(issues)
        if (
            self.max_num_batched_tokens is not None
            and self.max_num_seqs is not None
            and self.max_num_batched_tokens < self.max_num_seqs
        ):
            _raise_issues(
                [
                    _Issue(
                        ("max_num_batched_tokens",),
                        f"{self.max_num_batched_tokens} is less than max_num_seqs "
                        f"{self.max_num_seqs}; vLLM refuses to start",
                        f"raise it to at least {self.max_num_seqs} (e.g. 8192), or lower "
                        "max_num_seqs",
                    )
                ]
            )
        return self


def _sglang_engine_issues(engine: EngineSpec) -> list[_Issue]:
    """What a `kind: sglang` engine cannot take: settings with no SGLang counterpart here, and
    extra flags that duplicate SGLang's names for the settings the profile models."""
    issues: list[_Issue] = []
    if engine.device == "cpu":
        issues.append(
            _Issue(
                ("device",),
                "cpu, but the CPU target runs vLLM's CPU image; SGLang runs on GPUs here",
                "write kind: vllm for the CPU target, or device: gpu",
            )
        )
    if engine.max_num_batched_tokens is not None:
        issues.append(
            _Issue(
                ("max_num_batched_tokens",),
                "is vLLM's scheduler budget; SGLang has no flag of the same meaning",
                "remove it; SGLang's own --chunked-prefill-size can go in extra_args",
            )
        )
    for index, arg in enumerate(engine.extra_args):
        if not arg.startswith("--"):
            continue
        name = "--" + arg.split("=", 1)[0][2:].replace("_", "-")
        if name in _SGLANG_MODELLED:
            issues.append(
                _Issue(
                    ("extra_args", index),
                    f"{name} duplicates a setting the profile models",
                    f"set {_SGLANG_MODELLED[name]} instead, and remove {name} from extra_args",
                )
            )
    return issues


class EmbeddingsSpec(_Model):
    """The embedding model served by Text Embeddings Inference, on a GPU or on the CPU."""

    enabled: StrictBool = Field(
        default=True,
        description="false keeps this section but runs no TEI container.",
        examples=[True],
    )
    repo: RepoId | None = Field(
        default=None,
        description="Hugging Face repo id of the embedding model (required when enabled).",
        examples=["BAAI/bge-m3"],
    )
    revision: Revision = Field(
        default="main",
        description="Branch, tag or full 40-character commit.",
        examples=["main"],
    )
    served_model_name: ServedName | None = Field(
        default=None,
        description="Model name clients send to /v1/embeddings; defaults to the repo's last part.",
        examples=["bge-m3"],
    )
    device: Device = Field(
        default="gpu",
        description="Run TEI on a GPU (the CUDA image for its architecture) or on the CPU.",
        examples=["gpu"],
    )
    gpu: GpuRef | None = Field(
        default=None,
        description="GPU index or UUID for TEI; left out, it shares the chat engine's first GPU.",
        examples=[0],
    )
    max_batch_tokens: Annotated[StrictInt, Ge(1), Le(10_485_760)] | None = Field(
        default=None,
        description="TEI --max-batch-tokens: tokens in one batch (TEI's default 16384).",
        examples=[16384],
    )
    max_client_batch_size: Annotated[StrictInt, Ge(1), Le(65_536)] | None = Field(
        default=None,
        description="TEI --max-client-batch-size: inputs in one request (TEI's default 32).",
        examples=[32],
    )
    max_concurrent_requests: Annotated[StrictInt, Ge(1), Le(65_536)] | None = Field(
        default=None,
        description="TEI --max-concurrent-requests (TEI's default 512).",
        examples=[512],
    )
    pooling: Pooling | None = Field(
        default=None,
        description="TEI --pooling; left out, the model's own configuration.",
        examples=["cls"],
    )
    extra_args: tuple[TeiArg, ...] = Field(
        default=(),
        description="Further TEI flags, one argument per item.",
        examples=[["--auto-truncate"]],
    )

    @property
    def served_name(self) -> str:
        """The name clients use: `served_model_name`, else the repo's last part, as written."""
        return self.served_model_name or (self.repo or "").rsplit("/", 1)[-1]

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingsSpec:
        issues: list[_Issue] = []
        if self.enabled and self.repo is None:
            issues.append(
                _Issue(
                    ("repo",),
                    "required when embeddings are enabled",
                    "add repo: BAAI/bge-m3 (or another embedding model), or write enabled: false",
                )
            )
        if self.device == "cpu" and self.gpu is not None:
            issues.append(
                _Issue(
                    ("gpu",),
                    "a GPU is given but device is cpu",
                    "remove gpu, or write device: gpu",
                )
            )
        _raise_issues(issues)
        return self


class ImagesSpec(_Model):
    """Container images; left out, the tags pinned in this appliance's catalog."""

    vllm: ImageRef | None = Field(
        default=None,
        description="vLLM OpenAI server image, pinned by tag or digest.",
        examples=["vllm/vllm-openai:v0.32.0"],
    )
    sglang: ImageRef | None = Field(
        default=None,
        description="SGLang server image (spec.engine.kind: sglang), pinned by tag or digest.",
        examples=["lmsysorg/sglang:v0.5.21"],
    )
    tei: ImageRef | None = Field(
        default=None,
        description="TEI image, pinned; must match the GPU architecture (or the CPU build).",
        examples=["ghcr.io/huggingface/text-embeddings-inference:89-1.9.3"],
    )


class PortsSpec(_Model):
    """Host ports. Engines are published on 127.0.0.1 only; the gateway is the one way in."""

    vllm: Port = Field(
        default=8000,
        description="The chat engine (vLLM, or SGLang with engine.kind: sglang) on 127.0.0.1.",
        examples=[8000],
    )
    tei: Port = Field(default=8001, description="TEI on 127.0.0.1.", examples=[8001])
    vllm_update: Port = Field(
        default=8100,
        description="A model update's second chat port on 127.0.0.1: apply starts the updated "
        "chat engine there beside the old one when both fit (blue/green): spec.model's, or with "
        "spec.switching the awake model's, whose own port and this one take turns from then on.",
        examples=[8100],
    )
    gateway: Port = Field(
        default=8080,
        description="The gateway, on spec.gateway.host: the URL clients use.",
        examples=[8080],
    )

    @model_validator(mode="after")
    def _unique(self) -> PortsSpec:
        issues: list[_Issue] = []
        owner: dict[int, str] = {}
        for name in ("vllm", "tei", "gateway", "vllm_update"):
            port = getattr(self, name)
            if port in owner:
                issues.append(
                    _Issue(
                        (name,),
                        f"{port} is also spec.ports.{owner[port]}",
                        "give every service its own port",
                    )
                )
            owner.setdefault(port, name)
        _raise_issues(issues)
        return self


class Timeouts(_Model):
    """How long the gateway waits on an upstream before it counts as failed."""

    connect_seconds: Annotated[StrictFloat, Gt(0), Le(600)] = Field(
        default=5.0, description="Time to open a connection.", examples=[5]
    )
    read_seconds: Annotated[StrictFloat, Gt(0), Le(3600)] = Field(
        default=300.0,
        description="Longest wait for a response and its first bytes (covers queueing and time "
        "to first token).",
        examples=[300],
    )
    stream_idle_seconds: Annotated[StrictFloat, Gt(0), Le(3600)] = Field(
        default=30.0,
        description="Longest silence between bytes once a response has begun; a stream silent "
        "this long is ended with an error event.",
        examples=[30],
    )


class RemoteApi(_Model):
    """An OpenAI-compatible API the gateway overflows to. Its key is named, never written here."""

    base_url: HttpUrl = Field(
        description="Base URL of the OpenAI-compatible API, up to and including /v1.",
        examples=["https://api.openai.com/v1"],
    )
    api_key_env: EnvVarName | None = Field(
        default=None,
        description="Environment variable that holds the API key.",
        examples=["OPENAI_API_KEY"],
    )
    api_key_file: AbsolutePath | None = Field(
        default=None,
        description="File (mode 0600) that holds the API key.",
        examples=["/etc/llm-appliance/remote-api.key"],
    )
    model_map: dict[ServedName, RemoteModelName] = Field(
        default_factory=dict,
        description="Local served model name → remote model name; unmapped names are sent "
        "unchanged.",
        examples=[{"qwen2.5-7b-instruct": "gpt-4o-mini"}],
    )
    timeouts: Timeouts = Field(default=Timeouts(), description="Timeouts towards the remote API.")

    @model_validator(mode="after")
    def _one_key_source(self) -> RemoteApi:
        if self.api_key_env is not None and self.api_key_file is not None:
            _raise_issues(
                [_Issue(("api_key_file",), "both api_key_env and api_key_file are set", "keep one")]
            )
        if self.api_key_env is None and self.api_key_file is None:
            _raise_issues(
                [
                    _Issue(
                        ("api_key_env",),
                        "the remote API needs a key source",
                        "add api_key_env: OPENAI_API_KEY (a variable the gateway's environment "
                        "sets), or api_key_file: /etc/llm-appliance/remote-api.key (mode 0600)",
                    )
                ]
            )
        return self


class FallbackSpec(_Model):
    """When requests go to the remote API instead of the local engine."""

    mode: FallbackMode = Field(
        default=FallbackMode.OFF,
        description="off: local only; auto: overflow to the remote API when the local engine is "
        "down, failing or queued past queue_threshold; always: remote only (maintenance).",
        examples=["auto"],
    )
    queue_threshold: Annotated[StrictInt, Ge(1), Le(100_000)] = Field(
        default=8,
        description="In auto mode, requests waiting in vLLM above which new ones overflow.",
        examples=[8],
    )
    metrics_max_age_seconds: Annotated[StrictFloat, Gt(0), Le(300)] = Field(
        default=5.0,
        description="Health and queue readings older than this are not trusted for routing.",
        examples=[5],
    )
    remote: RemoteApi | None = Field(
        default=None, description="The remote API; required when mode is auto or always."
    )

    @model_validator(mode="after")
    def _remote_when_used(self) -> FallbackSpec:
        if self.mode != "off" and self.remote is None:
            _raise_issues(
                [
                    _Issue(
                        ("mode",),
                        f"mode {self.mode} needs a remote API, and none is configured",
                        "add remote: with base_url: https://api.openai.com/v1 and "
                        "api_key_env: OPENAI_API_KEY, or write mode: off",
                    )
                ]
            )
        return self


class TlsSpec(_Model):
    """TLS for the gateway; both files are read by the gateway at start."""

    cert_file: AbsolutePath = Field(
        description="PEM certificate chain.", examples=["/etc/llm-appliance/tls/cert.pem"]
    )
    key_file: AbsolutePath = Field(
        description="PEM private key (mode 0600).", examples=["/etc/llm-appliance/tls/key.pem"]
    )


class GatewaySpec(_Model):
    """The OpenAI-compatible front door: where it listens, how it checks keys, when it falls back.

    Its port is `spec.ports.gateway`, beside the engines' ports, so port clashes are one check.
    """

    host: BindHost = Field(
        default=_ALL_INTERFACES,
        description="Address the gateway listens on.",
        examples=[_ALL_INTERFACES],
    )
    require_api_key: StrictBool = Field(
        default=True,
        description="Require an Authorization: Bearer key on every /v1 request.",
        examples=[True],
    )
    keys_file: AbsolutePath | None = Field(
        default=None,
        description="Hashed API keys (mode 0600); default <storage.state_dir>/gateway/keys.json.",
        examples=["/var/lib/llm-appliance/state/gateway/keys.json"],
    )
    admin_key_env: EnvVarName | None = Field(
        default=None,
        description="Environment variable holding the admin key (for /admin endpoints).",
        examples=["APPLIANCE_ADMIN_KEY"],
    )
    admin_key_file: AbsolutePath | None = Field(
        default=None,
        description="File (mode 0600) holding the admin key; with neither set, "
        "<storage.state_dir>/gateway/admin.key.",
        examples=["/etc/llm-appliance/admin.key"],
    )
    tls: TlsSpec | None = Field(default=None, description="Serve HTTPS with these files.")
    timeouts: Timeouts = Field(default=Timeouts(), description="Timeouts towards local engines.")
    # Long enough for a long answer to finish (8k tokens at 30 tokens/s is about 270 s): a
    # model update should not cut a stream a client is reading. It costs nothing when nothing
    # is in flight: apply goes on as soon as the old engine's last request ends.
    update_drain_seconds: Annotated[StrictFloat, Ge(0), Le(3600)] = Field(
        default=300.0,
        description="In a model update, how long the old chat engine's requests in flight "
        "(streams included) may run on before apply stops it; apply goes on as soon as the "
        "last one ends. 0 stops it at once.",
        examples=[300.0],
    )
    fallback: FallbackSpec = Field(default=FallbackSpec(), description="API fallback.")

    @model_validator(mode="after")
    def _one_admin_source(self) -> GatewaySpec:
        if self.admin_key_env is not None and self.admin_key_file is not None:
            _raise_issues(
                [
                    _Issue(
                        ("admin_key_file",),
                        "both admin_key_env and admin_key_file are set",
                        "keep one",
                    )
                ]
            )
        return self


class AlertThresholds(_Model):
    """When the monitor raises an alert; each must hold for `sustain_seconds` first."""

    gpu_temperature_c: Annotated[StrictInt, Ge(30), Le(120)] = Field(
        default=80, description="GPU temperature in °C.", examples=[80]
    )
    gpu_memory_used_pct: Annotated[StrictFloat, Gt(0), Le(100)] = Field(
        default=99.0,
        description="GPU memory used, in %; must be above the share vLLM takes by design "
        "(gpu_memory_utilization), so it catches something else filling the GPU.",
        examples=[99],
    )
    kv_cache_usage_pct: Annotated[StrictFloat, Gt(0), Le(100)] = Field(
        default=90.0, description="vLLM KV cache usage, in %.", examples=[90]
    )
    waiting_requests: Annotated[StrictInt, Ge(1), Le(100_000)] = Field(
        default=16, description="Requests waiting in vLLM's queue.", examples=[16]
    )
    ttft_p95_seconds: Annotated[StrictFloat, Gt(0), Le(600)] = Field(
        default=2.0, description="95th percentile time to first token, in seconds.", examples=[2]
    )
    error_rate_pct: Annotated[StrictFloat, Gt(0), Le(100)] = Field(
        default=5.0, description="Share of requests that failed, in %.", examples=[5]
    )
    sustain_seconds: Annotated[StrictFloat, Ge(0), Le(3600)] = Field(
        default=30.0,
        description="How long a condition must hold before it alerts (and clear before it "
        "clears), so alerts do not flap.",
        examples=[30],
    )


class MonitoringSpec(_Model):
    """Sampling and alerting."""

    interval_seconds: Annotated[StrictFloat, Ge(0.1), Le(60)] = Field(
        default=1.0, description="Seconds between samples.", examples=[1]
    )
    alerts: AlertThresholds = Field(default=AlertThresholds(), description="Alert thresholds.")


class StorageSpec(_Model):
    """Where the appliance keeps weights and its own state on the box."""

    models_dir: AbsolutePath = Field(
        default=DEFAULT_MODELS_DIR,
        description="Downloaded weights; mounted read-only into the engines.",
        examples=["/var/lib/llm-appliance/models"],
    )
    state_dir: AbsolutePath = Field(
        default=DEFAULT_STATE_DIR,
        description="Gateway keys, the fallback mode, metric history.",
        examples=["/var/lib/llm-appliance/state"],
    )


class Spec(_Model):
    """Everything the box runs. Rules that span sections live here."""

    model: ModelSpec = Field(
        description="The chat model.",
        examples=[{"repo": "Qwen/Qwen2.5-7B-Instruct-AWQ", "quantization": "awq"}],
    )
    engine: EngineSpec = Field(default=EngineSpec(), description="vLLM flags.")
    gpus: GpuSelection = Field(
        default="all",
        description="GPUs the chat engine gets: all, or a list of indices or UUIDs.",
        examples=["all", [0, 1]],
    )
    embeddings: EmbeddingsSpec | None = Field(
        default=None, description="The embedding model; leave out for none."
    )
    switching: SwitchingSpec | None = Field(
        default=None,
        description="Further chat models that take turns on the chat engine's GPUs with vLLM's "
        "sleep mode; leave out for one chat model.",
    )
    images: ImagesSpec = Field(default=ImagesSpec(), description="Pinned images.")
    ports: PortsSpec = Field(default=PortsSpec(), description="Host ports.")
    gateway: GatewaySpec = Field(default=GatewaySpec(), description="The gateway.")
    monitoring: MonitoringSpec = Field(default=MonitoringSpec(), description="Monitoring.")
    storage: StorageSpec = Field(default=StorageSpec(), description="Directories on the box.")
    cost: CostInputs | None = Field(
        default=None,
        description="What the box costs and which API it replaces, for `appliance cost` and the "
        "TUI's cost view; flags of `appliance cost` override it.",
    )

    @property
    def embeddings_enabled(self) -> bool:
        """True when a TEI container should run."""
        return self.embeddings is not None and self.embeddings.enabled

    @property
    def switched_models(self) -> tuple[ModelSpec, ...]:
        """The chat models that take turns by sleeping: spec.model first, then the switching
        list; empty for a profile with one chat model."""
        if self.switching is None:
            return ()
        return (self.model, *self.switching.models)

    @property
    def served_names(self) -> tuple[str, ...]:
        """Every model name the gateway answers for locally: chat, adapters, embeddings."""
        names = [self.model.served_name, *(a.name for a in self.model.lora_adapters)]
        if self.switching is not None:
            names += [m.served_name for m in self.switching.models]
        if self.embeddings is not None and self.embeddings.enabled:
            names.append(self.embeddings.served_name)
        return tuple(names)

    @property
    def keys_file(self) -> Path:
        """Where the gateway's hashed API keys live."""
        return self.gateway.keys_file or self.storage.state_dir / "gateway" / "keys.json"

    @property
    def admin_key_file(self) -> Path | None:
        """The admin key's file, or None when it comes from `gateway.admin_key_env`."""
        if self.gateway.admin_key_env is not None:
            return None
        return self.gateway.admin_key_file or self.storage.state_dir / "gateway" / "admin.key"

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        issues: list[_Issue] = []
        engine = self.engine
        tp = engine.tensor_parallel_size
        if self.gpus != "all" and tp > len(self.gpus):
            count = len(self.gpus)
            issues.append(
                _Issue(
                    ("engine", "tensor_parallel_size"),
                    f"{tp} but spec.gpus lists {count} GPU{'s' if count != 1 else ''}",
                    f"list {tp} GPUs in spec.gpus, or write tensor_parallel_size: "
                    f"{1 << (count.bit_length() - 1)}",
                )
            )
        if engine.device == "cpu" and self.gpus != "all":
            issues.append(
                _Issue(
                    ("gpus",),
                    "GPUs are listed but engine.device is cpu",
                    "remove spec.gpus, or write engine.device: gpu",
                )
            )
        issues += _engine_kind_issues(self)
        issues += _switching_issues(self)
        if self.model.lora_adapters and engine.max_lora_rank is None:
            issues.append(
                _Issue(
                    ("engine", "max_lora_rank"),
                    "required when spec.model.lora_adapters is set",
                    "write the largest rank among your adapters, e.g. max_lora_rank: 16 "
                    "(vLLM allows 1, 8, 16, 32, 64, 128, 256, 320, 512)",
                )
            )
        if not self.model.lora_adapters:
            for name in ("max_loras", "max_lora_rank"):
                if getattr(engine, name) is not None:
                    issues.append(
                        _Issue(
                            ("engine", name),
                            "set, but there are no LoRA adapters",
                            f"add spec.model.lora_adapters, or remove {name}",
                        )
                    )
        emb = self.embeddings
        if emb is not None and emb.enabled:
            local = [self.model.served_name, *(a.name for a in self.model.lora_adapters)]
            local += [m.served_name for m in (self.switching.models if self.switching else ())]
            if emb.served_name in local:
                issues.append(
                    _Issue(
                        ("embeddings", "served_model_name"),
                        f"'{emb.served_name}' is also a chat model name; the gateway routes by "
                        "model name",
                        "give the embedding model its own served_model_name",
                    )
                )
        remote = self.gateway.fallback.remote
        if remote is not None:
            known = self.served_names
            for local_name in remote.model_map:
                if local_name not in known:
                    close = difflib.get_close_matches(local_name, known, n=1)
                    hint = (
                        f"did you mean {close[0]}?"
                        if close
                        else f"map a name this box serves: {', '.join(known)}"
                    )
                    issues.append(
                        _Issue(
                            ("gateway", "fallback", "remote", "model_map", local_name),
                            f"'{local_name}' is not a model this box serves",
                            hint,
                        )
                    )
        planned = engine.gpu_memory_utilization * 100
        if self.monitoring.alerts.gpu_memory_used_pct <= planned:
            issues.append(
                _Issue(
                    ("monitoring", "alerts", "gpu_memory_used_pct"),
                    f"{_num(self.monitoring.alerts.gpu_memory_used_pct)} is at or below the "
                    f"{_num(planned)} % vLLM takes by design, so it would always alert",
                    f"set it above {_num(planned)}, e.g. gpu_memory_used_pct: 99",
                )
            )
        _raise_issues(issues)
        return self


def _engine_kind_issues(spec: Spec) -> list[_Issue]:
    """What the chat engine's kind rules out elsewhere in the spec: LoRA adapters under SGLang
    (served by vLLM here), and an image pinned for the other engine."""
    engine = spec.engine
    issues: list[_Issue] = []
    if engine.kind == "sglang" and spec.model.lora_adapters:
        issues.append(
            _Issue(
                ("model", "lora_adapters"),
                "LoRA adapters are served by vLLM here; engine.kind is sglang",
                "remove lora_adapters, or write engine.kind: vllm",
            )
        )
    pinned_other = spec.images.vllm if engine.kind == "sglang" else spec.images.sglang
    if pinned_other is not None:
        other = "vllm" if engine.kind == "sglang" else "sglang"
        issues.append(
            _Issue(
                ("images", other),
                f"pins a {other} image, but engine.kind is {engine.kind}",
                f"pin the image in spec.images.{engine.kind}, or write engine.kind: {other}",
            )
        )
    return issues


def _switching_issues(spec: Spec) -> list[_Issue]:
    """Switched models need vLLM on GPUs (sleep mode is vLLM's, on CUDA), names no other model
    has (the gateway routes by name) and host ports no other service has."""
    switching = spec.switching
    if switching is None:
        return []
    issues: list[_Issue] = []
    if spec.engine.kind != "vllm" or spec.engine.device != "gpu":
        issues.append(
            _Issue(
                ("switching",),
                "needs vLLM on GPUs (sleep mode is vLLM's, on CUDA)",
                "write engine.kind: vllm and engine.device: gpu, or remove spec.switching",
            )
        )
    names = {spec.model.served_name: "spec.model", **{a.name: "a LoRA adapter"
             for a in spec.model.lora_adapters}}  # fmt: skip
    ports = {spec.ports.vllm: "spec.ports.vllm", spec.ports.gateway: "spec.ports.gateway"}
    if spec.embeddings_enabled:
        ports[spec.ports.tei] = "spec.ports.tei"
    for index, model in enumerate(switching.models):
        if model.served_name in names:
            issues.append(
                _Issue(
                    ("switching", "models", index, "served_model_name"),
                    f"'{model.served_name}' is also the name of {names[model.served_name]}",
                    "give every chat model its own served_model_name: clients choose by it",
                )
            )
        names.setdefault(model.served_name, f"switching.models[{index}]")
        if model.port in ports:
            issues.append(
                _Issue(
                    ("switching", "models", index, "port"),
                    f"{model.port} is also {ports[model.port]}",
                    "give every engine its own port",
                )
            )
        ports.setdefault(model.port, f"switching.models[{index}].port")
    return issues


class Profile(_Model):
    """One box's whole deployment, as written in a profile YAML file."""

    api_version: Literal["llm-appliance/v1"] = Field(
        alias="apiVersion",
        description="Version of the profile format.",
        examples=[API_VERSION],
    )
    kind: Literal["Profile"] = Field(description="Always Profile.", examples=[KIND])
    metadata: Metadata = Field(
        description="Name and description.", examples=[{"name": "rtx4090-chat"}]
    )
    spec: Spec = Field(
        description="What the box runs.",
        examples=[{"model": {"repo": "Qwen/Qwen2.5-7B-Instruct-AWQ", "quantization": "awq"}}],
    )

    def as_switched(self, model: SwitchedModelSpec) -> Profile:
        """The profile as one further chat model's engine sees it (spec.switching): that model
        in spec.model, its port in spec.ports.vllm, its own gpu_memory_utilization and
        max_model_len where it sets them; every other setting shared with spec.model's."""
        spec = self.spec
        engine = spec.engine.model_copy(
            update={
                "gpu_memory_utilization": model.gpu_memory_utilization
                or spec.engine.gpu_memory_utilization,
                "max_model_len": model.max_model_len or spec.engine.max_model_len,
            }
        )
        ports = spec.ports.model_copy(update={"vllm": model.port})
        switched = spec.model_copy(update={"model": model, "engine": engine, "ports": ports})
        return self.model_copy(update={"spec": switched})

    @classmethod
    def from_spec(cls, name: str, spec: Spec, description: str | None = None) -> Profile:
        """A profile for `spec` in the current format (what `recommend -o` writes)."""
        return cls.model_validate(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": Metadata(name=name, description=description),
                "spec": spec,
            }
        )
