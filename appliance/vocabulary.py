"""The domain's words, each defined once.

Every module that speaks of a quantisation, a KV-cache dtype, a fallback mode, a cost window, a
container's role or the appliance's default directories imports the word from here, so the
profile schema, the memory model, the catalog, the gateway and both faces cannot drift apart (they
did: Quantization was written out three times and KvCacheDtype twice with different members).

Pure: no IO, no third-party imports beyond the standard library.
"""

from __future__ import annotations

import enum
from pathlib import Path, PurePath
from typing import Final, Literal, TypeAlias, TypeVar, get_args

from appliance.errors import BadInputError

__all__ = [
    "COST_WINDOWS",
    "DEFAULT_MODELS_DIR",
    "DEFAULT_STATE_DIR",
    "DEVICES",
    "ENGINE_KINDS",
    "FALLBACK_MODES",
    "Device",
    "EngineKind",
    "EngineRole",
    "FallbackMode",
    "FindingSeverity",
    "KvCacheDtype",
    "ModelState",
    "Quantization",
    "Role",
    "SleepLevel",
    "WindowName",
    "kv_cache_dtype_bytes",
    "weights_path",
]

# The weight formats the catalog lists, the memory model sizes and a profile may name; vLLM's
# `--quantization` value is derived from it (appliance/runtime/specs.py), never typed by hand.
Quantization: TypeAlias = Literal["bf16", "fp16", "awq", "gptq", "fp8", "mxfp4", "nvfp4", "int8"]

# vLLM's `--kv-cache-dtype` values the appliance passes through (vllm/config/cache.py
# CacheDType); "auto" keeps the model's dtype, every fp8 variant stores one byte per element.
KvCacheDtype: TypeAlias = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]


def kv_cache_dtype_bytes(kv_cache_dtype: KvCacheDtype, model_dtype_bytes: int = 2) -> int:
    """Bytes per cached K or V element: the model's own width for "auto", one for fp8."""
    return model_dtype_bytes if kv_cache_dtype == "auto" else 1


# Where an engine runs: on GPUs, or on the host's CPU cores (vLLM's CPU build, TEI's cpu- image).
Device: TypeAlias = Literal["gpu", "cpu"]
DEVICES: Final = get_args(Device)

# Which server runs the chat model (`spec.engine.kind`): vLLM (the default) or SGLang (issue #21).
# Either one fills the chat engine's role ("vllm" below, the role's historical name): the same
# container slot, port, gateway route and monitor service, with the engine's own argv, image,
# health URL and metric names.
EngineKind: TypeAlias = Literal["vllm", "sglang"]
ENGINE_KINDS: Final = get_args(EngineKind)

# A container's job on the box; the engines are the roles that serve a model.
Role: TypeAlias = Literal["vllm", "tei", "gateway"]
EngineRole: TypeAlias = Literal["vllm", "tei"]

# vLLM's sleep levels (docs/features/sleep_mode.md): 1 moves the weights to host RAM and drops
# the KV cache; 2 drops both, so waking reloads the weights from disk. Several chat models on one
# box (`spec.switching`, issue #19) keep all but one asleep at this level.
SleepLevel: TypeAlias = Literal[1, 2]

# Where one of several chat models stands, as the gateway switches between them: serving,
# asleep (at level 1 or 2), being woken, or being put to sleep.
ModelState: TypeAlias = Literal["awake", "asleep-1", "asleep-2", "waking", "sleeping"]

# How sure a finding is that something will go wrong: errors stop a deployment, warnings explain
# a trade-off, info only informs.
FindingSeverity: TypeAlias = Literal["error", "warning", "info"]

# The cost report's windows, in the order a face cycles through them.
WindowName: TypeAlias = Literal["hour", "day", "7d"]
COST_WINDOWS: Final[tuple[WindowName, ...]] = get_args(WindowName)


class FallbackMode(enum.StrEnum):
    """The operator's switch: `off` (local only), `auto` (overflow), `always` (remote only)."""

    OFF = "off"
    AUTO = "auto"
    ALWAYS = "always"

    @classmethod
    def parse(cls, value: str) -> FallbackMode:
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = " | ".join(mode.value for mode in cls)
            raise BadInputError(
                f"unknown fallback mode {value!r}", hint=f"use one of: {choices}"
            ) from None


# In the order a face cycles through them.
FALLBACK_MODES: Final[tuple[FallbackMode, ...]] = tuple(FallbackMode)

_P = TypeVar("_P", bound=PurePath)


# The models directory's layout: `<org>/<name>/<revision>` (the revision a link to `<sha>/`).
def weights_path(models_dir: _P, repo: str, revision: str) -> _P:
    """Where the weights of `repo` at `revision` live under `models_dir`: `<org>/<name>/<revision>`.

    The one layout shared by the weights store (`appliance.weights`) and the runtime's mounts.
    A revision with a slash (`refs/pr/1`) becomes one path component (`refs--pr--1`); repo ids
    never contain `--`.
    """
    org, _, name = repo.partition("/")
    return models_dir / org / name / revision.replace("/", "--")


# The profile schema's defaults; every face and operation takes these unless told otherwise.
DEFAULT_MODELS_DIR: Final = Path("/var/lib/llm-appliance/models")
DEFAULT_STATE_DIR: Final = Path("/var/lib/llm-appliance/state")
