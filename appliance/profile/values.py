"""The profile's value types: strict numbers and booleans, names, paths, URLs, images, ports,
GPU references, and the engine flags a profile may pass through.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Final, Literal, TypeAlias
from urllib.parse import urlsplit

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
)
from pydantic_core import PydanticCustomError

from appliance.profile.problems import _clip, _Issue, _raise_issues, _rule, _show

API_VERSION: Final = "llm-appliance/v1"
KIND: Final = "Profile"
MAX_PROFILE_BYTES: Final = 1024 * 1024  # a profile is a page of YAML; anything larger is a mistake
_MAX_DEPTH: Final = 64  # real profiles nest 5 deep; deeper input is hostile or broken

Pooling: TypeAlias = Literal["cls", "mean", "splade", "last-token"]
# vLLM accepts only these ranks (vllm/config/lora.py, MaxLoRARanks).
LoraRank: TypeAlias = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


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
