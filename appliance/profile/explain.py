"""From pydantic's errors to located, actionable problems: the field, the line, what is wrong
and what to write instead.
"""

from __future__ import annotations

import difflib
import enum
import json
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Final, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from appliance.profile.problems import _dotted, _Issue, _num, _show
from appliance.profile.schema import Profile
from appliance.profile.values import API_VERSION
from appliance.profile.yaml_text import _FLOAT_RE, _INT_RE, _Path

# ---------------------------------------------------------------------------------------------
# From pydantic's errors to located, actionable problems.
# ---------------------------------------------------------------------------------------------


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
