"""The ready-made profiles' comments say how much KV cache they get and how many requests it
holds; those claims are recomputed here from the memory model, so they stay true (#16 item 10).

Each profile states its sizing in one sentence of a fixed form, under "Why these numbers":
"Sizing on BOX (appliance estimate, vLLM X.Y.Z): G GiB of KV cache = Tk tokens at K KiB per
token; C requests of the full L tokens at once, or S (max_num_seqs) of up to Pk tokens each."
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from appliance.fit import fit_profile
from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.local_model import resolve_profile_model
from appliance.profile import Profile, load_profile
from appliance.runtime.compose import EXAMPLE_BOXES
from appliance.sizing import PINNED_VLLM_VERSION, MemoryEstimate


def estimate_profile(profile: Profile, box: Box) -> MemoryEstimate:
    estimate = fit_profile(profile, box, resolve_profile_model(profile))
    assert isinstance(estimate, MemoryEstimate)
    return estimate


ROOT = Path(__file__).resolve().parents[2]
CLAIM = re.compile(
    r"Sizing on (?P<box>\S+) \(appliance estimate, vLLM (?P<version>[\d.]+)\): "
    r"(?P<gib>[\d.]+) GiB of KV cache = (?P<ktokens>\d+)k tokens at (?P<kib>\d+) KiB per token; "
    r"(?P<full>\d+) requests? of the full (?P<max_model_len>[\d,]+) tokens at once, or "
    r"(?P<seqs>\d+) \(max_num_seqs\) of up to (?P<each>[\d.]+)k tokens each[.:]"
)


def _comment(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


@pytest.mark.parametrize("name", sorted(EXAMPLE_BOXES))
def test_the_comment_states_what_the_memory_model_computes(name: str) -> None:
    path = ROOT / "profiles" / f"{name}.yaml"
    found = CLAIM.search(_comment(path))
    assert found, f"{path}: no 'Sizing on …' sentence in its comment"
    claim = found.groupdict()
    profile = load_profile(path)
    assert claim["box"] == EXAMPLE_BOXES[name]
    assert claim["version"] == PINNED_VLLM_VERSION
    estimate = estimate_profile(profile, detect_box(simulate=EXAMPLE_BOXES[name]))
    assert estimate is not None
    engine = profile.spec.engine
    assert float(claim["gib"]) == pytest.approx(estimate.kv_cache_gib, abs=0.05)
    assert int(claim["ktokens"]) == round(estimate.kv_cache_tokens / 1000)
    assert int(claim["kib"]) == round(estimate.kv_bytes_per_token / 1024)
    assert int(claim["full"]) == math.floor(estimate.max_concurrency)
    assert int(claim["max_model_len"].replace(",", "")) == engine.max_model_len
    assert int(claim["seqs"]) == engine.max_num_seqs
    each = estimate.kv_cache_tokens / estimate.max_num_seqs / 1000
    assert float(claim["each"]) == pytest.approx(each, abs=0.05)


def test_no_comment_promises_more_concurrency_than_the_cache_holds() -> None:
    """The claim the issue caught: "32 concurrent chats of 16k context" from ~230k tokens."""
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        text = _comment(path)
        for count, context in re.findall(r"(\d+) concurrent \w+ (?:requests )?of (\d+)k", text):
            estimate = estimate_profile(
                load_profile(path), detect_box(simulate=EXAMPLE_BOXES[path.stem])
            )
            assert estimate is not None
            assert int(count) * int(context) * 1000 <= estimate.kv_cache_tokens, path
