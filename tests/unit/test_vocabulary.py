"""Each word of the domain is defined once, in appliance/vocabulary.py (issue #15).

The scan reads the source, so a second `Quantization = Literal[...]` or a private copy of the
fallback modes' members anywhere in the package fails here before it can drift.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

import appliance
from appliance import vocabulary
from appliance.vocabulary import (
    COST_WINDOWS,
    FALLBACK_MODES,
    FallbackMode,
    KvCacheDtype,
    kv_cache_dtype_bytes,
)

PACKAGE = Path(appliance.__file__).parent
WORDS = {name for name in vocabulary.__all__ if name[0].isupper()}


def _definitions() -> list[tuple[str, str, ast.AST]]:
    """(module, name, value) of every module-level assignment or class in the package."""
    found: list[tuple[str, str, ast.AST]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = str(path.relative_to(PACKAGE.parent))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                found.append((module, node.name, node))
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found.append((module, target.id, node.value))
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.value is not None
            ):
                found.append((module, node.target.id, node.value))
    return found


def _literal_members(value: ast.AST) -> frozenset[str] | None:
    """The members of a `Literal["a", "b"]` or a tuple of strings, else None."""
    if isinstance(value, ast.Subscript) and getattr(value.value, "id", None) == "Literal":
        elements = value.slice.elts if isinstance(value.slice, ast.Tuple) else [value.slice]
    elif isinstance(value, ast.Tuple):
        elements = value.elts
    else:
        return None
    if not elements or not all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements
    ):
        return None
    return frozenset(e.value for e in elements if isinstance(e, ast.Constant))


def test_each_word_is_defined_only_in_the_vocabulary() -> None:
    elsewhere = [
        f"{module}: {name}"
        for module, name, _ in _definitions()
        if name in WORDS and module != "appliance/vocabulary.py"
    ]
    assert elsewhere == []


@pytest.mark.parametrize(
    "word", ["Quantization", "KvCacheDtype", "WindowName", "Role", "FindingSeverity"]
)
def test_no_module_spells_out_a_words_members_again(word: str) -> None:
    members = frozenset(get_args(getattr(vocabulary, word)))
    copies = [
        f"{module}: {name}"
        for module, name, value in _definitions()
        if module != "appliance/vocabulary.py" and _literal_members(value) == members
    ]
    assert copies == []


def test_fallback_modes_and_windows_cycle_in_the_order_a_face_shows_them() -> None:
    assert [mode.value for mode in FALLBACK_MODES] == ["off", "auto", "always"]
    assert COST_WINDOWS == ("hour", "day", "7d")
    assert FallbackMode.parse(" AUTO ") is FallbackMode.AUTO


@pytest.mark.parametrize("dtype", get_args(KvCacheDtype))
def test_every_fp8_kv_cache_dtype_stores_one_byte(dtype: KvCacheDtype) -> None:
    # The memory model once knew only "fp8": a profile's fp8_e4m3 was sized as bf16.
    assert kv_cache_dtype_bytes(dtype) == (2 if dtype == "auto" else 1)


def test_the_memory_model_sizes_every_fp8_kv_cache_dtype_a_profile_may_name() -> None:
    # A profile's `kv_cache_dtype: fp8_e4m3` was sized as bf16 (the memory model knew only "fp8").
    from appliance.catalog import load_catalog
    from appliance.sizing import kv_bytes_per_token

    found = load_catalog().model_by_repo("meta-llama/Llama-3.1-8B-Instruct")
    assert found is not None
    architecture = found[0].architecture
    fp8 = kv_bytes_per_token(architecture, 1, "fp8")
    assert kv_bytes_per_token(architecture, 1, "fp8_e4m3") == fp8
    assert kv_bytes_per_token(architecture, 1, "fp8_e5m2") == fp8
    assert kv_bytes_per_token(architecture, 1, "auto") == 2 * fp8
