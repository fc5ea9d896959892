"""`appliance status` and `appliance scrape`: the monitor's figures, once or live."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    Commands,
)
from appliance.errors import BadInputError, ExitCode


def _monitor_samplers(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The samplers, monitor config and clock for `status`: simulated, or a profile's services."""
    from appliance.monitor.monitor import MonitorConfig
    from appliance.operations.status import profile_samplers, simulated

    if args.simulate:
        from appliance.hardware.simulate import catalog_name

        samplers, clock = simulated(catalog_name(args.simulate))
        return samplers, MonitorConfig(), clock
    if args.profile is None:
        raise BadInputError(
            "status needs the profile that was applied (or --simulate NAME)",
            hint="appliance status profiles/my-box.yaml",
        )
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    return (
        profile_samplers(profile, runtime=_runtime_source(profile.metadata.name)),
        (MonitorConfig.from_profile(profile)),
        None,
    )


def _runtime_source(profile_name: str) -> Any:
    """Container states and restart counts from the Docker engine, as the TUI's Monitor gets
    them (a tick where the engine does not answer shows none)."""
    from appliance.operations.status import DockerRuntime

    return DockerRuntime(profile_name)


def _cmd_status(args: argparse.Namespace) -> ExitCode:
    if args.profile is None and not args.simulate:
        if args.watch or args.check:
            raise BadInputError(
                "--watch and --check need the profile (its ports and alert thresholds)",
                hint="appliance status PROFILE --watch",
            )
        from appliance.cli.runtime import container_status

        return container_status(args)
    from appliance.monitor.render import render_status
    from appliance.operations.status import check_status, sample_status, watch_status

    samplers, config, clock = _monitor_samplers(args)
    if args.watch and not sys.stdout.isatty():
        # Into a file or a pipe: one frame per interval, as `scrape` prints, not a live redraw.
        watch_status(samplers, _frame_printer(args.json), config=config, clock=clock)
        return ExitCode.OK
    if args.watch:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(stderr=False)
        with Live(console=console, auto_refresh=False, screen=False) as live:

            def redraw(snapshot: Any, history: Any) -> None:
                live.update(Text(render_status(snapshot, history)), refresh=True)

            watch_status(samplers, redraw, config=config, clock=clock)
        return ExitCode.OK
    if args.check:
        snapshot = check_status(samplers, config=config, clock=clock)
    else:
        snapshot = sample_status(samplers, config=config, clock=clock)
    print(snapshot.model_dump_json(indent=2) if args.json else render_status(snapshot))
    return ExitCode.OK


def _frame_printer(as_json: bool) -> Callable[[Any, Any], None]:
    """A monitor callback that prints each snapshot as it comes: a frame, or a JSON line."""
    from appliance.monitor.render import render_status

    def show(snapshot: Any, history: Any) -> None:
        print(snapshot.model_dump_json() if as_json else render_status(snapshot, history))
        sys.stdout.flush()

    return show


def _cmd_scrape(args: argparse.Namespace) -> ExitCode:
    from appliance.monitor.monitor import MonitorConfig
    from appliance.operations.status import url_samplers, watch_status

    watch_status(
        url_samplers(args.urls),
        _frame_printer(args.json),
        count=args.count,
        config=MonitorConfig.for_interval(args.interval),
    )
    return ExitCode.OK


def _add_status(commands: Commands) -> None:
    status = commands.add_parser(
        "status",
        help=COMMANDS["status"].summary,
        description="Sample the profile's services (vLLM, TEI, gateway) and the GPUs: health, "
        "tokens/s, TTFT and inter-token latency p50/p95, KV-cache use, queue, alerts.",
    )
    status.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    status.add_argument("--simulate", metavar="NAME|FILE", help="show a simulated box's services")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 when any alert is active (for cron, CI)"
    )
    status.set_defaults(handler=_cmd_status)


def _add_scrape(commands: Commands) -> None:
    scrape = commands.add_parser(
        "scrape",
        help=COMMANDS["scrape"].summary,
        description="Sample vLLM or TEI servers the appliance did not start, by base URL.",
    )
    scrape.add_argument("urls", nargs="+", metavar="URL")
    scrape.add_argument(
        "--interval", type=opt.interval_seconds, default=1.0, help="seconds between samples"
    )
    scrape.add_argument("--count", type=opt.positive_int, default=None, help="stop after N samples")
    scrape.add_argument("--json", action="store_true", help="one JSON snapshot per line")
    scrape.set_defaults(handler=_cmd_scrape)


def register(commands: Commands) -> None:
    _add_status(commands)
    _add_scrape(commands)
