"""The Docker probe against a real engine: the private dockerd of the test session.

That daemon is Debian's docker.io with no NVIDIA runtime registered, like a fresh GPU box before
`nvidia-ctk runtime configure`: with GPUs present (a recorded L40S), the box must ask for the
NVIDIA Container Toolkit with NVIDIA's commands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docker import DockerClient  # noqa: TID251 - the test reads the engine's own answer

from appliance.hardware import RecordedNvml, detect_box, findings
from appliance.hardware.docker_probe import probe_docker
from tests.support.dockerd import PrivateDockerd

pytestmark = pytest.mark.docker

L40S = Path(__file__).resolve().parent.parent / "fixtures" / "nvml" / "l40s.json"


def test_the_engine_is_reachable_with_its_version_and_runtimes(
    docker_engine: PrivateDockerd, docker_client: DockerClient
) -> None:
    docker = probe_docker(docker_engine.base_url)
    expected = docker_client.version()
    assert docker.reachable
    assert docker.problem is None
    assert docker.base_url == docker_engine.base_url
    assert docker.version == expected["Version"]
    assert docker.api_version == expected["ApiVersion"]
    assert "runc" in docker.runtimes
    assert docker.default_runtime in docker.runtimes
    assert not docker.nvidia_runtime


def test_gpus_on_an_engine_without_the_nvidia_runtime_need_the_toolkit(
    docker_engine: PrivateDockerd, tmp_path: Path
) -> None:
    box = detect_box(
        nvml=RecordedNvml.from_file(L40S),
        docker_base_url=docker_engine.base_url,
        models_dir=tmp_path,
    )
    assert box.docker.reachable
    assert box.gpus[0].name == "NVIDIA L40S"
    toolkit = box.finding(findings.NO_CONTAINER_TOOLKIT)
    # The hook binary on this host would let `--gpus` work without the runtime; CI has none.
    assert (toolkit is None) == box.docker.gpu_containers_possible
    if toolkit is not None:
        assert toolkit.fix is not None
        assert "sudo nvidia-ctk runtime configure --runtime=docker" in toolkit.fix
        assert "sudo systemctl restart docker" in toolkit.fix
        assert toolkit in box.serving_blockers()


def test_a_socket_nobody_listens_on_is_unreachable_with_the_fix(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/docker.sock"
    box = detect_box(nvml=RecordedNvml.from_file(L40S), docker_base_url=url, models_dir=tmp_path)
    assert not box.docker.reachable
    assert box.docker.base_url == url
    blockers = {finding.code: finding for finding in box.serving_blockers()}
    finding = blockers.get(findings.DOCKER_NOT_RUNNING) or blockers.get(
        findings.DOCKER_NOT_INSTALLED
    )
    assert finding is not None, box.findings
    assert finding.fix is not None
    assert "systemctl enable --now docker" in finding.fix
