"""The runtime's Docker adapter against the real private engine and the engine doubles."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from appliance.errors import EnvironmentNotReadyError, OperationFailedError
from appliance.runtime.docker import DockerEngine
from appliance.runtime.health import wait_until_healthy
from appliance.runtime.model import ContainerSpec, Healthcheck, PortBinding
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd

pytestmark = pytest.mark.docker


@pytest.fixture
def engine(docker_engine: PrivateDockerd) -> Iterator[DockerEngine]:
    adapter = DockerEngine(docker_engine.base_url)
    yield adapter
    for container in adapter.managed_containers(profile="adapter-test"):
        adapter.remove(container.id)
    adapter.close()


def _vllm_spec(image: str, port: int, name: str = "adapter-test-vllm") -> ContainerSpec:
    return ContainerSpec(
        role="vllm",
        name=name,
        image=image,
        command=("--model", "/models/m", "--served-model-name", "tiny", "--port", "8000"),
        ports=(PortBinding(container_port=8000, host_port=port),),
        healthcheck=Healthcheck(
            test=(
                "/usr/bin/python3",
                "-c",
                "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')",
            ),
            interval_s=1,
            timeout_s=2,
            retries=3,
        ),
        health_url=f"http://127.0.0.1:{port}/health",
        profile="adapter-test",
    )


def test_create_start_find_by_label_and_wait_healthy(
    engine: DockerEngine, engine_doubles: EngineDoubleImages
) -> None:
    port = free_port()
    spec = _vllm_spec(engine_doubles.vllm["ok"], port)
    container_id = engine.create(spec)
    engine.start(container_id)
    outcome = wait_until_healthy(engine, container_id, spec.health_url, deadline_s=30)
    assert outcome.healthy, outcome.reason

    [found] = engine.managed_containers(profile="adapter-test")
    assert found.id == container_id
    assert found.spec_hash == spec.spec_hash()
    assert found.role == "vllm"
    assert found.host_ports == {8000: port}
    assert "Uvicorn running" in engine.logs(container_id)

    stop = threading.Event()
    lines = engine.follow_logs(container_id, stop, tail=5)
    assert "double" in next(lines)
    stop.set()


def test_a_container_that_exits_ends_the_wait_early(
    engine: DockerEngine, engine_doubles: EngineDoubleImages
) -> None:
    spec = _vllm_spec(engine_doubles.vllm["exit-on-start"], free_port(), "adapter-test-crash")
    container_id = engine.create(spec)
    engine.start(container_id)
    outcome = wait_until_healthy(engine, container_id, spec.health_url, deadline_s=600)
    assert not outcome.healthy
    assert outcome.reason.startswith("exited")
    assert "larger than the available KV cache memory" in engine.logs(container_id)


def test_gpu_request_without_toolkit_is_an_environment_error(
    engine: DockerEngine, engine_doubles: EngineDoubleImages
) -> None:
    spec = _vllm_spec(engine_doubles.vllm["ok"], free_port(), "adapter-test-gpu").model_copy(
        update={"gpu_device_ids": "all"}
    )
    container_id = engine.create(spec)
    with pytest.raises(EnvironmentNotReadyError, match="could not select device driver") as error:
        engine.start(container_id)
    assert "nvidia-ctk runtime configure" in (error.value.hint or "")
    # Docker leaves such a container behind in state "created"; the adapter still sees it.
    assert engine.inspect(container_id) is not None
    engine.remove(container_id)
    assert engine.inspect(container_id) is None


def test_missing_image_says_how_to_load_it(engine: DockerEngine) -> None:
    spec = _vllm_spec("appliance-test/not-there:1", free_port(), "adapter-test-missing")
    with pytest.raises(OperationFailedError, match="not on this box") as error:
        engine.create(spec)
    assert "docker load" in (error.value.hint or "")


def test_unreachable_engine_is_an_environment_error() -> None:
    with pytest.raises(EnvironmentNotReadyError, match="nothing answers at unix:///nonexistent"):
        DockerEngine("unix:///nonexistent/docker.sock", timeout_s=2)


def test_following_a_quiet_container_stops_when_asked(
    engine: DockerEngine, engine_doubles: EngineDoubleImages
) -> None:
    spec = _vllm_spec(engine_doubles.vllm["ok"], free_port(), "adapter-test-quiet")
    container_id = engine.create(spec)
    engine.start(container_id)
    assert wait_until_healthy(engine, container_id, spec.health_url, deadline_s=30).healthy
    stop = threading.Event()
    lines: list[str] = []

    def follow() -> None:
        lines.extend(engine.follow_logs(container_id, stop, tail=0))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    follower.join(timeout=1)
    assert follower.is_alive()  # blocked on a container that says nothing
    stop.set()
    follower.join(timeout=20)  # a hang detector, not a timing assertion
    assert not follower.is_alive()
