"""Benchmark: a no-op `apply` against a no-op `docker-compose up -d` for the same stack.

Both run against a private dockerd with the engine doubles (vLLM + TEI stand-ins), with the
stack already up, so each run only has to find that nothing changed. The appliance is timed
twice: in-process (what the TUI pays) and as a fresh Python process (what `appliance apply`
from a shell pays, like `docker-compose`, which is a Python program too). Prints medians and
the ratio appliance / compose (target ≤ 1).

    .venv/bin/python -m bench.apply_noop [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.hardware import detect_box
from appliance.profile import parse_profile
from appliance.runtime.apply import apply_profile
from appliance.runtime.compose import compose_document, compose_text
from appliance.runtime.containers import down
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import weights_path
from tests.doubles import build_engine_doubles, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.images import ensure_python_base

NO_GPU = SpecOptions(gpu_requests=False)  # this machine has no GPU; the doubles need none

CHILD = """
import sys
from pathlib import Path
from appliance.hardware import detect_box
from appliance.profile import load_profile
from appliance.runtime.apply import apply_profile
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
profile = load_profile(Path(sys.argv[1]))
box = detect_box(simulate="rtx4090", models_dir=profile.spec.storage.models_dir)
engine = DockerEngine(sys.argv[2])
result = apply_profile(profile, box, engine, options=SpecOptions(gpu_requests=False))
assert not result.applied, result.plan.render()
"""


def _profile_text(root: Path, vllm: str, tei: str) -> str:
    return (
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: bench}\nspec:\n"
        "  model: {repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq, "
        "served_model_name: chat}\n"
        "  engine: {max_model_len: 4096, max_num_seqs: 32}\n"
        "  embeddings: {repo: BAAI/bge-m3, device: cpu}\n"
        f"  images: {{vllm: '{vllm}', tei: '{tei}'}}\n"
        f"  ports: {{vllm: {free_port()}, tei: {free_port()}, gateway: {free_port()}}}\n"
        f"  storage: {{models_dir: {root / 'models'}, state_dir: {root / 'state'}}}\n"
    )


def _time(runs: int, action: object) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    compose_tool = shutil.which("docker-compose")
    if compose_tool is None:
        sys.exit("needs Debian's docker-compose: apt-get install -y docker-compose")

    root = Path(tempfile.mkdtemp(prefix="bench-apply-", dir="/tmp"))
    daemon = PrivateDockerd(root / "d")
    daemon.start()
    try:
        client = daemon.client()
        doubles = build_engine_doubles(client, ensure_python_base(client), root / "build")
        for repo in ("Qwen/Qwen2.5-7B-Instruct-AWQ", "BAAI/bge-m3"):
            weights_path(root / "models", repo, "main").mkdir(parents=True)
        profile_path = root / "bench.yaml"
        profile_path.write_text(_profile_text(root, doubles.vllm["ok"], doubles.tei))
        profile = parse_profile(profile_path.read_text(), str(profile_path))
        box = detect_box(simulate="rtx4090", models_dir=root / "models")
        engine = DockerEngine(daemon.base_url)

        # The appliance: bring the stack up once, then time no-op applies.
        assert apply_profile(profile, box, engine, options=NO_GPU).applied

        def in_process() -> None:
            assert not apply_profile(profile, box, engine, options=NO_GPU).applied

        child = [sys.executable, "-c", CHILD, str(profile_path), daemon.base_url]

        def fresh_process() -> None:
            subprocess.run(child, check=True, cwd=Path(__file__).parents[1])

        appliance_in = _time(runs, in_process)
        appliance_proc = _time(runs, fresh_process)
        down(engine)

        # docker-compose: the exported file of the same profile, up once, then no-op ups.
        compose_file = root / "docker-compose.yaml"
        compose_file.write_text(
            compose_text(compose_document(profile, box, options=NO_GPU), profile, "bench")
        )
        env = {**os.environ, "DOCKER_HOST": daemon.base_url}
        up = [compose_tool, "-f", str(compose_file), "-p", "bench", "up", "-d"]
        subprocess.run(up, env=env, check=True, capture_output=True)

        def compose_noop() -> None:
            subprocess.run(up, env=env, check=True, capture_output=True)

        compose = _time(runs, compose_noop)
        subprocess.run(
            [compose_tool, "-f", str(compose_file), "-p", "bench", "down"],
            env=env,
            check=True,
            capture_output=True,
        )
        engine.close()
        client.close()
    finally:
        daemon.stop()
        # dockerd leaves its data root bind-mounted onto itself; unmount, then remove.
        subprocess.run(["umount", str(root / "d" / "data")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)

    def med(samples: list[float]) -> float:
        return statistics.median(samples) * 1000

    print(f"no-op runs: {runs} each, stack: vLLM + TEI doubles on a private dockerd")
    print(f"appliance apply, in-process     median {med(appliance_in):8.1f} ms")
    print(f"appliance apply, fresh process  median {med(appliance_proc):8.1f} ms")
    print(f"docker-compose up -d            median {med(compose):8.1f} ms")
    print(f"ratio in-process / compose      {med(appliance_in) / med(compose):.2f}")
    print(f"ratio fresh process / compose   {med(appliance_proc) / med(compose):.2f}")


if __name__ == "__main__":
    main()
