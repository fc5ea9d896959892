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
            assert device["device_ids"] == list(spec.gpu_device_ids)
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
