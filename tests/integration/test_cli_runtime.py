"""`appliance plan / apply / status / down / logs` as a user runs them, on the private engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from tests.support.dockerd import PrivateDockerd

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = str(Path(sys.executable).parent / "appliance")
PROFILE = str(ROOT / "profiles" / "rtx4090-chat.yaml")


@pytest.fixture
def run(docker_engine: PrivateDockerd, tmp_path: Path):
    def appliance(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": docker_engine.base_url, "HOME": str(tmp_path)}
        return subprocess.run(
            [APPLIANCE, *args], capture_output=True, text=True, check=False, env=env, timeout=300
        )

    return appliance


def test_status_plan_and_a_refused_apply_change_nothing(run) -> None:
    status = run("status", "--json")
    assert status.returncode == ExitCode.OK, status.stderr
    before = json.loads(status.stdout)

    plan = run("plan", PROFILE, "--simulate", "rtx4090", "--json")
    assert plan.returncode == ExitCode.OK, plan.stderr
    assert {a["action"] for a in json.loads(plan.stdout)["actions"]} == {"create"}

    # This engine has no NVIDIA runtime: apply must refuse before it changes anything.
    apply = run("apply", PROFILE, "--yes")
    assert apply.returncode in (ExitCode.ENVIRONMENT, ExitCode.REFUSED), apply.stderr
    assert "Traceback" not in apply.stderr
    assert json.loads(run("status", "--json").stdout) == before

    assert run("down").returncode == ExitCode.OK
    logs = run("logs", "vllm")
    assert logs.returncode != ExitCode.OK
    assert "Traceback" not in logs.stderr
