"""How long `appliance --help` takes to start, against a bare `python -c pass` in the same run.

Issue #15's target: `appliance --help` within 3x the bare interpreter. Both are run `--runs` times
alternately (this machine is noisy); the medians and their ratio are printed. Bytecode caching is
on, as on an installed box (pip compiles on install; a dev shell may set PYTHONDONTWRITEBYTECODE),
and one warm-up run of each writes the caches first.

    .venv/bin/python bench/cli_startup.py --runs 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

APPLIANCE = Path(sys.executable).with_name("appliance")


ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def _once(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--command", default="--help", help="the appliance arguments to time (default --help)"
    )
    args = parser.parse_args()
    bare: list[float] = []
    cli: list[float] = []
    appliance = [str(APPLIANCE), *args.command.split()]
    _once([sys.executable, "-c", "pass"])
    _once(appliance)
    for _ in range(args.runs):
        bare.append(_once([sys.executable, "-c", "pass"]))
        cli.append(_once(appliance))
    base, measured = statistics.median(bare), statistics.median(cli)
    print(f"python -c pass        median {base * 1000:6.1f} ms")
    print(f"appliance {args.command:<11} median {measured * 1000:6.1f} ms")
    print(f"ratio {measured / base:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
