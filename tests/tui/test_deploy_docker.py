"""A deploy from the TUI, for real: the private dockerd, the vLLM engine double, the weights
imported on the box, and the gateway's systemd unit written to a temporary systemd directory
(systemctl itself is a recording double: this machine has no systemd to restart units in).

The TUI and `appliance apply` deploy through one operation (`appliance.operations.deploy`), so
a deploy from either face ends with the same gateway unit installed (issue #15).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from textual.message import Message
from textual.pilot import Pilot

from appliance.gateway.service import UNIT_NAME, install_gateway_service
from appliance.hardware import detect_box
from appliance.operations.deploy import deploy_profile
from appliance.profile import load_profile
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.tui.app import ApplianceApp
from appliance.tui.messages import DeployFailed, DeployFinished, PlanComputed
from appliance.tui.screens.deploy import DeployScreen
from appliance.tui.services import Services, docker_deployer, docker_planner
from appliance.weights import import_weights
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.hub_double import safetensors_bytes

pytestmark = pytest.mark.docker

CHAT_REPO = "Qwen/Qwen2.5-7B-Instruct-AWQ"
NO_GPU = SpecOptions(gpu_requests=False)  # this machine has no GPU: the one test switch
DEADLINES = {"vllm": 120.0, "tei": 120.0}  # generous: a loaded machine must not flake


class RecordingSystemctl:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        return subprocess.CompletedProcess(list(args), 0, "", "")


def _profile_file(tmp_path: Path, doubles: EngineDoubleImages) -> Path:
    path = tmp_path / "tui-deploy.yaml"
    path.write_text(
        "# The box's profile, as the operator keeps it.\n"
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: tui-deploy}\n"
        "spec:\n"
        f"  model: {{repo: {CHAT_REPO}, quantization: awq, served_model_name: chat}}\n"
        "  engine: {max_model_len: 4096, max_num_seqs: 8}\n"
        f"  images: {{vllm: '{doubles.vllm['ok']}', tei: '{doubles.tei}'}}\n"
        f"  ports: {{vllm: {free_port()}, tei: {free_port()}, gateway: {free_port()}}}\n"
        f"  storage: {{models_dir: {tmp_path / 'models'}, state_dir: {tmp_path / 'state'}}}\n",
        encoding="utf-8",
    )
    return path


async def _until(pilot: Pilot[None], condition: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


def test_a_tui_deploy_installs_the_gateway_unit_and_monitors_the_profile(
    tmp_path: Path,
    docker_engine: PrivateDockerd,
    engine: DockerEngine,
    engine_doubles: EngineDoubleImages,
) -> None:
    path = _profile_file(tmp_path, engine_doubles)
    profile = load_profile(path)
    weights = tmp_path / "weights-from-usb"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    one_tensor = {"lm_head.weight": ("F32", (16,), b"\0" * 64)}
    (weights / "model.safetensors").write_bytes(safetensors_bytes(one_tensor))
    import_weights(weights, CHAT_REPO, "main", models_dir=tmp_path / "models")
    box = detect_box(simulate="rtx4090", models_dir=tmp_path / "models")
    systemd = tmp_path / "systemd"
    systemctl = RecordingSystemctl()

    def gateway(profile_text: str, state_dir: Path) -> object:
        return install_gateway_service(
            profile_text,
            state_dir,
            appliance_bin=Path("/opt/llm-appliance/bin/appliance"),
            systemd_dir=systemd,
            present=lambda: True,
            run=systemctl,
        )

    services = Services(
        detect_box=lambda: box,
        plan=docker_planner(docker_engine.base_url, options=NO_GPU),
        deploy=docker_deployer(
            docker_engine.base_url,
            options=NO_GPU,
            deadlines_s=DEADLINES,
            gateway=gateway,  # type: ignore[arg-type]
        ),
        profiles_dir=tmp_path,
        deployed_profile=path,
        profile=profile,
        docker_url=docker_engine.base_url,
    )
    seen: list[Message] = []

    async def go() -> None:
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            await _until(pilot, lambda: app.box is not None)
            await pilot.press("d")  # the profile given with --profile, planned at once
            screen = app.screen
            assert isinstance(screen, DeployScreen)
            await _until(pilot, lambda: screen.plan is not None)
            assert [(a.kind, a.role) for a in screen.plan.actions] == [("create", "vllm")]
            await pilot.press("a", "y")
            await _until(
                pilot, lambda: any(isinstance(m, DeployFinished | DeployFailed) for m in seen)
            )
            failed = [m.reason for m in seen if isinstance(m, DeployFailed)]
            assert not failed, failed
            await pilot.pause()
            shown = str(screen.query_one("#deploy-result").render())
            assert "gateway" in shown
            assert UNIT_NAME in shown
            # The Monitor now watches the deployed profile: vLLM answers on its port.
            assert app.services.monitor is not None
            await _until(
                pilot,
                lambda: (
                    app.snapshot is not None
                    and (vllm := app.snapshot.service("vllm")) is not None
                    and vllm.healthy
                    # and its container, as Docker reports it (the CLI's status reads the same)
                    and vllm.container_state == "running"
                ),
            )

    asyncio.run(go())
    assert sum(isinstance(m, PlanComputed) for m in seen) >= 1
    unit = (systemd / UNIT_NAME).read_text(encoding="utf-8")
    copy = tmp_path / "state" / "profile.yaml"
    assert f"gateway --profile {copy}" in unit
    # The unit runs the profile as the operator wrote it (comments and all).
    assert copy.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert systemctl.calls == [["daemon-reload"], ["enable", UNIT_NAME], ["restart", UNIT_NAME]]
    assert [c.role for c in engine.managed_containers()] == ["vllm"]

    # `appliance apply` runs the same operation: the same profile again changes nothing, and
    # the gateway is left alone.
    again = deploy_profile(
        profile, box, engine, source=path, options=NO_GPU, deadlines_s=DEADLINES, gateway=gateway
    )
    assert (again.applied, again.gateway, again.gateway_line()) == (False, None, None)
    assert len(systemctl.calls) == 3
    # On a box without systemd, the operator is told how to run the gateway of that file.
    path.write_text(path.read_text().replace("max_num_seqs: 8", "max_num_seqs: 4"))
    changed = deploy_profile(
        load_profile(path),
        box,
        engine,
        source=path,
        options=NO_GPU,
        deadlines_s=DEADLINES,
        gateway=lambda text, state_dir: None,
    )
    assert changed.applied
    assert changed.gateway_line() == (
        f"no systemd here: run the gateway yourself with `appliance gateway --profile {path}`"
    )
    assert changed.to_json()["gateway_note"] == changed.gateway_line()
