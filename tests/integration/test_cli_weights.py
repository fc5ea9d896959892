"""`appliance weights pull` as an admin runs it, against a Hub double on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.errors import ExitCode
from tests.support.hub_double import HubDouble, tiny_model_files

APPLIANCE = str(Path(sys.executable).parent / "appliance")


def _appliance(hub: HubDouble, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "COLUMNS": "120"}
    env.pop("HF_TOKEN", None)
    return subprocess.run(
        [APPLIANCE, *args], capture_output=True, text=True, check=False, env=env, timeout=300
    )


def test_pull_shows_byte_progress_then_is_a_no_op_and_is_listed(tmp_path: Path) -> None:
    hub = HubDouble()
    repo = hub.add_repo("tiny-org/tiny-model", tiny_model_files())
    models = str(tmp_path / "models")
    with hub.running():
        first = _appliance(hub, "weights", "pull", "tiny-org/tiny-model", "--models-dir", models)
        assert first.returncode == ExitCode.OK, first.stderr
        assert "tiny-org/tiny-model" in first.stderr
        assert "MB" in first.stderr or "kB" in first.stderr  # bytes, not just a file count
        downloads = len(hub.requests_for("model.safetensors"))

        second = _appliance(hub, "weights", "pull", "tiny-org/tiny-model", "--models-dir", models)
        assert second.returncode == ExitCode.OK, second.stderr
        assert len(hub.requests_for("model.safetensors")) == downloads  # nothing fetched again

        missing = _appliance(hub, "weights", "pull", "tiny-org/absent", "--models-dir", models)
        assert missing.returncode == ExitCode.BAD_INPUT
        assert "Traceback" not in missing.stderr

    listed = json.loads(_appliance(hub, "weights", "list", "--json", "--models-dir", models).stdout)
    assert [(w["repo"], w["sha"]) for w in listed] == [("tiny-org/tiny-model", repo.sha)]
