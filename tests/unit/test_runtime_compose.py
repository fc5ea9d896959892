"""`compose/` holds the export of every ready-made profile; stale or invalid files fail here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.hardware import detect_box
from appliance.profile import load_profile
from appliance.runtime.compose import EXAMPLE_BOXES, compose_document, compose_export
from appliance.runtime.specs import container_specs

ROOT = Path(__file__).parents[2]


def _export(profile_name: str) -> str:
    box_name = EXAMPLE_BOXES[profile_name]
    profile = load_profile(ROOT / "profiles" / f"{profile_name}.yaml")
    return compose_export(profile, detect_box(simulate=box_name), box_name=box_name)


def test_every_profile_has_an_example_box() -> None:
    names = {path.stem for path in (ROOT / "profiles").glob("*.yaml")}
    assert names == set(EXAMPLE_BOXES)


@pytest.mark.parametrize("profile_name", sorted(EXAMPLE_BOXES))
def test_checked_in_compose_file_is_current(profile_name: str) -> None:
    path = ROOT / "compose" / f"{profile_name}.yaml"
    assert path.read_text(encoding="utf-8") == _export(profile_name), (
        f"{path} is stale: regenerate with "
        f"`python -m appliance.runtime.compose --write compose` and commit it"
    )


@pytest.mark.parametrize("profile_name", sorted(EXAMPLE_BOXES))
def test_compose_mirrors_the_specs(profile_name: str) -> None:
    box = detect_box(simulate=EXAMPLE_BOXES[profile_name])
    profile = load_profile(ROOT / "profiles" / f"{profile_name}.yaml")
    document = compose_document(profile, box)
    for spec in container_specs(profile, box):
        service = document["services"][spec.role]
        assert service["image"] == spec.image
        assert service["command"] == list(spec.command)
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
        assert all(volume["read_only"] for volume in service["volumes"])
        if spec.gpu_device_ids is not None:
            [device] = service["deploy"]["resources"]["reservations"]["devices"]
            index = {gpu.uuid: str(gpu.index) for gpu in box.gpus}
            assert device["device_ids"] == [index[uuid] for uuid in spec.gpu_device_ids]
    if "tei" in document["services"]:
        assert document["services"]["tei"]["depends_on"] == {
            "vllm": {"condition": "service_healthy"}
        }


@pytest.mark.parametrize("profile_name", sorted(EXAMPLE_BOXES))
def test_docker_compose_accepts_the_file(profile_name: str, tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose (Debian's package) is needed: apt-get install -y docker-compose"
    path = tmp_path / "docker-compose.yaml"
    path.write_text(_export(profile_name), encoding="utf-8")
    done = subprocess.run(
        [tool, "-f", str(path), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["services"]["vllm"]


def _reservations(document: dict[str, object]) -> dict[str, list[str]]:
    services = document["services"]
    assert isinstance(services, dict)
    return {
        role: service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for role, service in services.items()
        if "deploy" in service
    }


def test_ready_made_files_reserve_gpus_a_real_box_has() -> None:
    """#16 item 3: simulated cards' UUIDs exist on no real box; indices do."""
    for path in sorted((ROOT / "compose").glob("*.yaml")):
        assert "GPU-" not in path.read_text(encoding="utf-8"), path
    two = load_profile(ROOT / "profiles" / "2x4090-chat.yaml")
    document = compose_document(two, detect_box(simulate="2x4090"))
    assert _reservations(document) == {"vllm": ["0", "1"], "tei": ["0"]}


def test_export_on_the_box_itself_reserves_by_uuid() -> None:
    """On the box itself UUIDs are right: they survive reboots and reordered PCI slots."""
    seen = detect_box(simulate="2x4090")
    here = seen.model_copy(update={"source": "nvml", "simulated": None})
    two = load_profile(ROOT / "profiles" / "2x4090-chat.yaml")
    uuids = [gpu.uuid for gpu in here.gpus]
    assert _reservations(compose_document(two, here)) == {"vllm": uuids, "tei": uuids[:1]}
