"""`appliance tune` for real (#18 point 3): the CLI in its own process, applying each point
through apply on the private Docker engine, benchmarking it through a real gateway, on the
vLLM double's "batching" image (a TEST DOUBLE whose speed varies with --max-num-seqs: see
DOUBLE_BATCH_STEP_S in tests/doubles/engine_double.py; it also refuses to start above 16).

Request counts are bounded; nothing asserts a time. The one figure that depends on speed is
which points met the ITL limit of 400 ms, and the test holds only to what load cannot
change: one sequence (20 + 50 = 70 ms a token in the double) meets it, eight (20 + 8 x 50 =
420 ms) never can, and the row stops at its first miss wherever that falls between.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.errors import ExitCode
from appliance.hardware import detect_box
from appliance.profile import load_profile
from appliance.runtime.apply import apply_profile, plan_profile
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.weights import import_weights
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.gateway_process import create_key, running_gateway
from tests.support.hub_double import tiny_model_files

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = SpecOptions(gpu_requests=False)
REPO = "Qwen/Qwen2.5-7B-Instruct-AWQ"
# Every point measured at the same load: 8 users, 16 short requests.
LOAD = ("--concurrency", "8", "--requests", "12", "--input-len", "16", "--output-len", "8",
        "--slo-itl", "400", "--slo-ttft", "60", "--max-num-batched-tokens", "4096",
        "--kv-cache-dtype", "auto")  # fmt: skip
ORDER = [1, 2, 4, 8, 16]


@dataclass
class Box:
    root: Path
    profile: Path
    docker: PrivateDockerd
    key: str
    vllm_port: int

    def tune(self, *args: str) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "DOCKER_HOST": self.docker.base_url,
            "HOME": str(self.root),
            "APPLIANCE_API_KEY": self.key,
        }
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.appliance_no_gpu", "tune", str(self.profile),
             *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def _profile_text(root: Path, image: str, vllm_port: int, gateway_port: int) -> str:
    return (
        "# The team's box: this comment must survive a tune.\n"
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: tune-test}\nspec:\n"
        f"  model: {{repo: {REPO}, quantization: awq, served_model_name: chat}}\n"
        "  engine:\n"
        "    max_model_len: 4096  # the longest prompt\n"
        "    max_num_seqs: 2\n"
        "  embeddings: {enabled: false}\n"
        f"  images: {{vllm: '{image}'}}\n"
        f"  ports: {{vllm: {vllm_port}, tei: {free_port()}, gateway: {gateway_port}}}\n"
        "  gateway: {host: 127.0.0.1}\n"
        f"  storage: {{models_dir: {root / 'models'}, state_dir: {root / 'state'}}}\n"
    )


@pytest.fixture
def box(
    tmp_path: Path,
    engine: DockerEngine,
    engine_doubles: EngineDoubleImages,
    docker_engine: PrivateDockerd,
) -> Iterator[Box]:
    source = tmp_path / "src"
    source.mkdir()
    for name, data in tiny_model_files(weight_bytes=4096).items():
        (source / name).write_bytes(data)
    import_weights(source, REPO, models_dir=tmp_path / "models")
    vllm_port, gateway_port = _quiet_port(), free_port()
    path = tmp_path / "tune-test.yaml"
    path.write_text(_profile_text(tmp_path, engine_doubles.vllm["batching"], vllm_port,
                                  gateway_port))  # fmt: skip
    apply_profile(
        load_profile(path), _detected(tmp_path), engine, options=NO_GPU,
        deadlines_s={"vllm": 120.0},
    )  # fmt: skip
    key = create_key(path)
    with running_gateway(path, f"http://127.0.0.1:{gateway_port}"):
        yield Box(tmp_path, path, docker_engine, key, vllm_port)


def _quiet_port() -> int:
    """A free port below the kernel's ephemeral range. Between two points the engine's port is
    free for a moment; on a machine where other test sessions take ephemeral ports (`free_port`)
    for their own engine doubles, one of those could take it, and the gateway would reach a
    stranger's engine (seen: "Valid aliases: tiny")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for candidate in random.Random().sample(range(max(1024, low - 8000), low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", candidate))
            except OSError:
                continue
            return candidate
    return free_port()


def _detected(root: Path) -> object:
    return detect_box(models_dir=root / "models")


def _runs_the_original(box: Box, engine: DockerEngine, original: str) -> None:
    assert box.profile.read_text() == original
    plan = plan_profile(load_profile(box.profile), _detected(box.root), engine, options=NO_GPU)  # type: ignore[arg-type]
    assert plan.is_noop, plan.render()
    answer = httpx.get(f"http://127.0.0.1:{box.vllm_port}/health", timeout=5)
    assert answer.status_code == 200


def test_dry_run_lists_the_points_and_changes_nothing(box: Box, engine: DockerEngine) -> None:
    original = box.profile.read_text()
    cli = box.tune("--dry-run", "--max-num-seqs", "1,2,4,8", *LOAD)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == ExitCode.OK, err
    assert "4 points fit" in out
    assert "max_num_seqs 8, max_num_batched_tokens 4096, kv_cache_dtype auto" in out
    _runs_the_original(box, engine, original)


def test_a_tune_writes_the_winner_with_provenance_and_leaves_it_running(
    box: Box, engine: DockerEngine
) -> None:
    cli = box.tune("--yes", "--json", "--max-num-seqs", "1,2,4,8,16", "--points", "6", *LOAD)
    out, err = cli.communicate(timeout=540)
    assert cli.returncode == ExitCode.OK, err
    assert box.key not in out + err
    result = json.loads(out)
    seqs = [m["max_num_seqs"] for m in result["measured"]]
    assert seqs == ORDER[: len(seqs)]  # fewest sequences first
    met = [m["met_slo"] for m in result["measured"]]
    assert met[0]  # 70 ms a token against 400
    # The row stops at its first miss: exactly one, the last measured; 8 always misses.
    assert met == [True] * (len(met) - 1) + [False]
    assert seqs[-1] <= 8
    assert result["not_measured_early_stop"] == [
        f"max_num_seqs {n}, max_num_batched_tokens 4096, kv_cache_dtype auto"
        for n in ORDER[len(seqs) :]
    ]
    for point in result["measured"]:
        assert point["level"]["completed"] == 12
        assert Path(point["bench_file"]).is_file()  # kept like any bench run
    winner = result["winner"]
    assert winner["met_slo"]
    assert winner["max_num_seqs"] in seqs[:-1]
    assert result["written"]
    text = box.profile.read_text()
    assert "# The team's box: this comment must survive a tune." in text
    assert "# the longest prompt" in text
    assert "# --- appliance tune ---" in text
    assert f"Bench result: {winner['bench_file']}" in text
    tuned = load_profile(box.profile).spec.engine
    assert tuned.max_num_seqs == winner["max_num_seqs"]
    assert tuned.max_num_batched_tokens == 4096
    # The box runs exactly the written profile.
    plan = plan_profile(load_profile(box.profile), _detected(box.root), engine, options=NO_GPU)  # type: ignore[arg-type]
    assert plan.is_noop, plan.render()


def _wait_for_line(cli: subprocess.Popen[str], prefix: str) -> list[str]:
    seen = []
    assert cli.stderr is not None
    for _ in range(200):  # bounded: the tune prints a few lines per point
        line = cli.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"never saw {prefix!r}: {seen}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_an_interrupted_tune_puts_the_original_profile_and_engine_back(
    box: Box, engine: DockerEngine, signum: signal.Signals
) -> None:
    original = box.profile.read_text()
    cli = box.tune("--yes", "--max-num-seqs", "1,4,8", *LOAD)
    _wait_for_line(cli, "point 2:")  # the first point measured; the second one starting
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=300)
    assert cli.returncode == ExitCode.INTERRUPTED, err
    assert "put back" in err
    assert "Traceback" not in err
    _runs_the_original(box, engine, original)


def test_a_point_whose_engine_does_not_start_puts_the_original_back(
    box: Box, engine: DockerEngine
) -> None:
    original = box.profile.read_text()
    # 1 runs; 32 is refused by the double on start (as vLLM refuses a config): apply rolls
    # back to 1, then the tune puts the original (2) back.
    cli = box.tune("--yes", "--max-num-seqs", "1,32", *LOAD)
    _, err = cli.communicate(timeout=540)
    assert cli.returncode == ExitCode.FAILED, err
    assert "max_num_seqs 32" in err
    assert "Traceback" not in err
    _runs_the_original(box, engine, original)


def test_a_refused_key_is_one_line_before_any_engine_changes(
    box: Box, engine: DockerEngine
) -> None:
    original = box.profile.read_text()
    before = {c.id for c in engine.managed_containers()}
    box.key = "sk-appl-000000000000-nope"
    cli = box.tune("--yes", "--max-num-seqs", "1,4", *LOAD)
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == ExitCode.BAD_INPUT, err
    assert "refused the API key" in err
    assert "point 1" not in err
    assert "sk-appl-000000000000-nope" not in err
    assert {c.id for c in engine.managed_containers()} == before  # nothing restarted
    _runs_the_original(box, engine, original)
