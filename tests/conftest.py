"""Session fixtures shared by every test directory.

The Docker engine is real: a private dockerd is started once per session on its own socket and
data root, and stopped by PID at the end. A test that needs it and cannot get it fails — it is
never skipped, so a green run always means the container paths really ran.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker  # noqa: TID251 - test setup talks to the private engine directly
import pytest

from appliance.runtime.docker import DockerEngine
from tests.doubles import EngineDoubleImages, build_engine_doubles
from tests.support.dockerd import PrivateDockerd
from tests.support.images import ensure_python_base


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[PrivateDockerd]:
    # A short path: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="appliance-dockerd-", dir="/tmp"))
    engine = PrivateDockerd(root)
    engine.start()
    try:
        yield engine
    finally:
        client = engine.client()
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        finally:
            client.close()
            engine.stop()


@pytest.fixture(scope="session")
def docker_client(docker_engine: PrivateDockerd) -> Iterator[docker.DockerClient]:
    client = docker_engine.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def python_base_image(docker_client: docker.DockerClient) -> str:
    return ensure_python_base(docker_client)


@pytest.fixture(scope="session")
def engine_doubles(
    docker_client: docker.DockerClient,
    python_base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> EngineDoubleImages:
    """The vLLM and TEI test-double images (and vLLM fault variants), built once a session."""
    return build_engine_doubles(
        docker_client, python_base_image, tmp_path_factory.mktemp("doubles")
    )


@pytest.fixture
def engine(docker_engine: PrivateDockerd) -> Iterator[DockerEngine]:
    """The appliance's Docker adapter on the private engine; its managed containers go after."""
    adapter = DockerEngine(docker_engine.base_url)
    yield adapter
    for container in adapter.managed_containers():
        adapter.remove(container.id)
    adapter.close()


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the internet: point every Hugging Face client at nothing by default."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if "DOCKER_HOST" in os.environ:
        # Tests name their engine explicitly; never the developer's daemon by accident.
        monkeypatch.delenv("DOCKER_HOST")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly whether the real-Docker tests ran, so a green CI log proves it."""
    counts: dict[str, int] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "docker" in getattr(report, "keywords", {}):
                counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        terminalreporter.write_line(f"real Docker engine tests (private dockerd): {summary}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the private engine carries the `docker` marker, declared or not."""
    for item in items:
        if "docker_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
