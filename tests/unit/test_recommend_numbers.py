"""One set of numbers in Recommend: the card, the why, the text output and the saved profile
all come from the same fields, labelled per user or in total (#16 items 7 and 8)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import yaml

from appliance.catalog import load_catalog
from appliance.fit import render_estimate
from appliance.hardware import Box, detect_box
from appliance.profile import dump_profile, parse_profile
from appliance.recommend import Workload, recommend, render_recommendation
from appliance.sizing import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    PINNED_VLLM_VERSION,
    EngineFlags,
    VllmRules,
    requests_held,
)

CASES = [
    ("rtx4090", "chat", {"users": 10}),
    ("rtx4090", "rag", {"users": 10}),
    ("l40s", "rag", {"users": 30, "context": 16384}),
    ("h100", "chat", {"users": 40}),
    ("2x4090", "batch", {}),
]


@functools.cache
def _box(name: str) -> Box:
    return detect_box(simulate=name)


@pytest.mark.parametrize(("box", "kind", "numbers"), CASES)
def test_card_why_text_and_profile_agree(box: str, kind: str, numbers: dict[str, int]) -> None:
    workload = Workload.for_kind(kind, **numbers)  # type: ignore[arg-type]
    rec = recommend(_box(box), workload)
    text = render_recommendation(rec, limit=3)
    for index, c in enumerate(rec.candidates[:3]):
        saved = yaml.safe_load(dump_profile(rec.to_profile(index=index)))["spec"]["engine"]
        assert saved["max_num_seqs"] == c.max_num_seqs
        # Requests of prompt + output tokens, paged as vLLM pages them (for hybrid models not
        # kv_cache_tokens / request_tokens: only the full-attention groups grow with a request).
        model = load_catalog().model(c.model_key)
        assert model is not None
        flags = EngineFlags(
            kv_cache_dtype=c.kv_cache_dtype, enable_prefix_caching=c.enable_prefix_caching
        )
        held = math.floor(
            requests_held(model.architecture, c.estimate, workload.request_tokens, flags=flags)
        )
        assert c.concurrency_at_request == held  # whole requests, never rounded up
        assert c.running_at_once == min(workload.users, c.max_num_seqs)
        # The card: what vLLM runs at once is the profile's max_num_seqs; speed is per user.
        card = c.at_once_text()
        assert card.startswith(f"{c.max_num_seqs} at once")
        assert f"{c.decode.tokens_per_second_per_request:.0f} tok/s per user" in card
        # The why and the text output say the same numbers, labelled.
        assert f"max_num_seqs {c.max_num_seqs}" in c.why
        assert f"KV cache holds {held} requests of {workload.request_tokens} tokens" in c.why
        assert f"per user, ~{c.decode.tokens_per_second_total:.0f} in total" in c.why
        assert f"with {c.running_at_once} running" in c.why
        assert f"max_num_seqs {c.max_num_seqs}," in text
        comment = rec.profile_comment(index)
        assert f"max_num_seqs {c.max_num_seqs}" in " ".join(comment.split())
        _ = parse_profile(dump_profile(rec.to_profile(index=index), comment=comment), "r.yaml")


def test_one_gpu_memory_utilization_default_stated_in_estimate_and_recommend() -> None:
    pinned = VllmRules.for_version(PINNED_VLLM_VERSION).default_gpu_memory_utilization
    assert pinned == DEFAULT_GPU_MEMORY_UTILIZATION
    from appliance.fit import estimate_for, resolve_gpu
    from appliance.local_model import resolve_model
    from appliance.profile import EngineSpec

    assert EngineSpec().gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION
    estimate = estimate_for(resolve_model("qwen2.5-7b-instruct", "awq"), resolve_gpu("rtx4090"))
    assert estimate.gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION
    default = DEFAULT_GPU_MEMORY_UTILIZATION
    stated = f"gpu_memory_utilization {default:g}, vLLM {PINNED_VLLM_VERSION}'s default"
    assert stated in render_estimate(estimate)
    # Without TEI on the card, recommend keeps the same default, and says so.
    rec = recommend(_box("rtx4090"), Workload.for_kind("chat", embeddings=False))
    assert rec.top.gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION
    assert stated in render_recommendation(rec)


def test_a_recommended_profile_carries_a_fallback_block_to_complete(tmp_path: Path) -> None:
    """#16 item 2: `fallback auto` needs a remote API; recommend names one, off until switched."""
    from appliance.gateway.config import GatewayConfig
    from appliance.gateway.state import set_fallback

    rec = recommend(_box("l40s"), Workload.for_kind("rag", users=30, context=16384))
    text = dump_profile(rec.to_profile(), comment=rec.profile_comment())
    profile = parse_profile(text, "box.yaml")
    fallback = profile.spec.gateway.fallback
    assert fallback.mode == "off"  # nothing leaves the box until an admin switches it
    assert fallback.remote is not None
    assert fallback.remote.api_key_env == "OPENAI_API_KEY"
    assert fallback.remote.api_key_file is None
    assert set(fallback.remote.model_map) == {profile.spec.model.served_name}
    assert "appliance fallback auto" in text  # the comment says how to complete it
    config = GatewayConfig.from_profile(profile, state_dir=tmp_path)
    state = set_fallback(config.state_file, "auto", remote_configured=config.remote is not None)
    assert state.mode.value == "auto"
