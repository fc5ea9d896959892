"""The gateway image the Kubernetes export runs, built from the Containerfile (#16 item 4).

Built on the private engine with no registry: the Containerfile's pinned base is replaced
(through its BASE_IMAGE build argument) by the tests' local Python image plus pip, and the
wheels come from this checkout and this virtualenv (`tests/support/wheels.py`). Everything
after the base is the Containerfile as shipped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import docker  # noqa: TID251 - the test drives the private engine directly
import httpx
import pytest

from appliance import __version__
from tests.doubles import free_port
from tests.support.images import shared_libraries
from tests.support.wheels import gateway_wheels, runtime_distributions

ROOT = Path(__file__).resolve().parents[2]
TAG = f"appliance-test/llm-appliance:{__version__}"

_PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: image-test
spec:
  model:
    repo: acme/tiny-chat
    quantization: bf16
    served_model_name: tiny
  embeddings:
    enabled: false
  storage:
    state_dir: /var/lib/llm-appliance/state
"""


@pytest.fixture(scope="module")
def gateway_image(
    docker_client: docker.DockerClient,
    python_base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    import pip

    # The local base has Python but no pip (and no shell), and only the C libraries Python's own
    # extensions link; add pip, and the libraries the wheels' extensions link, as a full base
    # image (python:3.11-slim) has them.
    base = tmp_path_factory.mktemp("python-pip")
    shutil.copytree(Path(pip.__file__).parent, base / "pip")
    extensions = [
        Path(str(dist.locate_file(file)))
        for dist in runtime_distributions()
        for file in dist.files or ()
        if file.name.endswith(".so")
    ]
    for library in shared_libraries(extensions):
        target = base / "rootfs" / str(library).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library.resolve(), target)
    (base / "Dockerfile").write_text(
        f"FROM {python_base_image}\nCOPY rootfs/ /\nCOPY pip /opt/pip/pip\n"
        "ENV PYTHONPATH=/opt/pip\n"
    )
    docker_client.images.build(path=str(base), tag="appliance-test/python-pip:3.11", rm=True)

    context = tmp_path_factory.mktemp("gateway-image")
    shutil.copy(ROOT / "Containerfile", context / "Containerfile")
    gateway_wheels(context / "dist")
    docker_client.images.build(
        path=str(context),
        dockerfile="Containerfile",
        buildargs={"BASE_IMAGE": "appliance-test/python-pip:3.11"},
        tag=TAG,
        rm=True,
        forcerm=True,
    )
    return TAG


def test_the_image_is_non_root_and_runs_the_gateway(
    docker_client: docker.DockerClient, gateway_image: str
) -> None:
    config = docker_client.images.get(gateway_image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["appliance", "gateway"]
    version = docker_client.containers.run(
        gateway_image, ["--version"], entrypoint=["appliance"], remove=True
    )
    assert version.decode().strip() == f"llm-appliance {__version__}"


@pytest.fixture
def running_gateway(
    docker_client: docker.DockerClient, gateway_image: str, tmp_path: Path
) -> Iterator[int]:
    profile = tmp_path / "profile.yaml"
    profile.write_text(_PROFILE)
    profile.chmod(0o644)
    port = free_port()
    container = docker_client.containers.run(
        gateway_image,
        ["--profile", "/etc/llm-appliance/profile.yaml", "--host", "0.0.0.0", "--port", "8080"],
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={str(profile): {"bind": "/etc/llm-appliance/profile.yaml", "mode": "ro"}},
        # As the Kubernetes export runs it: a read-only root, state on its own writable volume.
        read_only=True,
        tmpfs={"/var/lib/llm-appliance/state": "mode=1777"},
    )
    try:
        yield port
    finally:
        logs = container.logs().decode(errors="replace")
        container.remove(force=True)
        print(logs)


def test_the_gateway_in_the_image_answers_health(running_gateway: int) -> None:
    deadline = time.monotonic() + 60  # a bound against hanging, not a timing assertion
    # Up, and its first probe of the (absent) engine done: health is None until that probe.
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{running_gateway}/health", timeout=2)
            if response.json()["local"]["healthy"] is not None:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the gateway in the image did not come up"
        time.sleep(0.2)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["local"]["healthy"] is False  # no vLLM behind it here, and it says so
