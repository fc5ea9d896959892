"""Apply with several chat models (spec.switching, issue #19), for real: the private dockerd,
the vLLM double images with sleep mode, then the gateway switching between the containers.

The further model's engine must be asleep before spec.model's starts (vLLM takes its whole
gpu_memory_utilization when it starts), and spec.model's is the one awake when apply is done.
Nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest

from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig
from appliance.hardware import detect_box
from appliance.hardware.nvml import NvmlRecording, NvmlUnavailable, RecordedNvml
from appliance.monitor.samplers import ContainersRuntimeSource, NvmlGpuSampler
from appliance.operations.status import profile_samplers, sample_status
from appliance.profile import parse_profile
from appliance.runtime.apply import ApplyEvent, apply_profile
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import weights_path
from tests.doubles import EngineDoubleImages, free_port

pytestmark = pytest.mark.docker

CHAT = "Qwen/Qwen2.5-7B-Instruct-AWQ"
CODER = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ"
NO_GPU = NvmlUnavailable(kind="no-driver", message="a test box has no GPU")


def test_apply_two_chat_models_then_the_gateway_switches_between_them(
    engine: object, engine_doubles: EngineDoubleImages, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    for repo in (CHAT, CODER):
        weights = weights_path(models, repo, "main")
        weights.mkdir(parents=True)
        (weights / "config.json").write_text("{}")
    main_port, coder_port = free_port(), free_port()
    image = engine_doubles.vllm["ok"]
    profile = parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: switch-test}\nspec:\n"
        f"  model: {{repo: {CHAT}, quantization: awq, served_model_name: chat}}\n"
        "  engine: {max_model_len: 4096, gpu_memory_utilization: 0.8}\n"
        "  switching:\n"
        f"    models: [{{repo: {CODER}, quantization: awq, served_model_name: coder, "
        f"port: {coder_port}}}]\n"
        f"  images: {{vllm: '{image}'}}\n"
        f"  ports: {{vllm: {main_port}, gateway: {free_port()}}}\n"
        f"  storage: {{models_dir: {models}, state_dir: {tmp_path / 'state'}}}\n",
        "switch-test.yaml",
    )
    box = detect_box(simulate="rtx4090", models_dir=models)
    events: list[ApplyEvent] = []
    result = apply_profile(
        profile,
        box,
        engine,  # type: ignore[arg-type]
        options=SpecOptions(gpu_requests=False),
        deadlines_s={"vllm": 120.0},
        progress=events.append,
    )
    assert result.applied
    assert [(a.kind, a.name) for a in result.plan.actions] == [
        ("create", "llm-appliance-switch-test-vllm-2"),
        ("create", "llm-appliance-switch-test-vllm"),
    ]
    steps = [(e.step, e.message) for e in events if e.step in ("healthy", "sleep")]
    assert steps == [
        ("healthy", "llm-appliance-switch-test-vllm-2 is healthy"),
        ("sleep", "putting llm-appliance-switch-test-vllm-2 to sleep (level 1)"),
        ("healthy", "llm-appliance-switch-test-vllm is healthy"),
    ]

    def sleeping(port: int) -> bool:
        answer = httpx.get(f"http://127.0.0.1:{port}/is_sleeping", timeout=5).json()
        return bool(answer["is_sleeping"])

    assert sleeping(coder_port)
    assert not sleeping(main_port)

    async def through_the_gateway() -> None:
        config = dataclasses.replace(
            GatewayConfig.from_profile(profile, state_dir=tmp_path / "state"),
            auth_required=False,
            probe_interval_s=0,
        )
        app = GatewayApp(config)
        async with app.running():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                for model in ("coder", "chat", "coder"):
                    answer = await client.post(
                        "/v1/chat/completions",
                        json={"model": model, "messages": [], "max_tokens": 2},
                        timeout=60,
                    )
                    assert answer.status_code == 200
                    assert answer.json()["model"] == model
            assert app.switcher is not None
            assert app.switcher.switches == 3

    asyncio.run(through_the_gateway())
    assert not sleeping(coder_port)
    assert sleeping(main_port)

    # `status` watches both engines, each with its own container: the awake coder's too, not
    # only spec.model's (which sleeps now).
    samplers = profile_samplers(
        profile,
        gpus=NvmlGpuSampler(RecordedNvml(NvmlRecording(unavailable=NO_GPU))),
        runtime=ContainersRuntimeSource(engine, "switch-test"),  # type: ignore[arg-type]
    )
    snapshot = sample_status(samplers, ticks=1)
    engines = {s.name: s for s in snapshot.services if s.kind == "vllm"}
    assert sorted(engines) == ["vllm", "vllm-2"]
    assert engines["vllm-2"].url == f"http://127.0.0.1:{coder_port}"
    for service in engines.values():
        assert service.healthy, service
        assert service.container_state == "running", service
