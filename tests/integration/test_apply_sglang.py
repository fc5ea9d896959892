"""Apply an SGLang profile for real (issue #21): the private dockerd and the SGLang engine double.

The double's image has no entrypoint; the appliance's argv (`python3 -m sglang.launch_server
...`, SGLang's flags) starts it, as it starts SGLang in lmsysorg/sglang. Health, models, a chat
completion and the metrics page are SGLang's. `SpecOptions(gpu_requests=False)` because this
machine has no GPU. Nothing here asserts on wall-clock time.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.monitor.scrape import parse_metrics
from appliance.profile import Profile, parse_profile
from appliance.runtime.apply import apply_profile, plan_profile
from appliance.runtime.containers import status
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import weights_path
from tests.doubles import EngineDoubleImages, free_port

pytestmark = pytest.mark.docker

NO_GPU = SpecOptions(gpu_requests=False)
DEADLINES = {"vllm": 120.0, "tei": 120.0}
CHAT_REPO = "Qwen/Qwen2.5-7B-Instruct-AWQ"


def _profile(
    root: Path, port: int, doubles: EngineDoubleImages, *, kind: str, seqs: int
) -> Profile:
    image = f"sglang: '{doubles.sglang}'" if kind == "sglang" else f"vllm: '{doubles.vllm['ok']}'"
    text = (
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: sglang-test}\n"
        "spec:\n"
        f"  model: {{repo: {CHAT_REPO}, quantization: awq, served_model_name: chat}}\n"
        f"  engine: {{kind: {kind}, max_model_len: 4096, max_num_seqs: {seqs}}}\n"
        f"  images: {{{image}}}\n"
        f"  ports: {{vllm: {port}, gateway: {free_port()}}}\n"
        f"  storage: {{models_dir: {root / 'models'}, state_dir: {root / 'state'}}}\n"
    )
    return parse_profile(text, "sglang-test.yaml")


@pytest.fixture
def box(tmp_path: Path) -> Box:
    models = tmp_path / "models"
    weights = weights_path(models, CHAT_REPO, "main")
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    return detect_box(simulate="rtx4090", models_dir=models)


def test_an_sglang_profile_applies_serves_and_reports_sglangs_metrics(
    engine: DockerEngine, engine_doubles: EngineDoubleImages, box: Box, tmp_path: Path
) -> None:
    port = free_port()
    profile = _profile(tmp_path, port, engine_doubles, kind="sglang", seqs=32)
    result = apply_profile(profile, box, engine, options=NO_GPU, deadlines_s=DEADLINES)
    assert result.applied
    assert [(a.kind, a.role) for a in result.plan.actions] == [("create", "vllm")]
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    models = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
    assert [(m["id"], m["owned_by"], m["max_model_len"]) for m in models] == [
        ("chat", "sglang", 4096)
    ]
    answer = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=10,
    )
    assert answer.status_code == 200
    reading = parse_metrics(httpx.get(f"{url}/metrics", timeout=5).text, "vllm")
    assert reading.sources["generation_tokens"] == "sglang:generation_tokens"
    assert reading.counters["generation_tokens"] == 2
    assert reading.gauges["waiting_requests"] == 0
    rows = {row.role: row for row in status(engine)}
    assert rows["vllm"].ready is True

    again = apply_profile(profile, box, engine, options=NO_GPU, deadlines_s=DEADLINES)
    assert not again.applied
    assert again.plan.is_noop

    fewer = _profile(tmp_path, port, engine_doubles, kind="sglang", seqs=16)
    [change] = plan_profile(fewer, box, engine, options=NO_GPU).changes
    assert change.kind == "replace"
    assert ("command --max-running-requests", "32", "16") in [
        (c.field, c.before, c.after) for c in change.changes
    ]


def test_switching_the_engine_kind_replaces_the_chat_engine(
    engine: DockerEngine, engine_doubles: EngineDoubleImages, box: Box, tmp_path: Path
) -> None:
    port = free_port()
    sglang = _profile(tmp_path, port, engine_doubles, kind="sglang", seqs=8)
    apply_profile(sglang, box, engine, options=NO_GPU, deadlines_s=DEADLINES)
    before = {c.role: c.id for c in engine.managed_containers()}
    vllm = _profile(tmp_path, port, engine_doubles, kind="vllm", seqs=8)
    result = apply_profile(vllm, box, engine, options=NO_GPU, deadlines_s=DEADLINES)
    assert [(a.kind, a.role) for a in result.plan.actions] == [("replace", "vllm")]
    after = {c.role: c.id for c in engine.managed_containers()}
    assert after.keys() == {"vllm"}
    assert after["vllm"] != before["vllm"]
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
    assert [m["owned_by"] for m in models] == ["vllm"]
