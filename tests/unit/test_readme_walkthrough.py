"""The README's headless walkthrough, run as written on a simulated box (#16 item 2).

The commands come from README.md itself, between the `walkthrough` markers, so the test and the
README cannot drift. Only the gateway's port is substituted (a free one), and the commands run
in a scratch directory, as on a fresh clone; the one thing faked is the GPU (`--simulate`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.doubles import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        r"<!-- walkthrough:start -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", text, re.S
    )
    assert found, "README.md lost its walkthrough markers"
    return found.group(1)


def test_the_walkthrough_reaches_a_key_a_fallback_in_auto_and_a_cost_figure(
    tmp_path: Path,
) -> None:
    script = walkthrough()
    assert "8080" in script
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENAI_API_KEY", "LLM_APPLIANCE_PROFILE")
    }
    env.update(PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", HOME=str(tmp_path))
    # The harness's one addition: a failed step must not leave the gateway holding the pipes.
    harness = "trap 'jobs -p | xargs -r kill' EXIT\n"
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", harness + script.replace("8080", str(port))],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so a failure leaves no gateway behind
    )
    try:
        out, err = shell.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
    assert shell.returncode == 0, err
    assert "Traceback" not in err

    profile = (tmp_path / "box.yaml").read_text(encoding="utf-8")
    assert "api_key_env: OPENAI_API_KEY" in profile
    assert "sk-your-key" not in profile  # the key is named, never written
    health, models = (json.loads(line) for line in out.splitlines() if line.startswith("{"))
    assert health["fallback_mode"] == "auto"
    assert health["remote_configured"] is True
    served = yaml.safe_load(profile)["spec"]["model"]["served_model_name"]
    assert served in [m["id"] for m in models["data"]]  # the key works at the gateway
    keys = json.loads((tmp_path / "state" / "gateway" / "keys.json").read_text())
    assert "alice" in json.dumps(keys)
    assert "break-even" in out
    assert re.search(r"box\s+\$2\.60/h", out), out
