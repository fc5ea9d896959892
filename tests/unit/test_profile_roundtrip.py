"""dump_profile ↔ parse_profile, and the committed JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.profile import (
    API_VERSION,
    Profile,
    dump_profile,
    json_schema,
    load_profile,
    parse_profile,
    schema_text,
)
from appliance.profile.__main__ import _main

ROOT = Path(__file__).resolve().parent.parent.parent
SCHEMA = ROOT / "profiles" / "profile.schema.json"
READY_MADE = sorted((ROOT / "profiles").glob("*.yaml"))
REGENERATE = ".venv/bin/python -m appliance.profile --write-schema"


def test_committed_schema_is_current() -> None:
    committed = SCHEMA.read_text(encoding="utf-8") if SCHEMA.exists() else ""
    assert committed == schema_text(), (
        f"profiles/profile.schema.json is stale: regenerate it with `{REGENERATE}`"
    )


def test_write_schema_command_writes_the_same_text(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert _main(["--write-schema", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == schema_text()


def test_schema_shape() -> None:
    schema = json_schema()
    assert schema["required"] == ["apiVersion", "kind", "metadata", "spec"]
    assert schema["additionalProperties"] is False
    defs: Any = schema["$defs"]
    assert set(defs["Spec"]["properties"]) == {
        "model",
        "engine",
        "gpus",
        "embeddings",
        "switching",
        "images",
        "ports",
        "gateway",
        "monitoring",
        "storage",
        "cost",
    }
    # Editors get the vLLM bound, not only the type.
    utilisation = defs["EngineSpec"]["properties"]["gpu_memory_utilization"]
    assert utilisation["exclusiveMinimum"] == 0
    assert utilisation["maximum"] == 0.98
    assert all(d.get("additionalProperties") is False for d in defs.values() if "properties" in d)
    assert json.loads(schema_text()) == schema


def test_ready_made_profiles_round_trip_and_dump_short() -> None:
    for path in READY_MADE:
        profile = load_profile(path)
        text = dump_profile(profile)
        assert parse_profile(text, f"dump of {path.name}") == profile
        assert "enable_prefix_caching: true" not in text  # the default is left out
        assert text.startswith(f"apiVersion: {API_VERSION}\nkind: Profile\nmetadata:\n")


def test_dump_of_minimal_profile_is_minimal() -> None:
    text = (
        f"apiVersion: {API_VERSION}\nkind: Profile\nmetadata:\n  name: m\nspec:\n"
        "  model:\n    repo: Qwen/Qwen2.5-7B-Instruct-AWQ\n    quantization: awq\n"
    )
    assert dump_profile(parse_profile(text, "m.yaml")) == text


def test_dump_quotes_words_other_yaml_tools_read_as_booleans() -> None:
    text = (
        f"apiVersion: {API_VERSION}\nkind: Profile\nmetadata:\n  name: m\n  description: 'off'\n"
        "spec:\n  model:\n    repo: Qwen/Qwen2.5-7B-Instruct-AWQ\n    quantization: awq\n"
        "    revision: 'no'\n"
    )
    dumped = dump_profile(parse_profile(text, "m.yaml"), comment="why\nthese numbers")
    assert dumped.startswith("# why\n# these numbers\napiVersion:")
    assert "description: 'off'" in dumped
    assert "revision: 'no'" in dumped


# --- property: any valid profile survives dump → parse unchanged ---------------------------------

_SLUG = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True)
_PART = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?", fullmatch=True)
_REPO = st.builds(lambda a, b: f"{a}/{b}", _PART, _PART).filter(
    lambda r: (
        "--" not in r and ".." not in r and not any(t in r.lower() for t in ("awq", "gptq", "fp8"))
    )
)
_REVISION = st.one_of(
    st.just("main"),
    st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
    st.sampled_from(["v1.0", "refs/pr/3", "no", "1e5", "2024-01-01", "null", "off"]),
)
_SERVED = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,15}", fullmatch=True)
_UTIL = st.floats(min_value=0.01, max_value=0.98, allow_nan=False)


@st.composite
def _profiles(draw: st.DrawFn) -> dict[str, Any]:
    served = draw(_SERVED)
    model: dict[str, Any] = {
        "repo": draw(_REPO),
        "revision": draw(_REVISION),
        "quantization": draw(st.sampled_from(["bf16", "fp16", "awq", "gptq", "fp8"])),
        "served_model_name": served,
    }
    engine: dict[str, Any] = {
        "gpu_memory_utilization": draw(_UTIL),
        "enable_prefix_caching": draw(st.booleans()),
        "kv_cache_dtype": draw(st.sampled_from(["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])),
        "enforce_eager": draw(st.booleans()),
        "extra_args": draw(
            st.lists(st.sampled_from(["--enable-chunked-prefill", "--swap-space=4", "8"]))
        ),
    }
    if draw(st.booleans()):
        engine["max_model_len"] = draw(st.integers(256, 131072))
    if draw(st.booleans()):
        seqs = draw(st.integers(1, 512))
        engine["max_num_seqs"] = seqs
        engine["max_num_batched_tokens"] = draw(st.integers(seqs, 65536))
    if draw(st.booleans()):
        model["lora_adapters"] = [{"name": f"{served}-lora", "repo": draw(_REPO)}]
        engine["max_lora_rank"] = draw(st.sampled_from([8, 16, 64]))
    gpus: Any = "all"
    if draw(st.booleans()):
        count = draw(st.integers(1, 8))
        gpus = list(range(count))
        engine["tensor_parallel_size"] = draw(
            st.sampled_from([t for t in (1, 2, 4, 8) if t <= count])
        )
    ports = draw(st.lists(st.integers(1, 65535), min_size=3, max_size=3, unique=True))
    spec: dict[str, Any] = {
        "model": model,
        "engine": engine,
        "gpus": gpus,
        "ports": dict(zip(("vllm", "tei", "gateway"), ports, strict=True)),
        "monitoring": {
            "alerts": {
                "gpu_memory_used_pct": 99.5,
                "ttft_p95_seconds": draw(st.floats(0.1, 60)),
            }
        },
    }
    if draw(st.booleans()):
        spec["embeddings"] = {
            "repo": "BAAI/bge-m3",
            "served_model_name": f"{served}-embed",
            "device": draw(st.sampled_from(["gpu", "cpu"])),
            "max_client_batch_size": draw(st.integers(1, 256)),
        }
    mode = draw(st.sampled_from(["off", "auto", "always"]))
    fallback: dict[str, Any] = {"mode": mode}
    if mode != "off" or draw(st.booleans()):
        fallback["remote"] = {
            "base_url": "https://api.openai.com/v1",
            "api_key_env": "OPENAI_API_KEY",
            "model_map": {served: draw(st.sampled_from(["gpt-4o", "gpt-4o-mini"]))},
        }
    spec["gateway"] = {"fallback": fallback}
    return {
        "apiVersion": API_VERSION,
        "kind": "Profile",
        "metadata": {
            "name": draw(_SLUG),
            "description": draw(st.none() | st.text(max_size=40)),
        },
        "spec": spec,
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_profiles())
def test_any_valid_profile_round_trips(data: dict[str, Any]) -> None:
    profile = Profile.model_validate(data)
    assert parse_profile(dump_profile(profile), "dumped.yaml") == profile


# ------------------------------------------------------------ with_value: editing in place

MODELS_DIR = ("spec", "storage", "models_dir")


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        (
            "spec:\n  storage:\n    models_dir: /a  # fast\n",
            "/b/c",
            "spec:\n  storage:\n    models_dir: /b/c  # fast\n",
        ),
        (
            "spec: {storage: {models_dir: '/a', state_dir: /s}}\n",
            "/b",
            "spec: {storage: {models_dir: /b, state_dir: /s}}\n",
        ),
        (
            "spec:\n  storage: {models_dir: /a}\n",
            "/my models, 2",
            "spec:\n  storage: {models_dir: '/my models, 2'}\n",
        ),
        (
            "spec:\n  storage:\n    models_dir: /a\n",
            "true",
            "spec:\n  storage:\n    models_dir: 'true'\n",
        ),
        (
            "spec:\n  storage:\n    models_dir:\n  engine: {}\n",
            "/b",
            "spec:\n  storage:\n    models_dir: /b\n  engine: {}\n",
        ),
        # Missing keys are inserted: into the mapping as it is written, the rest as flow.
        (
            "spec:\n  storage: {state_dir: /s}\n",
            "/b",
            "spec:\n  storage: {state_dir: /s, models_dir: /b}\n",
        ),
        (
            "spec:\n  storage:\n    state_dir: /s  # keep\n# after\n",
            "/b",
            "spec:\n  storage:\n    state_dir: /s  # keep\n    models_dir: /b\n# after\n",
        ),
        (
            "spec:\n  model:\n    repo: a/b\n    tags:\n      - x\n  # end\nz: 1\n",
            "/b",
            "spec:\n  model:\n    repo: a/b\n    tags:\n      - x\n  storage: {models_dir: /b}\n"
            "  # end\nz: 1\n",
        ),
        ("spec:\n  note: |\n    text\n", "/b",
         "spec:\n  note: |\n    text\n  storage: {models_dir: /b}\n"),
        ("spec: {}", "/b", "spec: {storage: {models_dir: /b}}"),
        # What cannot be edited in place.
        ("spec:\n  storage:\n    models_dir: [/a]\n", "/b", None),
        ("spec:\n  storage: /a\n", "/b", None),
        ("spec:\n  storage:\n    models_dir: |\n      /a\n", "/b", None),
        ("spec: [\n", "/b", None),
    ],
)  # fmt: skip
def test_one_value_is_set_or_inserted_and_nothing_else_changes(
    text: str, value: str, expected: str | None
) -> None:
    from appliance.profile.yaml_text import with_value

    assert with_value(text, MODELS_DIR, value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:\n  b: 1  # gone\n  c: 2\n", "a:\n  c: 2\n"),
        ("a:\n  c: 2\n  b: 1\n", "a:\n  c: 2\n"),
        ("a: {b: 1, c: 2}\n", "a: {c: 2}\n"),
        ("a: {c: 2, b: 1}\n", "a: {c: 2}\n"),
        ("a: {c: 2}\n", "a: {c: 2}\n"),  # nothing to remove
        ("x: 1\n", "x: 1\n"),  # nor a mapping to remove it from
        # The only entry: the mapping stays a mapping (`a:` alone would be null).
        ("a:\n  b: 1\nx: 2\n", "a: {}\nx: 2\n"),
        ("a:  # kept\n  b: 1  # gone\nx: 2\n", "a: {}  # kept\nx: 2\n"),
        ("a: {b: 1}\n", "a: {}\n"),
    ],
)
def test_none_removes_the_entry(text: str, expected: str) -> None:
    from appliance.profile.yaml_text import with_value

    assert with_value(text, ("a", "b"), None) == expected


@pytest.mark.parametrize(
    "value", ["/srv/models", "/my models, 2", "/a: b #c", "/{x}, [y]", "/'q\"", "/é 😀"]
)
@pytest.mark.parametrize("path", READY_MADE, ids=lambda p: p.name)
def test_an_edited_profile_loads_with_exactly_that_change(path: Path, value: str) -> None:
    """Through the profile loader: the edit is the value it was given and nothing else, in
    every ready-made profile (block style) and in its dumped form (other quoting)."""
    from appliance.profile.yaml_text import with_value

    original = load_profile(path)
    storage = original.spec.storage.model_copy(update={"models_dir": Path(value)})
    wanted = original.model_copy(
        update={"spec": original.spec.model_copy(update={"storage": storage})}
    )
    for text in (path.read_text(encoding="utf-8"), dump_profile(original)):
        edited = with_value(text, MODELS_DIR, value)
        assert edited is not None
        assert parse_profile(edited, path.name) == wanted
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert comments == [line for line in edited.splitlines() if line.lstrip().startswith("#")]
