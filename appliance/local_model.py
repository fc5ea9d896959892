"""What `appliance estimate MODEL` sizes: a catalog model, a repo the catalog knows, or a local
directory of weights.

A local directory is read the way vLLM reads it: `config.json` gives the architecture (the
`text_config` of a multimodal checkpoint), and the weight bytes come from
`model.safetensors.index.json`'s `metadata.total_size`, or else from the headers of the
`*.safetensors` files (8-byte little-endian header length, then a JSON header whose tensors carry
`data_offsets`; the payload is the sum of their spans). Only headers are read, never the
tensors, so a 140 GB checkpoint is sized in milliseconds.

This is the IO half of sizing; `appliance.sizing` stays pure and takes what this returns.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from appliance.catalog import ChatModel, ModelArchitecture, ModelVariant, load_catalog
from appliance.config_defaults import TEXT_MODEL_TYPE, with_defaults
from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.sizing import ResolvedModel
from appliance.vocabulary import Quantization, SleepLevel

if TYPE_CHECKING:
    from appliance.profile import Profile

# owner/name[@revision], as the Hub spells repo ids (`weights.parse_repo_ref` checks it fully).
_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@\S+)?")
# safetensors dtype → what vLLM runs an unquantised checkpoint as (its `--dtype auto`).
_DTYPE_FORMAT: dict[str, Quantization] = {"BF16": "bf16", "F16": "fp16", "F8_E4M3": "fp8"}
# A safetensors header is JSON describing the tensors; real ones are well under 10 MB.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_CONFIG_FIELDS_HINT = (
    "config.json needs num_hidden_layers, num_attention_heads, hidden_size, intermediate_size, "
    "vocab_size (and num_key_value_heads, head_dim, max_position_embeddings where they differ "
    "from the defaults)"
)


def resolve_model(name: str, quantization: Quantization | None = None) -> ResolvedModel:
    """A catalog id (`llama-3.1-8b-instruct`, with `quantization` picking the variant, BF16 by
    default), a Hugging Face repo id the catalog knows, a local directory, or any other Hub repo
    (`ORG/NAME[@REVISION]`, read from its config.json and safetensors headers).

    Raises BadInputError naming what was tried when `name` is none of these.
    """
    catalog = load_catalog()
    path = Path(name).expanduser()
    if path.is_dir():
        return read_local_model(path, quantization)
    model = catalog.model(name)
    if model is not None:
        wanted = quantization or (
            "bf16" if model.variant("bf16") else model.variants[0].quantization
        )
        variant = model.variant(wanted)
        if variant is None:
            have = ", ".join(v.quantization for v in model.variants)
            raise BadInputError(
                f"{model.key} has no {wanted} variant in the catalog",
                hint=f"use --quantization with one of: {have}",
            )
        return ResolvedModel.of_variant(model, variant)
    found = catalog.model_by_repo(name)
    if found is not None:
        model, variant = found
        if quantization is not None and quantization != variant.quantization:
            raise BadInputError(
                f"{variant.repo} is the {variant.quantization} checkpoint, not {quantization}",
                hint=f"drop --quantization, or name the model: {model.key} --quantization "
                f"{quantization}",
            )
        return ResolvedModel.of_variant(model, variant, "catalog-repo")
    if _HUB_REPO.fullmatch(name):
        return read_hub_model(name, quantization)
    keys = ", ".join(m.key for m in catalog.models)
    raise BadInputError(
        f"{name!r} is not a catalog model, a Hub repo (ORG/NAME), or a local directory",
        hint=f"catalog models: {keys}; or pass a directory holding config.json and *.safetensors",
    )


def resolve_profile_model(profile: Profile) -> ResolvedModel | None:
    """The model a profile serves, ready to size: the catalog's entry for its repo, or (on the
    CPU target) the weights already in the models directory (config.json and safetensors
    headers); None when neither is at hand, so the fit check skips what it cannot size."""
    from appliance.vocabulary import weights_path

    spec = profile.spec
    try:
        if load_catalog().model_by_repo(spec.model.repo) is not None:
            return resolve_model(spec.model.repo, spec.model.quantization)
        if spec.engine.device == "cpu":
            local = weights_path(spec.storage.models_dir, spec.model.repo, spec.model.revision)
            if (local / "config.json").is_file():
                return read_local_model(local, spec.model.quantization)
    except BadInputError:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Hub repos the catalog does not know


def hub_cache_dir() -> Path:
    """Where Hub readings (config.json, safetensors headers) are kept, keyed by commit."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-appliance"


def quantization_from_dtypes(parameters: dict[str, int]) -> Quantization | None:
    """The format of a checkpoint without `quantization_config`, from its tensors' dtypes: the
    floating-point dtype holding most parameters (norms kept in F32 do not decide it)."""
    floats = {d: n for d, n in parameters.items() if d in _DTYPE_FORMAT}
    return _DTYPE_FORMAT[max(floats, key=lambda d: floats[d])] if floats else None


def _parameter_counts(parameters: dict[str, int]) -> str:
    """`7.61 B BF16 + 0.03 M F32` parameters, most first."""

    def count(n: int) -> str:
        if n >= 10**8:
            return f"{n / 1e9:.2f} B"
        return f"{n / 1e6:.2f} M" if n >= 10**5 else f"{n:,}"

    ordered = sorted(parameters.items(), key=lambda item: -item[1])
    return " + ".join(f"{count(n)} {dtype}" for dtype, n in ordered) + " parameters"


def read_hub_model(name: str, quantization: Quantization | None = None) -> ResolvedModel:
    """Architecture and exact weight bytes of any Hub repo, from config.json and the safetensors
    headers (Range reads; no tensor is downloaded), cached by commit under `hub_cache_dir()`."""
    from appliance import weights  # the Hub adapter; imported here so sizing stays offline

    repo, revision = weights.parse_repo_ref(name)
    try:
        metadata = weights.hub_model_metadata(
            repo, revision or "main", cache_dir=hub_cache_dir(), token=weights.resolve_token()
        )
    except EnvironmentNotReadyError as error:
        raise EnvironmentNotReadyError(
            f"{repo} is not in the catalog and was never read here; {error.message}",
            hint="run it where the Hub is reachable once (the reading is cached), or point "
            "estimate at a local copy: a directory holding config.json and *.safetensors",
        ) from None
    source = f"{repo} config.json"
    architecture = architecture_from_config(metadata.config, source=source)
    detected = (
        quantization_from_config(metadata.config)
        if isinstance(metadata.config.get("quantization_config"), dict)
        else quantization_from_dtypes(metadata.parameters)
    )
    if quantization is not None and detected is not None and quantization != detected:
        raise BadInputError(
            f"{repo} is a {detected} checkpoint, not {quantization}",
            hint="drop --quantization; to size another format, name that format's repo",
        )
    total = sum(metadata.parameters.values())
    unpacked = detected in ("bf16", "fp16", "fp8")  # packed int4 tensors undercount
    return ResolvedModel(
        architecture=architecture,
        weight_bytes=metadata.weight_bytes,
        label=f"{repo}@{metadata.sha[:12]} ({detected or 'unknown format'}; "
        f"{_parameter_counts(metadata.parameters)})",
        quantization=quantization or detected,
        source="hub",
        params_billion=round(total / 1e9, 3) if unpacked and total else None,
        parameters_by_dtype=dict(metadata.parameters),
        repo=repo,
        sha=metadata.sha,
        linear_parameters=metadata.linear_parameters,
    )


@dataclass(frozen=True)
class HubCandidates:
    """`recommend --model ORG/NAME`: the repo as a one-model catalog, and for a BF16/FP16 base
    repo the quantised checkpoints it does not ship, sized so the admin knows what to look for."""

    model: ChatModel
    would_need: tuple[ChatModel, ...]  # each with one unpublished variant (repo says so)


# Bytes per quantised linear parameter, with scales: FP8 W8A8 with one F32 scale per output
# channel rounds to 1; INT4 with group size 128 stores 4 bits plus an F16 scale and a packed
# 4-bit zero point per group of 128 (AWQ's layout): 0.5 + (2 + 0.5) / 128.
_QUANTISED_BYTES_PER_PARAMETER: dict[Quantization, float] = {"fp8": 1.0, "awq": 0.5 + 2.5 / 128}


def hub_candidates(name: str) -> HubCandidates:
    """The Hub repo `name` ready to rank (BadInputError when its format is not one vLLM's
    ranks here know), and what its quantised variants would need."""
    resolved = read_hub_model(name)
    repo, sha = resolved.repo or name, resolved.sha or ""
    quantization = resolved.quantization
    if quantization is None:
        raise BadInputError(
            f"{resolved.repo} is in a format the recommender does not model ({resolved.label})",
            hint="`appliance estimate` still sizes it; recommend ranks bf16, fp16, fp8, awq, "
            "gptq and mxfp4 checkpoints",
        )
    total = sum((resolved.parameters_by_dtype or {}).values())
    params = resolved.params_billion or _packed_params_billion(resolved)
    source = f"{resolved.repo}@{resolved.sha} safetensors headers"
    own = ModelVariant(
        quantization=quantization,
        repo=resolved.repo,
        weight_bytes=resolved.weight_bytes,
        weight_bytes_from="copied",
        source=source,
    )

    def model(variants: tuple[ModelVariant, ...]) -> ChatModel:
        return ChatModel(
            key=repo.rsplit("/", 1)[-1].lower(),
            name=repo,
            family=resolved.architecture.model_type,
            params_billion=params,
            architecture=resolved.architecture,
            architecture_source=f"{repo}@{sha} config.json",
            variants=variants,
            license="see the repo's model card",
            gated=False,  # it was readable with the token at hand
            quality_tier="good",  # no evidence: one model, ranked only against its own options
        )

    would_need: list[ChatModel] = []
    if quantization in ("bf16", "fp16") and resolved.linear_parameters and total:
        kept = resolved.weight_bytes - resolved.linear_parameters * 2
        for target, per_parameter in _QUANTISED_BYTES_PER_PARAMETER.items():
            size = kept + round(resolved.linear_parameters * per_parameter)
            variant = ModelVariant(
                quantization=target,
                repo=f"{resolved.repo} quantised to {target} (not published here)",
                weight_bytes=size,
                weight_bytes_from="estimated",
                source=f"{source}: {resolved.linear_parameters:,} linear parameters at "
                f"{per_parameter:g} bytes, the rest as shipped",
                bits=8 if target == "fp8" else 4,
                group_size=None if target == "fp8" else 128,
            )
            would_need.append(model((variant,)))
    return HubCandidates(model((own,)), tuple(would_need))


def _packed_params_billion(resolved: ResolvedModel) -> float:
    """A quantised checkpoint packs several values per stored element; its size in parameters
    follows from the architecture the way the catalog counts it: roughly 2 bytes per parameter
    at BF16, so weight bytes scaled by the format's bits."""
    bits = {"fp8": 8, "awq": 4, "gptq": 4, "mxfp4": 4}.get(resolved.quantization or "", 16)
    return round(resolved.weight_bytes * 8 / bits / 1e9, 3)


# ---------------------------------------------------------------------------------------------
# Local directories


def read_local_model(directory: Path, quantization: Quantization | None = None) -> ResolvedModel:
    """Architecture and weight bytes of a checkpoint directory (BadInputError when unreadable)."""
    config = _read_json(directory / "config.json")
    architecture = architecture_from_config(config, source=str(directory / "config.json"))
    weight_bytes = local_weight_bytes(directory)
    detected = quantization_from_config(config)
    if quantization is not None and detected is not None and quantization != detected:
        raise BadInputError(
            f"{directory} holds a {detected} checkpoint (config.json quantization_config), "
            f"not {quantization}",
            hint="drop --quantization for a local directory",
        )
    return ResolvedModel(
        architecture=architecture,
        weight_bytes=weight_bytes,
        label=str(directory),
        quantization=quantization or detected,
        source="local",
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInputError(
            f"{path} does not exist",
            hint="a model directory holds config.json next to its *.safetensors files",
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInputError(f"{path} is not a JSON object")
    return data


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's numbers, with what config.json omits filled as transformers fills it.

    Multimodal checkpoints (Llama 4, Gemma 3, Mistral 3) nest them in `text_config`."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and ("num_hidden_layers" in inner or "model_type" in inner):
        merged = {k: v for k, v in config.items() if k != "text_config"}
        merged.update(inner)
        merged.setdefault("architectures", config.get("architectures"))
        if "model_type" not in inner:
            outer = str(config.get("model_type"))
            merged["model_type"] = TEXT_MODEL_TYPE.get(outer, outer)
        return with_defaults(merged)
    return with_defaults(config)


def _int(config: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _sliding_layers(
    config: dict[str, Any], layers: int
) -> tuple[int | None, tuple[int, ...] | None]:
    """(window, sliding layer indices) as transformers decides them; (None, None) for none."""
    window = _int(config, "sliding_window")
    if window is None or config.get("use_sliding_window") is False:
        return None, None  # Qwen2/2.5/3 carry a window but switch it off
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == layers:
        sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
        return (window, sliding) if sliding else (None, None)
    if config.get("model_type") == "gemma2":
        return window, tuple(range(0, layers, 2))  # even layers slide (Gemma2Config)
    pattern = _int(config, "sliding_window_pattern")
    if pattern:  # Gemma 3: every pattern-th layer is global
        return window, tuple(i for i in range(layers) if (i + 1) % pattern)
    return window, None  # Mistral v0.1 style: every layer slides


def _mla_qk_head_dim(config: dict[str, Any]) -> int | None:
    """DeepSeek MLA configs give the query/key width in two parts and no head_dim."""
    nope, rope = _int(config, "qk_nope_head_dim"), _int(config, "qk_rope_head_dim")
    return nope + rope if nope is not None and rope is not None else None


def _rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    """config.json's `rope_scaling` (or Transformers v5's `rope_parameters`), with the legacy
    `type` key read as `rope_type`, as vLLM's patch_rope_parameters does."""
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_type" not in rope and "type" not in rope:
        # v5 per layer type ({"full_attention": {...}, "sliding_attention": {...}}): vLLM
        # assumes one scaling factor for all; the scaled one is the one that counts.
        per_type = [p for p in rope.values() if isinstance(p, dict)]
        rope = next((p for p in per_type if p.get("factor")), per_type[0] if per_type else None)
    if not isinstance(rope, dict):
        return None
    rope_type = rope.get("rope_type") or rope.get("type")
    if not isinstance(rope_type, str) or rope_type == "default":
        return None
    factor = rope.get("factor")
    original = _int(rope, "original_max_position_embeddings")
    return {
        "rope_type": rope_type,
        "factor": float(factor) if isinstance(factor, int | float) else None,
        "original_max_position_embeddings": original,
    }


def architecture_from_config(
    config: dict[str, Any], source: str = "config.json"
) -> ModelArchitecture:
    """A `ModelArchitecture` from a Hugging Face `config.json` (BadInputError when it lacks the
    numbers that decide memory)."""
    text = _text_config(config)
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(text, "num_attention_heads", "n_head")
    hidden = _int(text, "hidden_size", "n_embd", "d_model")
    if layers is None or heads is None or hidden is None:
        raise BadInputError(f"{source} lacks the model's shape", hint=_CONFIG_FIELDS_HINT)
    architectures = text.get("architectures") or ["unknown"]
    window, sliding = _sliding_layers(text, layers)
    experts = _int(text, "num_local_experts", "num_experts", "n_routed_experts")
    per_token = _int(text, "num_experts_per_tok", "num_experts_per_token")
    shared = _int(text, "n_shared_experts", "num_shared_experts")
    if shared is None and _int(text, "shared_expert_intermediate_size"):
        shared = 1
    moe_layers: tuple[int, ...] | None = None
    first_dense = _int(text, "first_k_dense_replace")
    if experts is not None and first_dense:  # DeepSeek: the first k layers keep a dense MLP
        moe_layers = tuple(range(first_dense, layers))
    chunk = _int(text, "attention_chunk_size")
    global_layers: tuple[int, ...] | None = None
    no_rope = text.get("no_rope_layers")
    if chunk is not None and isinstance(no_rope, list) and len(no_rope) == layers:
        global_layers = tuple(i for i, use_rope in enumerate(no_rope) if not use_rope)
    numbers: dict[str, Any] = {
        "hf_architecture": str(architectures[0]),
        "model_type": str(text.get("model_type", "unknown")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": _int(text, "num_key_value_heads", "num_kv_heads") or heads,
        "head_dim": _int(text, "head_dim") or _mla_qk_head_dim(text) or hidden // heads,
        "hidden_size": hidden,
        "intermediate_size": _int(text, "intermediate_size", "intermediate_size_mlp", "ffn_dim")
        or 4 * hidden,
        "vocab_size": _int(text, "vocab_size"),
        "max_position_embeddings": _int(text, "max_position_embeddings", "n_positions") or 2048,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "rope_scaling": _rope_scaling(text),
        "sliding_window": window,
        "sliding_window_layers": sliding,
        "attention_chunk_size": chunk,
        "global_attention_layers": global_layers,
        "num_experts": experts if per_token is not None else None,
        "num_experts_per_token": per_token if experts is not None else None,
        "moe_intermediate_size": _int(text, "moe_intermediate_size"),
        "num_shared_experts": shared,
        "moe_layers": moe_layers,
        # MLA (DeepSeek-V2/V3, Kimi K2): the cache holds the latent, not per-head K and V.
        "kv_lora_rank": _int(text, "kv_lora_rank"),
        "qk_rope_head_dim": _int(text, "qk_rope_head_dim") if _int(text, "kv_lora_rank") else None,
    }
    try:
        return ModelArchitecture.model_validate(numbers)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadInputError(f"{source}: {where}: {first['msg']}", hint=_CONFIG_FIELDS_HINT) from exc


# compressed-tensors weight schemes by (num_bits, type): FP8, W8A8-INT8 (or W8A16), NVFP4 (FP4
# values with FP8 scales per 16), and INT4 W4A16, which runs on the same Marlin kernels as GPTQ.
_COMPRESSED_TENSORS_FORMATS: dict[tuple[object, object], Quantization] = {
    (8, "float"): "fp8",
    (8, "int"): "int8",
    (4, "float"): "nvfp4",
    (4, "int"): "gptq",
}


def _compressed_tensors_format(quant: dict[str, Any]) -> Quantization | None:
    for group in (quant.get("config_groups") or {}).values():
        weights = group.get("weights", {}) if isinstance(group, dict) else {}
        found = _COMPRESSED_TENSORS_FORMATS.get((weights.get("num_bits"), weights.get("type")))
        if found is not None:
            return found
    return None


def quantization_from_config(config: dict[str, Any]) -> Quantization | None:
    """The checkpoint format vLLM will load, from `quantization_config` and `torch_dtype`."""
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "")).lower()
        if method in ("awq", "gptq", "fp8", "mxfp4"):
            return method  # type: ignore[return-value]
        if method == "modelopt" and "FP4" in str(quant.get("quant_algo", "")).upper():
            return "nvfp4"
        if method == "compressed-tensors":
            return _compressed_tensors_format(quant)
        return None
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return "fp16" if dtype in ("float16", "half") else "bf16"


def local_weight_bytes(directory: Path) -> int:
    """The safetensors payload: the index's `total_size`, else the sum of the files' tensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        metadata = _read_json(index).get("metadata")
        total = metadata.get("total_size") if isinstance(metadata, dict) else None
        if isinstance(total, int | float) and total > 0:
            return int(total)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise BadInputError(
            f"{directory} has no *.safetensors files and no model.safetensors.index.json",
            hint="vLLM loads safetensors checkpoints; convert .bin weights first",
        )
    return sum(safetensors_payload_bytes(path) for path in files)


def safetensors_payload_bytes(path: Path) -> int:
    """Tensor bytes in one safetensors file, from its header alone."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise BadInputError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES:
                raise BadInputError(f"{path} is not a safetensors file (header of {length} bytes)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path} is not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise BadInputError(f"{path} is not a safetensors file (header is not an object)")
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise BadInputError(f"{path}: tensor {name!r} has no data_offsets")
        total += int(offsets[1]) - int(offsets[0])
    return total


def profile_sleep_level(profile: Profile, host_memory_bytes: int | None) -> tuple[SleepLevel, str]:
    """`sleep_level_for` a profile's chat models, resolved from the catalog (apply's turns and
    the gateway use the level `plan` shows)."""
    from appliance.fit import sleep_level_for

    switching = profile.spec.switching
    if switching is None:
        return 1, ""
    if switching.sleep_level != "auto":
        return switching.sleep_level, ""
    views = [profile, *(profile.as_switched(m) for m in switching.models)]
    weights = []
    for view in views:
        model = resolve_profile_model(view)
        weights.append(model.weight_bytes if model is not None else None)
    return sleep_level_for("auto", weights, host_memory_bytes)
