"""The profile: one YAML file that is the whole contract for a box.

A profile says which model the box serves and how (vLLM's flags by vLLM's names), which embedding
model runs beside it in Text Embeddings Inference, which images and ports are used, how the gateway
authenticates and falls back to a remote API, and when the monitor raises alerts. `plan`, `apply`,
the gateway, the monitor and the TUI all read the same `Profile` object, so everything a later stage
would trip over is refused here, at load time, with the file, the line, the field and what to write
instead.

What must stay true:

- Pure: the only IO is reading the one file `load_profile` is given (size checked before reading).
  Nothing here touches Docker, NVML, the Hub or the network.
- Strict: unknown keys, wrong types (`"8"` is not a number, `yes` is not a boolean), impossible
  combinations and literal secrets are errors. Every error is collected, not only the first, and is
  a `ProfileError` (exit code 2) -- never a traceback.
- YAML is read with PyYAML's SafeLoader machinery but with YAML 1.2 core scalars: only
  `true`/`false` are booleans, so `mode: off` is the string "off" and `revision: no` is "no",
  and there are no timestamps or sexagesimal numbers. Anchors and aliases are refused outright
  (alias bombs).
- Secrets never live in the file: the remote API key is named by `api_key_env` or `api_key_file`.
- `dump_profile` writes only what differs from the defaults, in schema order, and its output parses
  back to an equal profile. The JSON Schema committed in `profiles/profile.schema.json` is generated
  from these models (`python -m appliance.profile --write-schema`).
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Final, Literal, TypeAlias, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from yaml.reader import ReaderError

from appliance.economics import CostInputs
from appliance.errors import BadInputError
from appliance.sizing import DEFAULT_GPU_MEMORY_UTILIZATION
from appliance.vocabulary import (
    DEFAULT_MODELS_DIR,
    DEFAULT_STATE_DIR,
    Device,
    EngineKind,
    FallbackMode,
    KvCacheDtype,
    Quantization,
)

__all__ = [
    "API_VERSION",
    "KIND",
    "MAX_PROFILE_BYTES",
    "AlertThresholds",
    "Device",
    "EmbeddingsSpec",
    "EngineSpec",
    "FallbackSpec",
    "GatewaySpec",
    "ImagesSpec",
    "LoraAdapter",
    "Metadata",
    "ModelSpec",
    "MonitoringSpec",
    "PortsSpec",
    "Profile",
    "ProfileError",
    "ProfileProblem",
    "RemoteApi",
    "Spec",
    "StorageSpec",
    "Timeouts",
    "TlsSpec",
    "dump_profile",
    "json_schema",
    "load_profile",
    "parse_profile",
    "schema_text",
]

API_VERSION: Final = "llm-appliance/v1"
KIND: Final = "Profile"
MAX_PROFILE_BYTES: Final = 1024 * 1024  # a profile is a page of YAML; anything larger is a mistake
_MAX_DEPTH: Final = 64  # real profiles nest 5 deep; deeper input is hostile or broken

Pooling: TypeAlias = Literal["cls", "mean", "splade", "last-token"]
# vLLM accepts only these ranks (vllm/config/lora.py, MaxLoRARanks).
LoraRank: TypeAlias = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


# ---------------------------------------------------------------------------------------------
# Rule errors: how validators report a problem with a hint, and several problems at once.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issue:
    """One problem found by a cross-field rule; `path` is relative to where the rule runs."""

    path: tuple[str | int, ...]
    message: str
    hint: str = ""


def _rule(message: str, hint: str = "") -> PydanticCustomError:
    """A single problem with a hint, raised from a field validator."""
    return PydanticCustomError("profile_rule", "{message}", {"message": message, "hint": hint})


def _raise_issues(issues: Sequence[_Issue]) -> None:
    """Raise every problem a rule found as one error; the loader splits it back up by path.

    Pydantic stops a validator at its first exception, so a model-level rule collects its issues
    and raises them together; programmatic callers still see one readable message.
    """
    if issues:
        text = "; ".join(f"{'.'.join(map(str, i.path)) or '(here)'}: {i.message}" for i in issues)
        raise PydanticCustomError(
            "profile_rules", "{text}", {"text": text, "issues": tuple(issues)}
        )


# ---------------------------------------------------------------------------------------------
# Value types. Numbers and booleans are strict: YAML already typed them, and "8" or "yes" in a
# profile is a mistake worth naming rather than coercing.
# ---------------------------------------------------------------------------------------------

StrictBool = Annotated[bool, Strict()]
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]  # strict float still accepts an int such as `1`

_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_COMMIT_RE = re.compile(r"^(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,39}$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_SERVED_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GPU_UUID_RE = re.compile(rf"^(?:GPU-{_UUID}|MIG-(?:GPU-)?{_UUID}(?:/\d+/\d+)?)$")
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[A-Za-z0-9.-]+(?::[0-9]+)?)/)?"
    rf"(?P<path>{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def _slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return slug or "my-box"


def _check_slug(value: str) -> str:
    if not _SLUG_RE.match(value):
        raise _rule(
            f"'{_clip(value)}' is not a valid name: it becomes part of container names and labels",
            f"use 1-40 lowercase letters, digits and '-', starting and ending with a letter or "
            f"digit, e.g. name: {_slugify(value)}",
        )
    return value


def _check_repo(value: str) -> str:
    if _REPO_RE.match(value) and "--" not in value and ".." not in value:
        return value
    hint = "write the Hugging Face repo id as owner/name, e.g. repo: Qwen/Qwen2.5-7B-Instruct-AWQ"
    if value.startswith(("http://", "https://")):
        tail = "/".join(urlsplit(value).path.strip("/").split("/")[:2])
        hint = f"write only the repo id, not the URL: repo: {tail or 'owner/name'}"
    elif value.startswith(("/", "./", "~")):
        hint = (
            "profiles name weights by repo id; to use files already on the box, import them "
            "first: appliance weights import PATH --as owner/name"
        )
    raise _rule(f"'{_clip(value)}' is not a Hugging Face repo id (owner/name)", hint)


def _check_revision(value: str) -> str:
    if _COMMIT_RE.match(value):
        return value
    if _SHORT_COMMIT_RE.match(value):
        raise _rule(
            f"'{value}' looks like an abbreviated commit hash; the Hub resolves only full ones",
            "write the full 40-character commit hash, or a branch or tag name such as main",
        )
    if not _REF_RE.match(value) or ".." in value or value.endswith(("/", ".lock")):
        raise _rule(
            f"'{_clip(value)}' is not a revision",
            "write a branch or tag name (main, v1.0) or a full 40-character commit hash",
        )
    return value


def _check_served_name(value: str) -> str:
    if not _SERVED_RE.match(value):
        raise _rule(
            f"'{_clip(value)}' is not usable as a model name in API requests",
            "use letters, digits and . _ : / - (no spaces), e.g. qwen2.5-7b-instruct",
        )
    return value


def _check_remote_model(value: str) -> str:
    if not value or len(value) > 256 or any(c.isspace() for c in value):
        raise _rule(
            "not a model name the remote API would accept",
            "write the remote API's model id without spaces, e.g. gpt-4o-mini",
        )
    return value


def _check_env_name(value: str) -> str:
    # The value is never echoed: a key pasted here by mistake must not reach a log.
    if not _ENV_RE.match(value):
        raise _rule(
            "not an environment variable name",
            "write the NAME of the variable that holds the secret, e.g. OPENAI_API_KEY; "
            "the value itself never goes in the profile",
        )
    return value


def _check_absolute(value: Path) -> Path:
    text = str(value)
    if text.startswith("~"):
        raise _rule(
            f"'{_clip(text)}': ~ is not expanded here",
            "write the full path, e.g. /var/lib/llm-appliance/models",
        )
    if not value.is_absolute():
        raise _rule(
            f"'{_clip(text)}' is a relative path; the services that read it run elsewhere",
            f"write an absolute path, e.g. /{text.lstrip('./') or 'var/lib/llm-appliance'}",
        )
    return value


def _check_http_url(value: str) -> str:
    hint = "write the API's base URL, e.g. base_url: https://api.openai.com/v1"
    if any(c.isspace() for c in value):
        raise _rule(f"'{_clip(value)}' contains spaces", hint)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _rule(f"'{_clip(value)}' is not an http:// or https:// URL", hint)
    if parts.username is not None or parts.password is not None:
        raise _rule(
            "the URL carries credentials (user:password@); secrets never go in the profile",
            "remove them and name the key with api_key_env or api_key_file",
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port == -1 or not parts.hostname:
        raise _rule(f"'{_clip(value)}' has no valid host or port", hint)
    if parts.query or parts.fragment:
        raise _rule(f"'{_clip(value)}': a base URL takes no ?query or #fragment", hint)
    return value


def _check_bind_host(value: str) -> str:
    if value == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _rule(
            f"'{_clip(value)}' is not an address to listen on",
            "write 0.0.0.0 (every interface), 127.0.0.1 (this box only), :: (IPv6) or one of "
            "the box's own IP addresses",
        ) from None
    return value


def _check_image(value: str) -> str:
    match = _IMAGE_RE.match(value)
    hint = (
        "write a pinned image reference such as vllm/vllm-openai:v0.32.0 or repo@sha256:..., "
        "or leave it out to use the tags this appliance was tested with"
    )
    if not match:
        raise _rule(f"'{_clip(value)}' is not a container image reference", hint)
    if match["tag"] is None and match["digest"] is None:
        raise _rule(f"'{_clip(value)}' is not pinned: it has no tag or digest", hint)
    if match["tag"] == "latest" and match["digest"] is None:
        raise _rule(f"'{_clip(value)}': latest is not a pin and changes under you", hint)
    return value


def _port_before(value: object) -> object:
    if isinstance(value, str) and ":" in value:
        raise _rule(
            f"'{_clip(value)}': write only the port number here",
            "engines always listen on 127.0.0.1 and only the gateway is exposed; its address is "
            "spec.gateway.host",
        )
    return value


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        lower = 1 << (value.bit_length() - 1)
        raise _rule(
            f"{value} — must be a power of two (1, 2, 4, 8): heads split evenly only then",
            f"use tensor_parallel_size: {lower} or {lower * 2}",
        )
    return value


def _gpu_ref(value: object) -> int | str:
    """One GPU: an index as nvidia-smi numbers them, or a GPU/MIG UUID (stable across reboots)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 63:
            return value
        raise _rule(
            f"{value} — a GPU index must be from 0 to 63", "list GPUs as nvidia-smi -L does"
        )
    if isinstance(value, str):
        if _GPU_UUID_RE.match(value):
            return value
        if value.isdigit():
            raise _rule(f"'{value}' is text; write the GPU index as a number", f"write {value}")
    raise _rule(
        f"{_show(value)} is not a GPU index or UUID",
        "write an index (0, 1, …) or a UUID such as GPU-5f2d…, as `nvidia-smi -L` prints them",
    )


def _gpu_selection(value: object) -> object:
    if value == "all":
        return value
    if not isinstance(value, list | tuple):
        example = (
            f"[{value}]" if isinstance(value, int) and not isinstance(value, bool) else "[0, 1]"
        )
        raise _rule(
            f"{_show(value)} is not a GPU selection",
            f"write gpus: all, or a list of indices or UUIDs such as gpus: {example}",
        )
    if not value:
        raise _rule("the list is empty", "write gpus: all, or list at least one GPU: gpus: [0]")
    issues: list[_Issue] = []
    seen: set[object] = set()
    refs: list[int | str] = []
    for index, item in enumerate(value):
        try:
            ref = _gpu_ref(item)
        except PydanticCustomError as exc:
            ctx = exc.context or {}
            issues.append(_Issue((index,), str(ctx.get("message")), str(ctx.get("hint", ""))))
            continue
        if ref in seen:
            issues.append(_Issue((index,), f"{_show(ref)} is listed twice", "list each GPU once"))
        seen.add(ref)
        refs.append(ref)
    if not issues and len({type(r) for r in refs}) > 1:
        issues.append(
            _Issue((), "mixes indices and UUIDs", "list either indices or UUIDs, not both")
        )
    _raise_issues(issues)
    return tuple(refs)


Slug = Annotated[
    str,
    AfterValidator(_check_slug),
    Field(json_schema_extra={"pattern": _SLUG_RE.pattern}),
]
RepoId = Annotated[
    str, AfterValidator(_check_repo), Field(json_schema_extra={"pattern": _REPO_RE.pattern})
]
Revision = Annotated[str, AfterValidator(_check_revision)]
ServedName = Annotated[
    str,
    AfterValidator(_check_served_name),
    Field(json_schema_extra={"pattern": _SERVED_RE.pattern}),
]
RemoteModelName = Annotated[str, AfterValidator(_check_remote_model)]
EnvVarName = Annotated[
    str, AfterValidator(_check_env_name), Field(json_schema_extra={"pattern": _ENV_RE.pattern})
]
AbsolutePath = Annotated[Path, AfterValidator(_check_absolute)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
BindHost = Annotated[str, AfterValidator(_check_bind_host)]
ImageRef = Annotated[str, AfterValidator(_check_image)]
Port = Annotated[int, Strict(), Ge(1), Le(65535), BeforeValidator(_port_before)]
GpuRef = Annotated[int | str, BeforeValidator(_gpu_ref)]
GpuSelection = Annotated[Literal["all"] | tuple[int | str, ...], BeforeValidator(_gpu_selection)]


# ---------------------------------------------------------------------------------------------
# Command-line pass-through: extra flags must not fight the ones the profile models.
# ---------------------------------------------------------------------------------------------

_VLLM_MODELLED: Final[dict[str, str]] = {
    "--model": "spec.model.repo",
    "--served-model-name": "spec.model.served_model_name",
    "--revision": "spec.model.revision",
    "--quantization": "spec.model.quantization",
    "-q": "spec.model.quantization",
    "--dtype": "spec.model.quantization (bf16 and fp16 set the dtype)",
    "--enable-lora": "spec.model.lora_adapters",
    "--lora-modules": "spec.model.lora_adapters",
    "--max-model-len": "spec.engine.max_model_len",
    "--max-num-seqs": "spec.engine.max_num_seqs",
    "--max-num-batched-tokens": "spec.engine.max_num_batched_tokens",
    "--gpu-memory-utilization": "spec.engine.gpu_memory_utilization",
    "--enable-prefix-caching": "spec.engine.enable_prefix_caching",
    "--kv-cache-dtype": "spec.engine.kv_cache_dtype",
    "--tensor-parallel-size": "spec.engine.tensor_parallel_size",
    "-tp": "spec.engine.tensor_parallel_size",
    "--enforce-eager": "spec.engine.enforce_eager",
    "--disable-custom-all-reduce": "spec.engine.disable_custom_all_reduce",
    "--max-loras": "spec.engine.max_loras",
    "--max-lora-rank": "spec.engine.max_lora_rank",
    "--download-dir": "spec.storage.models_dir",
    "--port": "spec.ports.vllm",
}
# SGLang's names for the settings the profile models (sglang 0.5.21,
# python/sglang/srt/arg_groups/fields/*.py: each field `x_y` is the flag `--x-y`, plus the aliases
# its Arg declares; see appliance/runtime/specs.py `sglang_command`).
_SGLANG_MODELLED: Final[dict[str, str]] = {
    "--model-path": "spec.model.repo",
    "--model": "spec.model.repo",
    "--served-model-name": "spec.model.served_model_name",
    "--revision": "spec.model.revision",
    "--quantization": "spec.model.quantization",
    "--dtype": "spec.model.quantization (bf16 and fp16 set the dtype)",
    "--context-length": "spec.engine.max_model_len",
    "--max-running-requests": "spec.engine.max_num_seqs",
    "--mem-fraction-static": "spec.engine.gpu_memory_utilization",
    "--disable-radix-cache": "spec.engine.enable_prefix_caching",
    "--kv-cache-dtype": "spec.engine.kv_cache_dtype",
    "--tp-size": "spec.engine.tensor_parallel_size",
    "--tp": "spec.engine.tensor_parallel_size",  # argparse's abbreviation of --tp-size
    "--tensor-parallel-size": "spec.engine.tensor_parallel_size",
    "--disable-custom-all-reduce": "spec.engine.disable_custom_all_reduce",
    "--disable-cuda-graph": "spec.engine.enforce_eager",
    "--disable-decode-cuda-graph": "spec.engine.enforce_eager",
    "--disable-prefill-cuda-graph": "spec.engine.enforce_eager",
    "--enable-metrics": "nothing: the appliance always turns SGLang's metrics on",
    "--download-dir": "spec.storage.models_dir",
    "--port": "spec.ports.vllm",
}
_TEI_MODELLED: Final[dict[str, str]] = {
    "--model-id": "spec.embeddings.repo",
    "--revision": "spec.embeddings.revision",
    "--served-model-name": "spec.embeddings.served_model_name",
    "--max-batch-tokens": "spec.embeddings.max_batch_tokens",
    "--max-client-batch-size": "spec.embeddings.max_client_batch_size",
    "--max-concurrent-requests": "spec.embeddings.max_concurrent_requests",
    "--pooling": "spec.embeddings.pooling",
    "--huggingface-hub-cache": "spec.storage.models_dir",
    "--port": "spec.ports.tei",
    "-p": "spec.ports.tei",
}
_ENGINE_REFUSED: Final[dict[str, str]] = {
    "--host": "engines always listen on 127.0.0.1; only the gateway is exposed (spec.gateway.host)",
    "--hostname": "engines always listen on 127.0.0.1; only the gateway is exposed "
    "(spec.gateway.host)",
    "--api-key": "the gateway checks API keys (spec.gateway); engines are reachable only from "
    "the box itself",
    "--uds": "the appliance talks to engines over 127.0.0.1 ports (spec.ports)",
    "--admin-api-key": "the gateway checks API keys (spec.gateway); engines are reachable only "
    "from the box itself",
}


def _check_engine_arg(value: str, modelled: dict[str, str]) -> str:
    if not value:
        raise _rule("an empty argument", "remove the empty item")
    if not value.startswith("-"):
        return value  # the value of the previous flag
    flag = value.split("=", 1)[0]
    if any(c.isspace() for c in flag) or ("=" not in value and any(c.isspace() for c in value)):
        first = value.split(maxsplit=1)[0]
        raise _rule(
            f"'{_clip(value)}' holds a flag and its value in one item",
            f"write one argument per item: '{first}=VALUE', or '{first}' and 'VALUE' as two items",
        )
    name = flag if not flag.startswith("--") else "--" + flag[2:].replace("_", "-")
    positive = "--" + name[5:] if name.startswith("--no-") else name
    if name in _ENGINE_REFUSED:
        raise _rule(f"{flag} is not allowed in extra_args", _ENGINE_REFUSED[name])
    for candidate in (name, positive):
        if candidate in modelled:
            raise _rule(
                f"{flag} duplicates a setting the profile models",
                f"set {modelled[candidate]} instead, and remove {flag} from extra_args",
            )
    return value


def _vllm_arg(value: str) -> str:
    return _check_engine_arg(value, _VLLM_MODELLED)


def _tei_arg(value: str) -> str:
    return _check_engine_arg(value, _TEI_MODELLED)


VllmArg = Annotated[str, AfterValidator(_vllm_arg)]
TeiArg = Annotated[str, AfterValidator(_tei_arg)]


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
    gateway: Port = Field(
        default=8080,
        description="The gateway, on spec.gateway.host: the URL clients use.",
        examples=[8080],
    )

    @model_validator(mode="after")
    def _unique(self) -> PortsSpec:
        issues: list[_Issue] = []
        owner: dict[int, str] = {}
        for name in ("vllm", "tei", "gateway"):
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
    def served_names(self) -> tuple[str, ...]:
        """Every model name the gateway answers for locally: chat, adapters, embeddings."""
        names = [self.model.served_name, *(a.name for a in self.model.lora_adapters)]
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


# ---------------------------------------------------------------------------------------------
# Problems and the error that carries them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileProblem:
    """One thing wrong with a profile file, located as precisely as the file allows.

    `line` and `column` are 1-based, None when the problem is the file as a whole. `field` is the
    dotted path (`spec.model.lora_adapters[0].repo`), "" for the file as a whole.
    """

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        """`file:line: field: message`, then the hint on its own line after an arrow."""
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        head = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{head}\n  → {self.hint}" if self.hint else head

    def _sort_key(self) -> tuple[int, int, str, str]:
        return (self.line or 0, self.column or 0, self.field, self.message)


class ProfileError(BadInputError):
    """A profile that cannot be used, with every problem found in it (exit code 2)."""

    def __init__(self, problems: Iterable[ProfileProblem]) -> None:
        unique = {(p.line, p.field, p.message): p for p in problems}
        self.problems: list[ProfileProblem] = sorted(unique.values(), key=ProfileProblem._sort_key)
        if not self.problems:
            msg = "ProfileError needs at least one problem"
            raise ValueError(msg)
        first = self.problems[0]
        count = len(self.problems)
        summary = first.render().split("\n", 1)[0]
        if count > 1:
            summary += f" (and {count - 1} more)"
        super().__init__(summary, first.hint)

    def render(self) -> str:
        """Every problem, in file order, each with its hint; a count when there are several."""
        lines = [p.render() for p in self.problems]
        if len(self.problems) > 1:
            lines.append(f"{self.problems[0].file}: {len(self.problems)} problems")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# YAML: SafeLoader machinery, YAML 1.2 core scalars, line numbers kept per path.
# ---------------------------------------------------------------------------------------------

_NULL_TAG: Final = "tag:yaml.org,2002:null"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MAP_TAG: Final = "tag:yaml.org,2002:map"

_INT_RE = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader's reader, scanner, parser and composer with YAML 1.2 core resolution.

    Only the node tree is used; `_Builder` turns it into plain data and remembers where every
    key came from. Aliases stop composition at once (a few lines of aliases can expand to
    gigabytes); anchors are recorded and reported.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchor_lines: list[int] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        is_alias = self.check_event(yaml.AliasEvent)  # peeks: sets current_event
        event = self.current_event
        mark = getattr(event, "start_mark", None)
        line = mark.line + 1 if mark is not None else 0
        if is_alias:
            raise _AliasFoundError(line)
        if getattr(event, "anchor", None) is not None:
            self.anchor_lines.append(line)
        return super().compose_node(parent, index)


# YAML 1.2 core schema only (SafeLoader's YAML 1.1 resolvers are dropped). Order matters: the
# first matching resolver wins, so ints are tried before floats.
_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))
_Loader.add_implicit_resolver(_NULL_TAG, _NULL_RE, ["~", "n", "N", ""])


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings YAML 1.2 would read as numbers (e.g. `1e5`).

    It keeps YAML 1.1's resolvers too, so `off`, `yes` and dates stay quoted and other YAML tools
    read the file the same way the appliance does. Lists are indented under their key, as people
    write them.
    """

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
_Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))

_LINE_BREAKS: Final = frozenset("\n\r\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Single-quoted and plain scalars fold line breaks (NEL and the Unicode separators included)
    # on the way back in; double quotes escape them, so text with breaks survives exactly.
    style = '"' if _LINE_BREAKS.intersection(data) else None
    return dumper.represent_scalar(_STR_TAG, data, style=style)


_Dumper.add_representer(str, _represent_str)


class _AliasFoundError(Exception):
    def __init__(self, line: int) -> None:
        super().__init__("alias")
        self.line = line


class _FatalError(Exception):
    """Raised inside the loader when nothing further can be checked."""

    def __init__(self, problems: list[ProfileProblem]) -> None:
        super().__init__("fatal")
        self.problems = problems


# Data as YAML gives it, before validation.
_Data: TypeAlias = "bool | int | float | str | list[_Data] | dict[str, _Data] | None"
_Path: TypeAlias = tuple[str | int, ...]

_SECRET_WORDS: Final = frozenset(
    {"password", "passwd", "secret", "secrets", "token", "apikey", "key", "credential",
     "credentials", "bearer", "authorization"}
)  # fmt: skip
_SECRET_EXEMPT_LAST: Final = frozenset({"env", "file", "path", "dir"})
_TOKEN_RE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16}|gsk_[A-Za-z0-9]{20,}"
    r"|AIza[0-9A-Za-z_-]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|r8_[A-Za-z0-9]{20,})"
)
_KEY_SOURCE_HINT: Final = (
    "secrets never go in the profile: put the key in an environment variable or a 0600 file and "
    "name it, e.g. api_key_env: OPENAI_API_KEY or api_key_file: /etc/llm-appliance/remote-api.key"
    " (a Hugging Face token is read from HF_TOKEN)"
)


def _key_words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _secret_named(key: str) -> bool:
    words = _key_words(key)
    if not words or words[-1] in _SECRET_EXEMPT_LAST:
        return False
    joined = "".join(words)
    return bool(_SECRET_WORDS.intersection(words)) or "apikey" in joined


def _token_kind(text: str) -> str | None:
    match = _TOKEN_RE.search(text)
    if match is None:
        return None
    prefix = re.match(r"[A-Za-z0-9]+[-_]?", match.group(0))
    return (prefix.group(0) if prefix else match.group(0)[:3]) + "…"


@dataclass
class _Builder:
    """Turns the node tree into plain data, recording the line of every key and list item.

    Everything wrong with the tree itself (duplicate keys, anchors, tags, literal secrets, keys
    that are not text) is collected as a problem; the data built alongside still goes through
    validation so that one run reports everything.
    """

    filename: str
    positions: dict[_Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[ProfileProblem] = field(default_factory=list)
    secret_paths: set[_Path] = field(default_factory=set)
    # Paths whose problem is already reported; validation errors under them would only repeat it
    # (or echo a secret).
    reported: set[_Path] = field(default_factory=set)

    def problem(
        self, path: _Path, mark: yaml.Mark | None, message: str, hint: str | None = None
    ) -> None:
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        self.problems.append(
            ProfileProblem(self.filename, line, column, _dotted(path), message, hint)
        )

    def build(self, node: yaml.Node, path: _Path) -> _Data:
        if len(path) > _MAX_DEPTH:
            raise _FatalError(
                [
                    ProfileProblem(
                        self.filename,
                        node.start_mark.line + 1,
                        None,
                        "",
                        f"nested more than {_MAX_DEPTH} levels deep",
                        "a profile is a few levels of key: value; check the indentation",
                    )
                ]
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self._tag_problem(node, path)
            items: list[_Data] = []
            for index, item in enumerate(node.value):
                start = item.start_mark
                self.positions[(*path, index)] = (start.line + 1, start.column + 1)
                items.append(self.build(item, (*path, index)))
            return items
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: _Path) -> dict[str, _Data]:
        if node.tag != _MAP_TAG:
            self._tag_problem(node, path)
        result: dict[str, _Data] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(
                    path,
                    mark,
                    "a key must be plain text, not a list or mapping",
                    "write `key: value`; a `? ` at the start of a line makes a complex key",
                )
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                self.problem(
                    path,
                    mark,
                    f"the key {_show(key)} is not text",
                    f"quote it: '{key_node.value}':",
                )
                continue
            here = (*path, key)
            if key in first_seen:
                self.problem(
                    here,
                    mark,
                    f"duplicate key (first at line {first_seen[key]}); YAML would keep only "
                    "the last one",
                    "keep one of them",
                )
            else:
                first_seen[key] = mark.line + 1
                self.positions[here] = (mark.line + 1, mark.column + 1)
            value = self.build(value_node, here)
            if (
                _secret_named(key)
                and isinstance(value, str | int)
                and not isinstance(value, bool)
                and str(value).strip()
                and here not in self.secret_paths
            ):
                self.secret_paths.add(here)
                self.problem(here, mark, "a literal secret in the profile", _KEY_SOURCE_HINT)
            result[key] = value
        return result

    def _tag_problem(self, node: yaml.Node, path: _Path) -> None:
        self.reported.add(path)
        tag = node.tag.replace("tag:yaml.org,2002:", "!!", 1)
        self.problem(
            path,
            node.start_mark,
            f"the YAML tag {tag} is not supported",
            "remove the tag (the !… before the value)",
        )

    def _scalar(self, node: yaml.Node, path: _Path) -> _Data:
        text: str = node.value
        kind = _token_kind(text)
        if kind is not None and path not in self.secret_paths:
            self.secret_paths.add(path)
            message = f"a literal secret in the profile ({kind} token)"
            self.problem(path, node.start_mark, message, _KEY_SOURCE_HINT)
        if node.tag == _STR_TAG:
            return text
        core = _CORE_SCALARS.get(node.tag)
        if core is None:
            self._tag_problem(node, path)
            return text
        pattern, convert = core
        if not pattern.match(text):
            short = node.tag[18:]
            message = f"'{_clip(text)}' is not a valid !!{short}"
            self.reported.add(path)
            self.problem(path, node.start_mark, message, f"remove the !!{short} tag")
            return None
        try:
            return convert(text)
        except ValueError:  # an int with more digits than Python converts
            self.reported.add(path)
            self.problem(path, node.start_mark, "a number too large to use", "check the digits")
            return None


def _to_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    return math.nan if lowered == ".nan" else float(text)


# YAML 1.2 core scalars: the pattern a plain or !!-tagged value must match, and its conversion.
_CORE_SCALARS: Final[dict[str, tuple[re.Pattern[str], typing.Callable[[str], _Data]]]] = {
    _NULL_TAG: (_NULL_RE, lambda _: None),
    _BOOL_TAG: (_BOOL_RE, lambda text: text.lower() == "true"),
    _INT_TAG: (_INT_RE, int),
    _FLOAT_TAG: (_FLOAT_RE, _to_float),
}


def _compose(text: str, filename: str) -> yaml.Node:
    """The single document's node tree, or a fatal error that says where YAML itself broke."""

    def fatal(line: int | None, message: str, hint: str | None = None) -> _FatalError:
        return _FatalError([ProfileProblem(filename, line, None, "", message, hint)])

    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader checks for control characters right here
        node = loader.get_single_node()
    except _AliasFoundError as exc:
        raise fatal(
            exc.line or None,
            "YAML aliases (*name) are not allowed in a profile",
            "write the values out in full; anchors and aliases can expand without bound",
        ) from None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise fatal(
            line,
            f"a control character (U+{exc.character:04X}) that YAML does not allow",
            "remove it; a profile is plain text",
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text, filename) from None
    except RecursionError:
        raise fatal(None, "nested too deep to read", "check the brackets and indentation") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise fatal(
            None,
            "empty file: no profile in it",
            f"start with apiVersion: {API_VERSION}, kind: Profile, metadata: and spec:; "
            "see profiles/ for complete examples",
        )
    if loader.anchor_lines:
        raise _FatalError(
            [
                ProfileProblem(
                    filename,
                    line or None,
                    None,
                    "",
                    "YAML anchors (&name) are not allowed in a profile",
                    "remove the anchor and write values out in full",
                )
                for line in loader.anchor_lines
            ]
        )
    return node


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, filename: str) -> _FatalError:
    problem = exc.problem or "YAML syntax error"
    # An unclosed quote or bracket fails at the end of the file; where it opened is more useful.
    mark = exc.problem_mark
    if mark is None or ("end of stream" in problem and exc.context_mark is not None):
        mark = exc.context_mark
    line = mark.line + 1 if mark is not None else None
    if "another document" in problem:
        return _FatalError(
            [
                ProfileProblem(
                    filename,
                    line,
                    None,
                    "",
                    "a second YAML document (---) in the file; a profile is exactly one",
                    "put each profile in its own file",
                )
            ]
        )
    if "'\\t'" in problem or "tab character" in problem:
        tab_lines = [
            number
            for number, content in enumerate(text.splitlines(), start=1)
            if "\t" in content[: len(content) - len(content.lstrip(" \t"))]
        ] or ([line] if line else [])
        return _FatalError(
            [
                ProfileProblem(
                    filename,
                    number,
                    None,
                    "",
                    "a tab used for indentation; YAML allows only spaces",
                    "indent with spaces (2 per level)",
                )
                for number in tab_lines
            ]
        )
    hints = {
        "mapping values are not allowed": "a value that contains ': ' must be quoted",
        "could not find expected ':'": "each line of a mapping is `key: value`; check the line",
        "did not find expected key": "check the indentation: keys of one mapping line up",
        "expected <block end>": "check the indentation: keys of one mapping line up",
        "found unexpected end of stream": "a quote or bracket is not closed",
    }
    hint = next((h for k, h in hints.items() if k in problem), "check quoting and indentation")
    context = f" ({exc.context})" if exc.context else ""
    return _FatalError(
        [ProfileProblem(filename, line, None, "", f"YAML syntax error: {problem}{context}", hint)]
    )


# ---------------------------------------------------------------------------------------------
# From pydantic's errors to located, actionable problems.
# ---------------------------------------------------------------------------------------------


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: object) -> str:
    """A value as the user wrote it, short, and never a token."""
    if isinstance(value, str):
        return "(a token, not shown)" if _TOKEN_RE.search(value) else f"'{_clip(value)}'"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int | float):
        return _num(value)
    if isinstance(value, list | tuple):
        return "a list"
    return "a mapping" if isinstance(value, dict) else type(value).__name__


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def _unwrap(annotation: object) -> object:
    """The type inside Annotated[...] and X | None."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_fields(model: type[BaseModel]) -> dict[str, tuple[str, FieldInfo]]:
    """Fields by the key written in YAML (the alias where there is one)."""
    return {(info.alias or name): (name, info) for name, info in model.model_fields.items()}


def _field_at(path: Sequence[str | int]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model owning the last field named in `path`, and that field (None where unknown)."""
    current: object = Profile
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            found = _model_fields(current).get(part) if isinstance(part, str) else None
            if found is None:
                return None, None
            owner, info = current, found[1]
            current = info.annotation
            continue
        origin = get_origin(current)
        if origin in (list, tuple) and isinstance(part, int):
            current = get_args(current)[0]
        elif origin is dict and isinstance(part, str):
            current = get_args(current)[1]
        else:
            return None, None
        owner, info = None, None
    return owner, info


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model whose keys are valid at `path` (a list item's model for `…lora_adapters[0]`)."""
    path = list(path)
    while path and isinstance(path[-1], int):
        path.pop()
    if not path:
        return Profile
    _, info = _field_at(path)
    if info is None:
        return None
    inner = _unwrap(info.annotation)
    if get_origin(inner) in (list, tuple):
        inner = _unwrap(get_args(inner)[0])
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


@cache
def _field_homes() -> dict[str, tuple[str, ...]]:
    """Every key the schema knows, with the sections it belongs in (for misplaced keys)."""
    homes: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for key, (_, info) in _model_fields(model).items():
            where = f"{prefix}.{key}" if prefix else key
            homes.setdefault(key, []).append(prefix or "the top level")
            inner = _unwrap(info.annotation)
            if get_origin(inner) in (list, tuple):
                inner = _unwrap(get_args(inner)[0])
                where += "[]"
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, where)

    walk(Profile, "")
    return {k: tuple(v) for k, v in homes.items()}


# Keys people write that are not in the schema on purpose, with what to write instead.
_KEY_ADVICE: Final[dict[tuple[str, str], str]] = {
    ("", "version"): f"write apiVersion: {API_VERSION}",
    ("spec.gateway", "port"): "the gateway's port is spec.ports.gateway",
    ("spec.engine", "port"): "vLLM's port is spec.ports.vllm",
    ("spec.embeddings", "port"): "TEI's port is spec.ports.tei",
    ("spec.engine", "host"): "engines always listen on 127.0.0.1; only spec.gateway.host is "
    "configurable",
    ("spec.embeddings", "host"): "engines always listen on 127.0.0.1; only spec.gateway.host is "
    "configurable",
    ("spec.ports", "host"): "engines always listen on 127.0.0.1; the gateway's address is "
    "spec.gateway.host",
    ("spec.embeddings", "model"): "the embedding model is repo, e.g. repo: BAAI/bge-m3",
    ("spec.embeddings", "model_id"): "the embedding model is repo, e.g. repo: BAAI/bge-m3",
    ("spec.model", "name"): "the checkpoint is repo; the name clients use is served_model_name",
    ("spec.model", "model"): "the checkpoint is repo, e.g. repo: Qwen/Qwen2.5-7B-Instruct-AWQ",
    ("spec.model", "model_id"): "the checkpoint is repo, e.g. repo: Qwen/Qwen2.5-7B-Instruct-AWQ",
    ("spec.model", "dtype"): "bf16 and fp16 are values of quantization",
    ("spec.gateway.fallback", "base_url"): "it belongs under remote:",
    ("spec.gateway.fallback", "model_map"): "it belongs under remote:",
}


def _unknown_key_hint(parent: Sequence[str | int], key: str) -> str:
    section = _dotted([p for p in parent if isinstance(p, str)])
    advice = _KEY_ADVICE.get((section, key))
    if advice:
        return advice
    model = _model_at(parent)
    allowed = list(_model_fields(model)) if model is not None else []
    normalised = key.replace("-", "_")
    if normalised != key and normalised in allowed:
        return f"write {normalised} (underscores, as vLLM's Python names)"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) or [
        name for name in allowed if min(len(name), len(key)) >= 3 and key.startswith(name)
    ]
    if close:
        return f"did you mean {close[0]}?"
    homes = [h for h in _field_homes().get(normalised, ()) if h != section]
    if homes:
        return f"{normalised} belongs in {' or '.join(homes[:3])}"
    if allowed:
        return f"keys here: {', '.join(allowed)}"
    return "remove it"


_LITERAL_ALIASES: Final[dict[str, str]] = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "awq_marlin": "awq",
    "awq-int4": "awq",
    "gptq_marlin": "gptq",
    "float8": "fp8",
    "fp8_e4m3fn": "fp8_e4m3",
    "e4m3": "fp8_e4m3",
    "e5m2": "fp8_e5m2",
    "false": "off",
    "true": "auto",
    "last_token": "last-token",
}


def _literal_choices(info: FieldInfo | None) -> tuple[object, ...]:
    if info is None:
        return ()
    inner = _unwrap(info.annotation)
    if get_origin(inner) is Literal:
        return get_args(inner)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):  # a vocabulary StrEnum
        return tuple(member.value for member in inner)
    return ()


def _bounds(info: FieldInfo | None, ctx: dict[str, object]) -> str:
    found: dict[str, object] = {}
    metadata: list[object] = list(info.metadata) if info is not None else []
    if info is not None:
        for arg in get_args(info.annotation):  # bounds inside `Annotated[...] | None`
            if get_origin(arg) is Annotated:
                metadata.extend(get_args(arg)[1:])
    for item in metadata:
        if isinstance(item, Gt):
            found["gt"] = item.gt
        elif isinstance(item, Ge):
            found["ge"] = item.ge
        elif isinstance(item, Lt):
            found["lt"] = item.lt
        elif isinstance(item, Le):
            found["le"] = item.le
    found = found or dict(ctx)
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = [
        f"{symbols[k]} {_num(v) if isinstance(v, int | float) else v}"
        for k, v in found.items()
        if k in symbols
    ]
    return "must be " + " and ".join(parts)


def _example(key: str, info: FieldInfo | None) -> str | None:
    if info is None or not info.examples:
        return None
    value = info.examples[0]
    if isinstance(value, list | dict):
        text = json.dumps(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return f"{key}: {text}"


def _with_example(key: str, info: FieldInfo | None) -> str | None:
    """The hint for a wrong value: an example of a right one, and what the field is for."""
    example = _example(key, info)
    description = info.description if info is not None else None
    if example and description:
        return f"write e.g. {example} — {description}"
    return f"write e.g. {example}" if example else description


@dataclass(frozen=True)
class _ErrorView:
    """One pydantic error, with what the handlers need to explain it."""

    kind: str
    key: str  # the YAML key the error is about ("" at the top)
    value: object
    ctx: dict[str, object]
    info: FieldInfo | None
    pydantic_message: str


def _explain_literal(e: _ErrorView) -> tuple[str, str | None]:
    names = [str(c) for c in _literal_choices(e.info)]
    shown = ", ".join(names) if names else str(e.ctx.get("expected", ""))
    guess = _LITERAL_ALIASES.get(str(e.value).lower()) if isinstance(e.value, str | bool) else None
    if guess is None and isinstance(e.value, str):
        close = difflib.get_close_matches(e.value.lower(), names, n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f"did you mean {e.key}: {guess}?" if guess in names else f"write one of: {shown}"
    return f"{_show(e.value)} is not one of {shown}", hint


def _explain_number(e: _ErrorView) -> tuple[str, str | None]:
    whole = e.kind.startswith("int")
    hint = _with_example(e.key, e.info)
    pattern = _INT_RE if whole else _FLOAT_RE
    if isinstance(e.value, str) and pattern.match(e.value.strip()):
        hint = f"remove the quotes: {e.key}: {e.value.strip()}"
    return f"{_show(e.value)} — expected {'a whole number' if whole else 'a number'}", hint


def _explain_string(e: _ErrorView) -> tuple[str, str | None]:
    hint = _with_example(e.key, e.info)
    if isinstance(e.value, bool | int | float):
        hint = f'quote it if you mean text: {e.key}: "{_show(e.value)}"'
    return f"{_show(e.value)} — expected text", hint


_EXPLAIN: Final[dict[str, typing.Callable[[_ErrorView], tuple[str, str | None]]]] = {
    "literal_error": _explain_literal,
    "enum": _explain_literal,
    "int_type": _explain_number,
    "int_parsing": _explain_number,
    "int_from_float": _explain_number,
    "float_type": _explain_number,
    "float_parsing": _explain_number,
    "string_type": _explain_string,
    "extra_forbidden": lambda e: ("unknown key", None),  # hint needs the path: see below
    "bool_type": lambda e: (
        f"{_show(e.value)} — expected true or false",
        f"write {e.key}: true or {e.key}: false (yes/no/on/off are text in a profile)",
    ),
    "finite_number": lambda e: (
        f"{_show(e.value)} — must be a finite number",
        _with_example(e.key, e.info),
    ),
    "model_type": lambda e: (
        f"{_show(e.value)} — expected a mapping of `key: value` lines",
        f"indent the keys of {e.key or 'the section'} under it",
    ),
    "list_type": lambda e: (
        f"{_show(e.value)} — expected a list (`- item` lines)",
        _with_example(e.key, e.info),
    ),
}
_EXPLAIN["bool_parsing"] = _EXPLAIN["bool_type"]
_EXPLAIN["model_attributes_type"] = _EXPLAIN["dict_type"] = _EXPLAIN["model_type"]
_EXPLAIN["tuple_type"] = _EXPLAIN["list_type"]
for _kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
    _EXPLAIN[_kind] = lambda e: (
        f"{_show(e.value)} — {_bounds(e.info, e.ctx)}",
        _with_example(e.key, e.info),
    )


def _message_for(error: ErrorDetails, path: _Path) -> Iterator[tuple[_Path, str, str | None]]:
    """(path, message, hint) for one pydantic error; a rules error expands to several."""
    ctx: dict[str, object] = dict(error.get("ctx") or {})
    if error["type"] == "profile_rules":
        for issue in typing.cast("tuple[_Issue, ...]", ctx["issues"]):
            yield (*path, *issue.path), issue.message, issue.hint or None
        return
    if error["type"] == "profile_rule":
        yield path, str(ctx["message"]), str(ctx.get("hint") or "") or None
        return
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    view = _ErrorView(error["type"], key, error.get("input"), ctx, _field_at(path)[1], error["msg"])
    if view.kind == "missing":
        parent = _dotted(path[:-1])
        example = _example(key, view.info) or f"{key}: …"
        yield (
            path,
            "required, but missing",
            f"add {example}" + (f" under {parent}" if parent else ""),
        )
        return
    explain = _EXPLAIN.get(view.kind)
    if explain is None:
        message = view.pydantic_message
        text = f"{_show(view.value)} — {message[:1].lower()}{message[1:]}"
        yield path, text, _with_example(key, view.info)
        return
    message, hint = explain(view)
    if view.kind == "extra_forbidden":
        hint = _unknown_key_hint(path[:-1], key)
    yield path, message, hint


def _clean_loc(loc: Sequence[str | int]) -> _Path:
    """Pydantic's location without its markers for union members and dict keys."""
    return tuple(p for p in loc if not (isinstance(p, str) and "[" in p))


def _position(positions: dict[_Path, tuple[int, int]], path: _Path) -> tuple[int, int] | None:
    """The line of `path`, or of its nearest ancestor that was written (missing fields)."""
    for end in range(len(path), -1, -1):
        found = positions.get(path[:end])
        if found is not None:
            return found
    return None


def _covered(path: _Path, suppressed: set[_Path]) -> bool:
    return any(path[: len(s)] == s for s in suppressed)


# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------


def parse_profile(text: str, filename: str) -> Profile:
    """Validate profile text; `filename` is only used in messages.

    Raises `ProfileError` with every problem found: YAML errors stop at the first (nothing after
    them can be trusted), everything else is collected.
    """
    if len(text) > MAX_PROFILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_PROFILE_BYTES
    ):
        raise ProfileError([_too_large(filename)])
    text = text.removeprefix("\ufeff")
    try:
        root = _compose(text, filename)
        builder = _Builder(filename)
        builder.positions[()] = (root.start_mark.line + 1, root.start_mark.column + 1)
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else f"{_show(root.value)}"
            raise _FatalError(
                [
                    ProfileProblem(
                        filename,
                        root.start_mark.line + 1,
                        None,
                        "",
                        f"a profile is a mapping (apiVersion:, kind:, metadata:, spec:), "
                        f"but this file holds {kind}",
                        "see profiles/ for complete examples",
                    )
                ]
            )
        data = builder.build(root, ())
    except _FatalError as exc:
        raise ProfileError(exc.problems) from None
    except RecursionError:
        raise ProfileError(
            [
                ProfileProblem(
                    filename, None, None, "", "nested too deep to read", "check the brackets"
                )
            ]
        ) from None

    problems = list(builder.problems)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            for path, message, hint in _message_for(error, _clean_loc(error["loc"])):
                if _covered(path, builder.secret_paths | builder.reported):
                    continue  # already reported as a secret; never echo it
                position = _position(builder.positions, path)
                problems.append(
                    ProfileProblem(
                        filename,
                        position[0] if position else None,
                        position[1] if position else None,
                        _dotted(path),
                        message,
                        hint,
                    )
                )
        raise ProfileError(problems) from None
    if problems:
        raise ProfileError(problems)
    return profile


def _too_large(filename: str) -> ProfileProblem:
    return ProfileProblem(
        filename,
        None,
        None,
        "",
        f"larger than {MAX_PROFILE_BYTES // 1024} KiB; a profile is a page of YAML",
        "check that this is the profile you meant",
    )


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file.

    The size is checked before reading, and at most one byte past the limit is ever read, so a
    huge or endless file (a FIFO, /dev/zero) is refused without loading it.
    """
    name = str(path)
    try:
        if path.is_dir():
            raise ProfileError(
                [
                    ProfileProblem(
                        name,
                        None,
                        None,
                        "",
                        "is a directory, not a profile file",
                        "give a file, e.g. profiles/rtx4090-chat.yaml",
                    )
                ]
            )
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ProfileError([_too_large(name)])
        with path.open("rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(
            [
                ProfileProblem(
                    name,
                    None,
                    None,
                    "",
                    "no such file",
                    "check the path; ready-made profiles are in profiles/",
                )
            ]
        ) from None
    except PermissionError:
        raise ProfileError(
            [
                ProfileProblem(
                    name,
                    None,
                    None,
                    "",
                    "cannot be read: permission denied",
                    "run as a user who can read it, or fix its permissions",
                )
            ]
        ) from None
    except OSError as exc:
        raise ProfileError(
            [
                ProfileProblem(
                    name,
                    None,
                    None,
                    "",
                    f"cannot be read: {exc.strerror or exc}",
                    "check the path and the disk",
                )
            ]
        ) from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError([_too_large(name)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ProfileError(
            [
                ProfileProblem(
                    name,
                    line,
                    column,
                    "",
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})",
                    "save the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
                )
            ]
        ) from None
    return parse_profile(text, name)


def dump_profile(profile: Profile, comment: str | None = None) -> str:
    """The profile as YAML: only what differs from the defaults, keys in schema order.

    `comment`, if given, is written first as `#` lines (e.g. why `recommend` chose these numbers).
    The output always parses back to an equal profile.
    """
    data = profile.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["apiVersion"] = profile.api_version  # always written, whatever the defaults
    data["kind"] = profile.kind
    ordered = {k: data[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in data}
    body = yaml.dump(
        ordered,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    if comment:
        header = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
        return header + body
    return body


def json_schema() -> dict[str, object]:
    """The JSON Schema of a profile file, generated from the models (for editors and docs)."""
    schema: dict[str, object] = Profile.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llm-appliance profile"
    return schema


def schema_text() -> str:
    """`json_schema()` as committed in profiles/profile.schema.json: pretty, sorted, newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m appliance.profile --write-schema [PATH]`: regenerate the committed schema."""
    import argparse

    default = Path(__file__).resolve().parent.parent / "profiles" / "profile.schema.json"
    parser = argparse.ArgumentParser(prog="python -m appliance.profile")
    parser.add_argument(
        "--write-schema",
        nargs="?",
        const=str(default),
        metavar="PATH",
        help=f"write the profile JSON Schema (default: {default})",
    )
    args = parser.parse_args(argv)
    if args.write_schema is None:
        parser.print_help()
        return 2
    Path(args.write_schema).write_text(schema_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
