"""What the monitor costs in CPU: the 1 Hz loop over two live engines and recorded GPUs.

Run from the repository root (about 30 s):

    .venv/bin/python bench/monitor_cost.py
    .venv/bin/python bench/monitor_cost.py --busy 15 --idle 5 --baseline 5

Setup: the vLLM and TEI engine doubles (tests/doubles) run as their own processes on 127.0.0.1;
the GPUs are NVML readings of a real two-RTX-4090 box replayed through the hardware probe
(tests/fixtures/nvml/2x4090.json). Traffic, when there is some, comes from a third process. None
of their CPU is counted: only this process's (`time.process_time()`: user + system, all threads).

Measured:
1. idle baseline: an asyncio loop waking once a second and doing nothing;
2. the monitor at 1 Hz while both engines serve steady traffic, so every scrape brings new
   counters and histograms (the worst case: nothing can be reused from the previous page);
3. the monitor at 1 Hz with the engines idle (pages unchanged, parsed families reused);
4. parsing one page from scratch: the vLLM double's, and a real vLLM 0.32 scrape (50 kB), whose
   larger page is what a real box adds on top of (2).
Each run's CPU minus the baseline's is the monitor's; target (issue 7): at most 2 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.hardware.nvml import RecordedNvml  # noqa: E402
from appliance.monitor.monitor import Monitor, MonitorConfig  # noqa: E402
from appliance.monitor.samplers import Endpoint, NvmlGpuSampler, http_samplers  # noqa: E402
from appliance.monitor.scrape import parse_metrics  # noqa: E402
from tests.doubles import local_engine_double, stop_process  # noqa: E402

NVML_FIXTURE = ROOT / "tests" / "fixtures" / "nvml" / "2x4090.json"
REAL_VLLM_PAGE = ROOT / "tests" / "fixtures" / "vllm-0.32-cpu-metrics.txt"
TARGET_PCT = 2.0
MAX_SECONDS = 28.0

# Runs in its own process: about 8 completions and 8 embeddings a second until killed.
TRAFFIC = """
import sys, time, httpx
vllm, tei = sys.argv[1], sys.argv[2]
with httpx.Client(timeout=10, trust_env=False) as client:
    n = 0
    while True:
        n += 1
        client.post(vllm + "/v1/completions",
                    json={"model": "tiny", "prompt": f"hello {n}", "max_tokens": 4})
        client.post(tei + "/embed", json={"inputs": f"text {n}"})
        time.sleep(0.12)
"""


def monitor_for(vllm_url: str, tei_url: str) -> Monitor:
    samplers = http_samplers(
        [Endpoint("vllm", "vllm", vllm_url), Endpoint("tei", "tei", tei_url)],
        gpus=NvmlGpuSampler(RecordedNvml.from_file(NVML_FIXTURE)),
    )
    return Monitor(samplers, config=MonitorConfig())


async def idle(seconds: float) -> float:
    start = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
    return time.process_time() - start


async def at_one_hertz(monitor: Monitor, seconds: float) -> tuple[float, int, float | None]:
    """CPU seconds over `seconds` of 1 Hz ticks; also the generation tokens/s last seen."""
    ticks, tokens = 0, None
    async with monitor:
        await monitor.tick()  # connections opened, windows started: steady state from here
        start = time.process_time()
        async for snapshot in monitor.run(round(seconds)):
            ticks += 1
            if not all(service.healthy for service in snapshot.services):
                raise SystemExit(f"an engine is down: {snapshot.services}")
            vllm = snapshot.service("vllm")
            tokens = None if vllm is None else vllm.generation_tokens_per_s
        return time.process_time() - start, ticks, tokens


def parse_ms(text: str, repeat: int = 50) -> float:
    start = time.process_time()
    for _ in range(repeat):
        parse_metrics(text)
    return (time.process_time() - start) / repeat * 1000


def pct(cpu_seconds: float, wall_seconds: float) -> float:
    return 100.0 * cpu_seconds / wall_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--busy", type=float, default=15.0, help="1 Hz run under traffic (s)")
    parser.add_argument("--idle", type=float, default=5.0, help="1 Hz run, engines idle (s)")
    parser.add_argument("--baseline", type=float, default=5.0, help="idle asyncio loop (s)")
    args = parser.parse_args()
    if args.busy + args.idle + args.baseline > MAX_SECONDS:
        raise SystemExit(f"keep --busy + --idle + --baseline within {MAX_SECONDS:g} s")

    with (
        local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as vllm_url,
        local_engine_double("tei", "--model-id", "BAAI/bge-small-en-v1.5") as tei_url,
    ):
        baseline = asyncio.run(idle(args.baseline))
        traffic = subprocess.Popen([sys.executable, "-c", TRAFFIC, vllm_url, tei_url])
        try:
            busy_cpu, busy_ticks, tokens = asyncio.run(
                at_one_hertz(monitor_for(vllm_url, tei_url), args.busy)
            )
        finally:
            stop_process(traffic)
        idle_cpu, idle_ticks, _ = asyncio.run(
            at_one_hertz(monitor_for(vllm_url, tei_url), args.idle)
        )
        double_page = httpx.get(f"{vllm_url}/metrics", timeout=5, trust_env=False).text
    real_page = REAL_VLLM_PAGE.read_text()

    base_pct = pct(baseline, args.baseline)
    print(
        "monitor cost: vLLM + TEI engine doubles on 127.0.0.1, "
        f"2 GPUs replayed from {NVML_FIXTURE.relative_to(ROOT)}"
    )
    print(
        f"  idle asyncio loop (baseline)  {baseline * 60 / args.baseline:6.3f} CPU s/min"
        f"  {base_pct:5.2f} % of one core"
    )
    for label, cpu, seconds, ticks in (
        ("monitor, engines busy", busy_cpu, args.busy, busy_ticks),
        ("monitor, engines idle", idle_cpu, args.idle, idle_ticks),
    ):
        net = pct(cpu, seconds) - base_pct
        verdict = "OK" if net <= TARGET_PCT else "OVER"
        print(
            f"  {label:<29} {(cpu / seconds - baseline / args.baseline) * 60:6.3f} CPU s/min"
            f"  {net:5.2f} % of one core net of baseline ({ticks} ticks in {seconds:g} s)"
            f"  target <= {TARGET_PCT:g} %: {verdict}"
        )
    print(f"  (generation seen while busy: {tokens or 0:.0f} tokens/s)")
    double_ms, real_ms = parse_ms(double_page), parse_ms(real_page)
    print(
        f"  one page parsed from scratch: vLLM double {len(double_page) // 1024} kB {double_ms:.2f}"
        f" ms; real vLLM 0.32 {len(real_page) // 1024} kB {real_ms:.2f} ms"
        f" (+{(real_ms - double_ms) / 10:.2f} % of one core at 1 Hz on a real box)"
    )


if __name__ == "__main__":
    main()
