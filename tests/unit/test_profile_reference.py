"""The committed profile reference is what the schema says today."""

from __future__ import annotations

from pathlib import Path

from appliance.profile_reference import reference

PAGE = Path(__file__).resolve().parents[2] / "docs" / "profile-reference.md"


def test_profile_reference_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference(), (
        "docs/profile-reference.md is stale: run "
        "`python -m appliance.profile_reference --write docs/profile-reference.md`"
    )


def test_every_section_and_secret_source_is_documented() -> None:
    text = reference()
    for key in ("spec.engine.gpu_memory_utilization", "spec.gateway.fallback.remote.api_key_env"):
        assert f"`{key}`" in text
