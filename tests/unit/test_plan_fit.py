"""`appliance plan` checks that the model fits, with the very check apply's preflight runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = str(Path(sys.executable).parent / "appliance")
# No Docker engine: a simulated box is planned against an empty box.
NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def appliance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPLIANCE, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **NO_DOCKER},
        timeout=120,
    )


def test_plan_refuses_a_70b_fp8_profile_on_one_4090_with_the_nearest_settings() -> None:
    result = appliance("plan", "profiles/h100-70b-fp8.yaml", "--simulate", "rtx4090")
    assert result.returncode == ExitCode.REFUSED, result.stdout + result.stderr
    assert "create" not in result.stdout  # no plan is shown for what cannot start
    assert "does not fit" in result.stderr
    assert "nearest settings that fit" in result.stderr
    assert "tensor_parallel_size" in result.stderr  # worded in the profile's terms
    assert "Traceback" not in result.stderr


def test_plan_json_refuses_too_and_prints_no_plan() -> None:
    result = appliance("plan", "profiles/h100-70b-fp8.yaml", "--simulate", "rtx4090", "--json")
    assert result.returncode == ExitCode.REFUSED
    assert result.stdout == ""


def test_plan_still_plans_a_profile_that_fits() -> None:
    result = appliance("plan", "profiles/h100-70b-fp8.yaml", "--simulate", "h100", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    assert {a["action"] for a in json.loads(result.stdout)["actions"]} == {"create"}


def test_the_tuis_plan_refuses_the_same_profile() -> None:
    """Both faces plan through `plan_profile`, so the TUI's Deploy screen refuses it too."""
    import pytest

    from appliance.errors import RefusedError
    from appliance.hardware import detect_box
    from appliance.operations.plan import plan_from_nothing as fresh_plan
    from appliance.profile import load_profile

    profile = load_profile(ROOT / "profiles" / "h100-70b-fp8.yaml")
    with pytest.raises(RefusedError, match="does not fit") as refused:
        fresh_plan(profile, detect_box(simulate="rtx4090"))
    assert refused.value.exit_code == ExitCode.REFUSED
    assert fresh_plan(profile, detect_box(simulate="h100")).actions
