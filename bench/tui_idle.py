"""CPU the TUI costs while it sits on the Monitor screen with 1 Hz updates (headless).

The app runs as an operator leaves it: `--simulate BOX`'s services (the core's simulated engines
and GPUs on the real clock, one tick a second), the Monitor screen in front, a 120x40 terminal,
Textual's headless driver. It measures this process's CPU time (all threads: the monitor's NVML
thread calls included) over the wall time, after a warm-up. Target: at most 5 % of one core. It
prints figures; it asserts nothing.

    .venv/bin/python bench/tui_idle.py [--seconds 60] [--box l40s]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from appliance.tui.app import ApplianceApp
from appliance.tui.services import simulated_services


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(box: str, seconds: float, warmup: float) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as state:
        services = simulated_services(box, state_dir=Path(state), profiles_dir=Path(state))
        app = ApplianceApp(services=services)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("m")
            await asyncio.sleep(warmup)
            first_tick = app.snapshot.tick if app.snapshot else 0
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, wall1 = cpu_seconds(), time.monotonic()
            ticks = (app.snapshot.tick if app.snapshot else 0) - first_tick
            await pilot.press("q")
    return cpu1 - cpu0, wall1 - wall0, ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--box", default="l40s")
    args = parser.parse_args()
    cpu, wall, ticks = asyncio.run(measure(args.box, args.seconds, args.warmup))
    print(f"Monitor screen, simulated {args.box}, 120x40 headless, {wall:.1f} s, {ticks} ticks")
    print(f"CPU {cpu:.2f} s = {100 * cpu / wall:.1f} % of one core (target <= 5 %)")
    print(f"    {1000 * cpu / max(1, ticks):.1f} ms of CPU per tick (sample + redraw)")


if __name__ == "__main__":
    main()
