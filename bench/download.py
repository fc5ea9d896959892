"""Download throughput: the appliance's pull against huggingface_hub's own download, same server.

Run from the repository root:

    .venv/bin/python bench/download.py                              # 4 x 64 MiB, no cap (~30 s)
    .venv/bin/python bench/download.py --scenario one-file --rate-mib 32 --rounds 1
    .venv/bin/python bench/download.py --scenario repo --rate-mib 32 --rounds 1

Setup: the Hub double (tests/support/hub_double.py) runs in its own process on 127.0.0.1 and
serves one repo of safetensors shards, held in its memory (nothing on disk but the downloads,
deleted after each run), plus config and tokenizer files. Scenarios: `shards` (`--shards` x
`--shard-mib`), `one-file` (one 2 GiB file), `repo` (16 files of 64 MiB). `--rate-mib N` caps
each connection at N MiB/s, as a CDN caps each stream: the case where parallel streams matter.
Each measurement is a fresh process with an empty target directory:

1. (with `--in-process`) the download calls alone: huggingface_hub's `snapshot_download` (what
   `hf download` runs, 8 worker threads) against `appliance.weights.pull_weights`;
2. the two commands an operator types, end to end with their start-up: `hf download` and
   `appliance weights pull` (preflight, HEADs, parallel chunks, SHA-256, manifest).

Runs alternate so that page-cache and CPU-frequency drift hit both; the best round of each counts.
"ratio" = appliance throughput / hf download throughput; target (issue 14, part 5): ≥ 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
HF = str(Path(sys.executable).parent / "hf")
APPLIANCE = str(Path(sys.executable).parent / "appliance")
REPO = "bench-org/bench-model"
TARGET_RATIO = 1.0
SCENARIOS = {"one-file": (1, 2048), "repo": (16, 64)}
CLI_INCLUDE = ("--include", "*.safetensors", "--include", "*.json")

SERVER = """
import sys, time, hashlib
sys.path.insert(0, sys.argv[1])
from tests.support.hub_double import HubDouble, safetensors_bytes, tiny_model_files
shards, shard_bytes, rate = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
files = {k: v for k, v in tiny_model_files(weight_bytes=4096).items() if k != "model.safetensors"}
block = hashlib.sha256(b"bench").digest() * 4096  # 128 KiB; shard sizes are whole MiB
for i in range(shards):
    raw = block * (shard_bytes // len(block))
    name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    files[name] = safetensors_bytes({f"layer{i}.weight": ("U8", (shard_bytes,), raw)})
    del raw
hub = HubDouble(page_size=1000, rate_bytes_per_second=rate or None)
repo = hub.add_repo(sys.argv[4], files)
for name in files:
    repo.digests(name)  # hashed once, before any timing
with hub.running():
    kept = sum(len(v) for k, v in files.items() if k.endswith((".safetensors", ".json")))
    print(hub.url, kept, flush=True)
    while True:
        time.sleep(3600)
"""

MEASURE_HUB = """
import sys, time
from huggingface_hub import snapshot_download
from appliance.weights import ALLOW_PATTERNS, IGNORE_PATTERNS
start = time.perf_counter()
snapshot_download(sys.argv[1], local_dir=sys.argv[2], endpoint=sys.argv[3],
                  allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS))
print(time.perf_counter() - start)
"""

MEASURE_APPLIANCE = """
import sys, time
from pathlib import Path
from appliance.weights import pull_weights
reports = []
start = time.perf_counter()
pull_weights(sys.argv[1], models_dir=Path(sys.argv[2]), endpoint=sys.argv[3],
             on_progress=reports.append)
print(time.perf_counter() - start)
print(len(reports), file=sys.stderr)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    env.update(
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN="",
        PYTHONPATH=str(ROOT),
    )
    return env


def _timed(code: str, url: str, target: Path) -> float:
    out = subprocess.run(
        [PYTHON, "-c", code, REPO, str(target), url],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
        cwd=ROOT,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _cli(url: str, target: Path, *, appliance: bool = False) -> float:
    """One command end to end, start-up included: `hf download` or `appliance weights pull`."""
    env = _env() | {"HF_ENDPOINT": url}
    argv = (
        [APPLIANCE, "weights", "pull", REPO, "--models-dir", str(target)]
        if appliance
        else [HF, "download", REPO, "--local-dir", str(target), *CLI_INCLUDE]
    )
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"{argv[0]} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", choices=["shards", *SCENARIOS], default="shards")
    parser.add_argument("--rate-mib", type=int, default=0, help="cap per connection, MiB/s")
    parser.add_argument("--in-process", action="store_true", help="also time the calls alone")
    args = parser.parse_args()
    shards, shard_mib = SCENARIOS.get(args.scenario, (args.shards, args.shard_mib))

    server = subprocess.Popen(
        [
            PYTHON,
            "-c",
            SERVER,
            str(ROOT),
            str(shards),
            str(shard_mib << 20),
            REPO,
            str(args.rate_mib << 20),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url, total = server.stdout.readline().split()
        size = int(total)
        work = Path(tempfile.mkdtemp(prefix="bench-download-"))
        hub_times: list[float] = []
        appliance_times: list[float] = []
        cli_times: list[float] = []
        for round_no in range(args.rounds if args.in_process else 0):
            order = ("hub", "appliance") if round_no % 2 == 0 else ("appliance", "hub")
            for who in order:
                target = work / f"{who}-{round_no}"
                if who == "hub":
                    hub_times.append(_timed(MEASURE_HUB, url, target))
                else:
                    appliance_times.append(_timed(MEASURE_APPLIANCE, url, target))
                shutil.rmtree(target, ignore_errors=True)
        appliance_cli_times: list[float] = []
        for round_no in range(args.rounds):
            for appliance in (False, True) if round_no % 2 == 0 else (True, False):
                target = work / f"cli-{appliance}-{round_no}"
                (appliance_cli_times if appliance else cli_times).append(
                    _cli(url, target, appliance=appliance)
                )
                shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(timeout=10)

    cli_ratio = min(cli_times) / min(appliance_cli_times)
    result: dict[str, object] = {
        "scenario": f"{args.scenario}: {shards} x {shard_mib} MiB",
        "rate_cap_mib_s_per_connection": args.rate_mib or None,
        "bytes": size,
        "rounds": args.rounds,
    }
    if args.in_process:
        hub_rate = size / min(hub_times) / 2**20
        appliance_rate = size / min(appliance_times) / 2**20
        result |= {
            "huggingface_hub_snapshot_download_mib_s": round(hub_rate, 1),
            "appliance_pull_mib_s": round(appliance_rate, 1),
            "ratio_in_process": round(appliance_rate / hub_rate, 3),
        }
    result |= {
        # The baseline: the two commands an operator would type, start-up included.
        "hf_download_cli_mib_s": round(size / min(cli_times) / 2**20, 1),
        "appliance_weights_pull_cli_mib_s": round(size / min(appliance_cli_times) / 2**20, 1),
        "ratio": round(cli_ratio, 3),
        "target": TARGET_RATIO,
        "ok": cli_ratio >= TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))
    return 0 if cli_ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
