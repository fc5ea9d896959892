"""`--simulate FILE`: plan for a GPU box from a laptop with the box's own `detect --json`.

The H200 reading is real (tests/fixtures/detect/README.md); the 550 and 575 files differ from it
only in the driver, and the GeForce file below is made from it in each test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.engine_images import ImageChoice, box_vllm_image
from appliance.errors import BadInputError, EnvironmentNotReadyError, ExitCode
from appliance.hardware import detect_box, findings
from appliance.hardware.simulate import catalog_name
from appliance.profile import load_profile
from appliance.runtime.specs import container_specs, vllm_image_choice
from tests.unit.test_cli import ROOT, appliance, assert_no_traceback

DETECT = ROOT / "tests" / "fixtures" / "detect"
H200 = DETECT / "h200.json"
PROFILE = ROOT / "profiles" / "h100-70b-fp8.yaml"


def geforce_file(tmp_path: Path, driver: str = "570.195.03", cuda: str = "12.8") -> Path:
    """The H200 reading turned into a 4090 box on Ubuntu's packaged 570 driver."""
    document = json.loads(H200.read_text())
    document["driver_version"], document["cuda_driver_version"] = driver, cuda
    for gpu in document["gpus"]:
        gpu.update(
            name="NVIDIA GeForce RTX 4090",
            catalog_key=None,
            memory_total_bytes=25757220864,
            compute_capability=[8, 9],
            driver_version=driver,
            cuda_driver_version=cuda,
        )
    path = tmp_path / "rtx4090-570.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("name", "image", "route"),
    [
        ("h200.json", "vllm/vllm-openai:v0.32.0", "native"),
        ("h200-driver-575.json", "vllm/vllm-openai:v0.32.0-cu129", "native"),
        ("h200-driver-550.json", "vllm/vllm-openai:v0.32.0-cu129", "minor"),
    ],
)
def test_a_detect_file_is_the_box_it_describes_and_its_driver_picks_the_image(
    name: str, image: str, route: str
) -> None:
    box = detect_box(simulate=str(DETECT / name))
    assert box.source == "recorded"
    assert box.recording is not None
    assert box.recording.startswith(str(DETECT / name))
    assert [gpu.catalog_key for gpu in box.gpus] == ["h200"]
    assert box.host.hostname == "vm"
    # Docker was missing on that box: still a finding, made by this version's rules.
    assert [f.code for f in box.findings] == [findings.DOCKER_NOT_INSTALLED]
    choice = box_vllm_image(box)
    assert isinstance(choice, ImageChoice)
    assert (choice.image, choice.route) == (image, route)
    profile = load_profile(PROFILE)
    vllm = container_specs(profile, box)[0]
    assert vllm.image == image
    assert "VLLM_ENABLE_CUDA_COMPATIBILITY" not in vllm.environment


def test_findings_are_made_again_so_an_old_driver_on_a_geforce_card_is_refused(
    tmp_path: Path,
) -> None:
    box = detect_box(simulate=str(geforce_file(tmp_path)))
    assert box.gpus[0].catalog_key == "rtx4090"
    refusal = box.finding(findings.DRIVER_TOO_OLD)
    assert refusal is not None
    assert refusal.severity == "error"
    with pytest.raises(EnvironmentNotReadyError) as caught:
        container_specs(load_profile(ROOT / "profiles" / "rtx4090-chat.yaml"), box)
    assert "570.195.03" in caught.value.message
    assert caught.value.hint is not None
    assert "sudo ubuntu-drivers install --gpgpu nvidia:580-server" in caught.value.hint


@pytest.mark.parametrize(
    ("content", "expected"),
    [("not json", "is not `appliance detect --json` output"), ('{"gpus": []}', "source")],
)
def test_a_file_that_is_not_a_detect_file_is_one_clear_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "box.json"
    path.write_text(content)
    with pytest.raises(BadInputError, match=expected):
        detect_box(simulate=str(path))
    with pytest.raises(BadInputError, match="cannot read"):
        detect_box(simulate=str(tmp_path / "missing.json"))


def test_the_tui_simulates_the_engines_of_the_files_catalog_gpu(tmp_path: Path) -> None:
    from appliance.tui.services import simulated_services

    assert catalog_name(str(H200)) == "1xh200"
    services = simulated_services(str(H200), state_dir=tmp_path)
    box = services.detect_box()
    assert box.recording is not None
    assert box.driver_version == "580.159.04"
    unknown = json.loads(H200.read_text())
    unknown["gpus"][0]["name"] = "NVIDIA B300"
    path = tmp_path / "b300.json"
    path.write_text(json.dumps(unknown))
    with pytest.raises(BadInputError, match="one kind of catalog GPU"):
        simulated_services(str(path), state_dir=tmp_path)


# --- the commands --------------------------------------------------------------------------


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert_no_traceback(result)
    assert result.returncode == ExitCode.OK, result.stderr
    return result.stdout


def test_detect_recommend_plan_compose_and_status_take_a_file() -> None:
    old = str(DETECT / "h200-driver-550.json")
    assert "Engine image vllm/vllm-openai:v0.32.0-cu129" in _ok(
        appliance("detect", "--simulate", old)
    )
    assert _ok(appliance("recommend", "--simulate", str(H200), "--workload", "chat")).startswith(
        "h200 (1 x NVIDIA H200"
    )
    plan = json.loads(_ok(appliance("plan", str(PROFILE), "--simulate", old, "--json")))
    assert (plan["actions"][0]["action"], plan["actions"][0]["role"]) == ("create", "vllm")
    compose = _ok(appliance("compose", "export", str(PROFILE), "--simulate", old))
    assert "image: vllm/vllm-openai:v0.32.0-cu129" in compose
    assert "# vLLM image: driver 550.163.01 is older than CUDA 12.9 needs" in compose
    assert "SIMULATED" in _ok(appliance("status", "--simulate", str(H200)))


def test_export_k8s_says_which_build_and_why_in_a_comment(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    old = str(DETECT / "h200-driver-550.json")
    _ok(appliance("export", "k8s", str(PROFILE), "--simulate", old, "-o", str(out)))
    (deployment,) = out.glob("*-deployment-*-vllm.yaml")
    text = deployment.read_text()
    assert text.startswith("# vLLM image: vllm/vllm-openai:v0.32.0-cu129 (CUDA 12.9)")
    assert "minor-version compatibility" in text
    assert "image: vllm/vllm-openai:v0.32.0-cu129" in text


def test_plan_for_a_box_no_pinned_build_can_start_on_exits_3_with_the_upgrade(
    tmp_path: Path,
) -> None:
    result = appliance(
        "plan", "profiles/rtx4090-chat.yaml", "--simulate", str(geforce_file(tmp_path))
    )
    assert_no_traceback(result)
    assert result.returncode == ExitCode.ENVIRONMENT
    assert "570.195.03 is too old" in result.stderr
    assert "nvidia:580-server" in result.stderr


def test_forward_compatibility_sets_vllms_switch_and_tei_without_a_route_is_refused(
    tmp_path: Path,
) -> None:
    # R575 before CUDA 12.9 GA: only the CUDA 13.0 build admits branch 575 (cuda-compat, a
    # data-centre card); TEI's CUDA 12.9 build admits no 575 branch at all.
    document = json.loads(H200.read_text())
    document["driver_version"], document["cuda_driver_version"] = "575.40.01", "12.9"
    path = tmp_path / "h200-575-beta.json"
    path.write_text(json.dumps(document))
    box = detect_box(simulate=str(path))
    warning = box.finding(findings.TEI_DRIVER_TOO_OLD)
    assert warning is not None
    assert warning.severity == "warning"
    assert "spec.embeddings.device: cpu" in (warning.fix or "")
    profile = load_profile(PROFILE)
    choice = vllm_image_choice(profile, box)
    assert choice is not None
    assert (choice.image, choice.route) == ("vllm/vllm-openai:v0.32.0", "forward")
    without_tei = profile.model_copy(
        update={"spec": profile.spec.model_copy(update={"embeddings": None})}
    )
    (vllm,) = container_specs(without_tei, box)
    assert vllm.environment["VLLM_ENABLE_CUDA_COMPATIBILITY"] == "1"
    tei_on_gpu = load_profile(ROOT / "profiles" / "rtx4090-chat.yaml")
    assert tei_on_gpu.spec.embeddings is not None
    assert tei_on_gpu.spec.embeddings.device == "gpu"
    with pytest.raises(EnvironmentNotReadyError, match=r"pinned TEI 1\.9\.3 image"):
        container_specs(tei_on_gpu, box)
