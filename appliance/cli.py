"""`appliance …`: the headless face of llm-appliance.

Thin on purpose: parse arguments, call the core, print. Data goes to stdout (`--json` where it
makes sense), diagnostics to stderr, and the process exits with an `ExitCode`. Heavy libraries
(pydantic models, docker-py, pynvml, Textual) are imported inside the command that needs them,
so `appliance --help` starts fast over SSH; `tests/unit/test_imports.py` keeps it that way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from appliance import __version__
from appliance.errors import ApplianceError, BadInputError, ExitCode

DEFAULT_MODELS_DIR = Path("/var/lib/llm-appliance/models")

log = logging.getLogger("appliance")

Handler = Callable[[argparse.Namespace], ExitCode]


def state_dir() -> Path:
    """Where the appliance keeps its own logs and small state files for this user."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-appliance"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as `BadInputError` (exit 2) instead of exiting itself."""

    def error(self, message: str) -> NoReturn:
        raise BadInputError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


# ---------------------------------------------------------------------------------- commands


def _cmd_detect(args: argparse.Namespace) -> ExitCode:
    from appliance.hardware import detect_box, render_box

    box = detect_box(simulate=args.simulate, models_dir=args.models_dir)
    if args.json:
        print(box.model_dump_json(indent=2))
    else:
        print(render_box(box))
    if args.check:
        blockers = box.serving_blockers()
        if blockers:
            for finding in blockers:
                print(f"cannot serve: {finding.what}\n  → {finding.fix}", file=sys.stderr)
            return ExitCode.ENVIRONMENT
    return ExitCode.OK


def _cmd_validate(args: argparse.Namespace) -> ExitCode:
    from appliance.profile import ProfileError, load_profile

    status = ExitCode.OK
    for path in args.files:
        try:
            profile = load_profile(path)
        except ProfileError as error:
            print(error.render(), file=sys.stderr)
            status = ExitCode.BAD_INPUT
        else:
            print(f"{path}: ok ({profile.metadata.name})")
    return status


def _monitor_samplers(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The samplers, monitor config and clock for `status`: simulated, or a profile's services."""
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.status import profile_samplers, simulated

    if args.simulate:
        samplers, clock = simulated(args.simulate)
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
    """Container states and restart counts, when the Docker engine answers; else None."""
    from appliance.errors import EnvironmentNotReadyError
    from appliance.monitor.samplers import ContainersRuntimeSource
    from appliance.runtime.docker import DockerEngine

    try:
        return ContainersRuntimeSource(DockerEngine(timeout_s=3), profile_name)
    except EnvironmentNotReadyError as error:
        log.debug("no container states in status: %s", error.message)
        return None


def _cmd_status(args: argparse.Namespace) -> ExitCode:
    from appliance.monitor.render import render_status
    from appliance.monitor.status import check_status, sample_status, watch_status

    samplers, config, clock = _monitor_samplers(args)
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


def _cmd_scrape(args: argparse.Namespace) -> ExitCode:
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.render import render_status
    from appliance.monitor.status import url_samplers, watch_status

    def show(snapshot: Any, history: Any) -> None:
        print(snapshot.model_dump_json() if args.json else render_status(snapshot, history))
        sys.stdout.flush()

    watch_status(
        url_samplers(args.urls),
        show,
        count=args.count,
        config=MonitorConfig(interval_s=args.interval),
    )
    return ExitCode.OK


# ---------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="appliance",
        description="Turn one GPU box into a private, OpenAI-compatible LLM service.",
        epilog="Exit codes: 0 ok, 1 failed (rolled back), 2 bad input, "
        "3 environment not ready, 4 nothing fits / refused.",
    )
    parser.add_argument("--version", action="version", version=f"llm-appliance {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks of unexpected errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    detect = commands.add_parser(
        "detect",
        help="report the GPUs, host, Docker engine and container toolkit",
        description="Report the GPUs (NVML), host (CPU, RAM, disk) and Docker engine, with "
        "every problem and its fix.",
    )
    detect.add_argument(
        "--simulate",
        metavar="NAME",
        help="describe a simulated box instead, e.g. rtx4090, 2x4090, l40s, a100-80g, h100",
    )
    detect.add_argument("--json", action="store_true", help="print the report as JSON")
    detect.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when the box cannot serve (no GPU, no Docker, no NVIDIA toolkit)",
    )
    detect.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"where weights are stored, for the free-disk check (default {DEFAULT_MODELS_DIR})",
    )
    detect.set_defaults(handler=_cmd_detect)

    validate = commands.add_parser(
        "validate",
        help="check profile files",
        description="Check profile files; every problem is reported with file:line and a fix.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_cmd_validate)

    status = commands.add_parser(
        "status",
        help="health, GPU use, throughput, latency and alerts of the running services",
        description="Sample the profile's services (vLLM, TEI, gateway) and the GPUs: health, "
        "tokens/s, TTFT and inter-token latency p50/p95, KV-cache use, queue, alerts.",
    )
    status.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    status.add_argument("--simulate", metavar="NAME", help="show a simulated box's services")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 when any alert is active (for cron, CI)"
    )
    status.set_defaults(handler=_cmd_status)

    scrape = commands.add_parser(
        "scrape",
        help="watch any vLLM or TEI server by URL",
        description="Sample vLLM or TEI servers the appliance did not start, by base URL.",
    )
    scrape.add_argument("urls", nargs="+", metavar="URL")
    scrape.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    scrape.add_argument("--count", type=int, default=None, help="stop after N samples")
    scrape.add_argument("--json", action="store_true", help="one JSON snapshot per line")
    scrape.set_defaults(handler=_cmd_scrape)

    return parser


# ---------------------------------------------------------------------------------- main


def _log_unexpected(error: BaseException) -> Path | None:
    """Write the full traceback to the state directory; return where, or None if it can't."""
    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "appliance.log"
        with path.open("a", encoding="utf-8") as stream:
            stream.write(f"\n--- {dt.datetime.now(dt.UTC).isoformat()} {sys.argv!r}\n")
            stream.write("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def run(argv: Sequence[str] | None = None) -> ExitCode:
    """Run one command and return its exit code; never raises for a user's mistake."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:  # noqa: BLE001 - last line of defence; tracebacks are for --debug
        if debug:
            traceback.print_exception(error)
        else:
            where = _log_unexpected(error)
            trace = f"; full trace in {where}" if where else ""
            print(
                f"error: unexpected {type(error).__name__}: {error}{trace}\n"
                "  → run again with --debug to see it here, and report it",
                file=sys.stderr,
            )
        return ExitCode.FAILED


def main() -> None:
    sys.exit(run())
