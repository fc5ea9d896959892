"""The engine doubles speak what the appliance will talk to: vLLM's and TEI's endpoints and
metric names, parsed with prometheus_client's own parser as the monitor will."""

from __future__ import annotations

from pathlib import Path

import docker  # noqa: TID251 - this test drives the engine directly
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles import build_engine_doubles, local_engine_double
from tests.integration.test_docker_engine import _wait_for_http


def _families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_vllm_double_speaks_openai_and_vllm_metrics() -> None:
    with local_engine_double("vllm", "--model", "/models/x", "--served-model-name", "tiny") as url:
        models = httpx.get(f"{url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body).json()
        assert reply["usage"]["completion_tokens"] == 3
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert len(events) == 3 + 2  # one per token, the finish chunk, [DONE]
        families = _families(httpx.get(f"{url}/metrics").text)
    assert families["vllm:kv_cache_usage_perc"] == "gauge"
    assert families["vllm:num_requests_waiting"] == "gauge"
    assert families["vllm:generation_tokens"] == "counter"
    assert families["vllm:time_to_first_token_seconds"] == "histogram"
    assert families["vllm:inter_token_latency_seconds"] == "histogram"


def test_tei_double_embeds_and_exports_tei_metrics() -> None:
    with local_engine_double("tei", "--model-id", "BAAI/bge-m3") as url:
        vectors = httpx.post(f"{url}/embed", json={"inputs": ["a", "b"]}).json()
        assert len(vectors) == 2
        assert len(vectors[0]) == 1024
        openai = httpx.post(f"{url}/v1/embeddings", json={"input": "a", "model": "m"}).json()
        assert openai["data"][0]["embedding"] == vectors[0]
        families = _families(httpx.get(f"{url}/metrics").text)
    assert families["te_request_count"] == "counter"
    assert families["te_queue_size"] == "gauge"
    assert families["te_request_inference_duration"] == "histogram"


@pytest.mark.docker
def test_doubles_run_as_containers(
    docker_client: docker.DockerClient, python_base_image: str, tmp_path: Path
) -> None:
    images = build_engine_doubles(docker_client, python_base_image, tmp_path)
    container = docker_client.containers.run(
        images.vllm["ok"],
        ["--model", "/models/x", "--served-model-name", "tiny", "--port", "8000"],
        detach=True,
        ports={"8000/tcp": ("127.0.0.1", None)},
    )
    try:
        container.reload()
        port = container.ports["8000/tcp"][0]["HostPort"]
        assert _wait_for_http(f"http://127.0.0.1:{port}/health").status_code == 200
        assert "vllm:kv_cache_usage_perc" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        container.remove(force=True)

    failing = docker_client.containers.run(images.vllm["exit-on-start"], detach=True)
    try:
        assert failing.wait(timeout=30)["StatusCode"] == 1
        assert b"larger than the available KV cache memory" in failing.logs()
    finally:
        failing.remove(force=True)
