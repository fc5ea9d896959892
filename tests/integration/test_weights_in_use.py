"""`appliance weights rm` against the private Docker engine: weights a running engine mounts
are refused whatever profiles were named (#13 item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from appliance.hardware import detect_box
from appliance.profile import parse_profile
from appliance.runtime.apply import apply_profile
from appliance.runtime.containers import down
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.weights import import_weights, list_weights
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.hub_double import tiny_model_files

pytestmark = pytest.mark.docker

APPLIANCE = str(Path(sys.executable).parent / "appliance")
REPO = "Qwen/Qwen2.5-7B-Instruct-AWQ"


def _rm(docker_engine: PrivateDockerd, models: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": docker_engine.base_url}
    return subprocess.run(
        [APPLIANCE, "weights", "rm", REPO, "--models-dir", str(models)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )


def test_weights_a_running_engine_mounts_are_not_removed(
    docker_engine: PrivateDockerd,
    engine: DockerEngine,
    engine_doubles: EngineDoubleImages,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    source = tmp_path / "src"
    source.mkdir()
    for name, data in tiny_model_files(weight_bytes=4096).items():
        (source / name).write_bytes(data)
    import_weights(source, REPO, models_dir=models)
    profile = parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: in-use}\nspec:\n"
        f"  model: {{repo: {REPO}, quantization: awq, served_model_name: chat}}\n"
        "  engine: {max_model_len: 4096}\n"
        f"  images: {{vllm: '{engine_doubles.vllm['ok']}'}}\n"
        f"  ports: {{vllm: {free_port()}, tei: {free_port()}, gateway: {free_port()}}}\n"
        f"  storage: {{models_dir: {models}, state_dir: {tmp_path / 'state'}}}\n",
        "in-use.yaml",
    )
    box = detect_box(simulate="rtx4090", models_dir=models)
    options = SpecOptions(gpu_requests=False)
    assert apply_profile(profile, box, engine, options=options, deadlines_s={"vllm": 120}).applied

    refused = _rm(docker_engine, models)
    assert refused.returncode == ExitCode.REFUSED, refused.stderr
    assert "llm-appliance-in-use-vllm" in refused.stderr  # which container holds them
    assert "Traceback" not in refused.stderr
    assert [w.repo for w in list_weights(models)] == [REPO]

    down(engine)
    removed = _rm(docker_engine, models)
    assert removed.returncode == ExitCode.OK, removed.stderr
    assert list_weights(models) == []
