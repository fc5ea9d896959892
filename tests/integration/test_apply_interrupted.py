"""An apply interrupted half-way must never lose the engine that ran before (#13 item 14).

`appliance apply` runs as a real process against the private Docker engine; the new vLLM is the
double that never turns healthy, so the apply is always caught waiting for it. SIGHUP (an SSH
session that drops) and SIGTERM must roll back like Ctrl-C. After a SIGKILL nothing can roll
back: the next apply must recognise the set-aside container as the last good one, restore it
when the new one is not healthy, and never remove it as "an extra copy".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.errors import ExitCode
from appliance.hardware import detect_box
from appliance.profile import Profile, load_profile
from appliance.runtime.apply import ApplyFailedError, apply_profile
from appliance.runtime.docker import DockerEngine
from appliance.runtime.model import ObservedContainer
from appliance.runtime.specs import SpecOptions
from appliance.weights import import_weights
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.hub_double import tiny_model_files

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = SpecOptions(gpu_requests=False)
REPO = "Qwen/Qwen2.5-7B-Instruct-AWQ"
VLLM = "llm-appliance-interrupted-vllm"


@dataclass
class Box:
    root: Path
    port: int
    doubles: EngineDoubleImages
    docker: PrivateDockerd

    def profile(self, fault: str) -> Path:
        path = self.root / f"{fault}.yaml"
        path.write_text(
            "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: interrupted}\nspec:\n"
            f"  model: {{repo: {REPO}, quantization: awq, served_model_name: chat}}\n"
            "  engine: {max_model_len: 4096}\n"
            f"  images: {{vllm: '{self.doubles.vllm[fault]}'}}\n"
            f"  ports: {{vllm: {self.port}, tei: {free_port()}, gateway: {free_port()}}}\n"
            f"  storage: {{models_dir: {self.root / 'models'}, state_dir: {self.root / 'state'}}}\n"
        )
        return path

    def apply(self, engine: DockerEngine, fault: str, **deadlines: float) -> object:
        profile: Profile = load_profile(self.profile(fault))
        box = detect_box(simulate="rtx4090", models_dir=self.root / "models")
        return apply_profile(
            profile, box, engine, options=NO_GPU, deadlines_s={"vllm": 120.0, **deadlines}
        )

    def start_cli_apply(self, fault: str) -> subprocess.Popen[str]:
        env = {**os.environ, "DOCKER_HOST": self.docker.base_url, "HOME": str(self.root)}
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.appliance_no_gpu", "apply",
             str(self.profile(fault)), "--yes"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


@pytest.fixture
def box(tmp_path: Path, engine_doubles: EngineDoubleImages, docker_engine: PrivateDockerd) -> Box:
    source = tmp_path / "src"
    source.mkdir()
    for name, data in tiny_model_files(weight_bytes=4096).items():
        (source / name).write_bytes(data)
    import_weights(source, REPO, models_dir=tmp_path / "models")
    return Box(tmp_path, free_port(), engine_doubles, docker_engine)


def _vllm(engine: DockerEngine) -> list[ObservedContainer]:
    return [c for c in engine.managed_containers() if c.role == "vllm"]


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for_the_new_engine(engine: DockerEngine, box: Box, cli: subprocess.Popen[str]) -> None:
    """Until the CLI has set the good vLLM aside and started the never-healthy one."""
    never = box.doubles.vllm["never-healthy"]
    for _ in range(600):  # bounded: 0.2 s steps, a minute at most on a loaded machine
        assert cli.poll() is None, cli.communicate()
        if any(c.name == VLLM and c.image == never and c.state == "running" for c in _vllm(engine)):
            return
        time.sleep(0.2)
    raise AssertionError("the CLI never started the new vLLM")


@pytest.mark.parametrize(
    "signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name
)
def test_sighup_sigterm_and_ctrl_c_roll_back_alike(
    engine: DockerEngine, box: Box, signum: signal.Signals
) -> None:
    box.apply(engine, "ok")
    [good] = _vllm(engine)
    assert _healthy(box.port)

    cli = box.start_cli_apply("never-healthy")
    _wait_for_the_new_engine(engine, box, cli)
    cli.send_signal(signum)
    _, stderr = cli.communicate(timeout=300)

    assert cli.returncode == ExitCode.INTERRUPTED, stderr
    assert f"interrupted: {signum.name}" in stderr
    assert "previous containers run again" in stderr
    assert "Traceback" not in stderr
    [after] = _vllm(engine)
    assert (after.id, after.name, after.state) == (good.id, VLLM, "running")
    assert _healthy(box.port)
    assert not box.apply(engine, "ok").applied  # type: ignore[attr-defined]  # nothing to redo


def test_after_sigkill_the_next_apply_restores_the_set_aside_engine(
    engine: DockerEngine, box: Box
) -> None:
    box.apply(engine, "ok")
    [good] = _vllm(engine)

    cli = box.start_cli_apply("never-healthy")
    _wait_for_the_new_engine(engine, box, cli)
    cli.send_signal(signal.SIGKILL)
    cli.communicate(timeout=60)
    names = sorted(c.name for c in _vllm(engine))
    assert names == [VLLM, f"{VLLM}-previous-{good.id[:12]}"], names  # the state SIGKILL left

    # The same never-healthy profile again: the new engine is not healthy, so the set-aside one
    # is the last good; it must come back, never be removed as "an extra copy".
    with pytest.raises(ApplyFailedError, match="previous containers run again"):
        box.apply(engine, "never-healthy", vllm=3.0)
    [after] = _vllm(engine)
    assert (after.id, after.name, after.state) == (good.id, VLLM, "running")
    assert _healthy(box.port)

    # And once more with SIGKILL, then the good profile: back to exactly what ran, no change.
    cli = box.start_cli_apply("never-healthy")
    _wait_for_the_new_engine(engine, box, cli)
    cli.send_signal(signal.SIGKILL)
    cli.communicate(timeout=60)
    assert not box.apply(engine, "ok").applied  # type: ignore[attr-defined]
    [after] = _vllm(engine)
    assert (after.id, after.name, after.state) == (good.id, VLLM, "running")
    assert _healthy(box.port)
