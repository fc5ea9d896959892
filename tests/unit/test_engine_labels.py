"""`status` and the TUI name the chat service after the server the profile runs (issue #21):
`sglang` for an SGLang profile, `vllm` otherwise; the service's key stays `vllm` (the role), so
history, alerts and `status --json` keep their names."""

from __future__ import annotations

from pathlib import Path

from appliance.monitor.render import render_status
from appliance.monitor.scrape import parse_metrics
from appliance.monitor.snapshot import ServiceStats, Snapshot, Timestamp
from appliance.operations.status import profile_endpoints, sample_status, simulated
from appliance.profile import parse_profile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROFILE = (
    "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata:\n  name: sg\nspec:\n"
    "  model:\n    repo: Qwen/Qwen2.5-7B-Instruct-AWQ\n    quantization: awq\n"
    "    served_model_name: qwen\n"
)


def _snapshot(*services: ServiceStats) -> Snapshot:
    return Snapshot(
        tick=1, taken_at=Timestamp(monotonic=0, wall=1e9), interval_s=1.0, services=services
    )


def test_an_sglang_profiles_chat_endpoint_says_so() -> None:
    sglang = parse_profile(PROFILE + "  engine:\n    kind: sglang\n", "sg.yaml")
    vllm = parse_profile(PROFILE, "v.yaml")
    (chat_sglang, *_) = profile_endpoints(sglang)
    (chat_vllm, *_) = profile_endpoints(vllm)
    assert (chat_sglang.name, chat_sglang.kind, chat_sglang.engine) == ("vllm", "vllm", "sglang")
    assert chat_vllm.engine == "vllm"


def test_status_text_labels_the_chat_service_by_its_engine() -> None:
    sglang = ServiceStats(name="vllm", kind="vllm", engine="sglang", url="http://x", healthy=True)
    vllm = ServiceStats(name="vllm", kind="vllm", engine="vllm", url="http://x", healthy=True)
    tei = ServiceStats(name="tei", kind="tei", url="http://y", healthy=True)
    assert (sglang.label, sglang.engine_title) == ("sglang", "SGLang")
    assert (vllm.label, vllm.engine_title) == ("vllm", "vLLM")
    assert tei.label == "tei"
    text = render_status(_snapshot(sglang, tei))
    assert "\n  sglang   ● healthy" in text
    assert "  vllm " not in text
    assert "\n  vllm     ● healthy" in render_status(_snapshot(vllm))
    assert _snapshot(sglang).model_dump(mode="json")["services"][0]["name"] == "vllm"


def test_the_engine_is_told_from_the_metrics_when_no_profile_says() -> None:
    vllm_page = (FIXTURES / "vllm-0.32-cpu-metrics.txt").read_text()
    assert parse_metrics(vllm_page, "vllm").engine == "vllm"
    sglang_page = (
        "# HELP sglang:num_running_reqs The number of running requests.\n"
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{engine_type="unified",model_name="m"} 1.0\n'
    )
    assert parse_metrics(sglang_page, "vllm").engine == "sglang"
    assert parse_metrics((FIXTURES / "tei-metrics-excerpt.txt").read_text(), "tei").engine is None


def test_a_simulated_sglang_profile_names_its_chat_service() -> None:
    samplers, clock = simulated("rtx4090", engine="sglang")
    snapshot = sample_status(samplers, ticks=1, clock=clock)
    chat = snapshot.service("vllm")
    assert chat is not None
    assert chat.label == "sglang"
    assert "\n  sglang " in render_status(snapshot)
