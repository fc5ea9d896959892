"""`llm-appliance`: the admin's terminal app (Textual).

Textual is imported only inside `main()`, so importing `appliance.tui` (or the CLI) stays cheap
and never pulls the UI in (`tests/unit/test_imports.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError, ExitCode

if TYPE_CHECKING:
    from appliance.tui.services import Services


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-appliance",
        description="Open the llm-appliance terminal app on this GPU box.",
    )
    parser.add_argument(
        "--simulate",
        metavar="NAME|FILE",
        help="run on a simulated box (rtx4090, 2x4090, l40s, a100-80g, h100, …, or a file "
        "`appliance detect --json` wrote on the GPU box): nothing on this machine is probed or "
        "changed",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="the profile that was applied: the Monitor, fallback and keys watch its services "
        "(default: $LLM_APPLIANCE_PROFILE, else the copy `appliance apply` keeps)",
    )
    parser.add_argument(
        "--profiles-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where Recommend saves profiles (default: the current directory)",
    )
    return parser


def services_for(args: argparse.Namespace) -> Services:
    """What the app works on: a simulated box, or this machine and the profile applied here
    (`--profile`, else the one `appliance apply` keeps: the app then opens on its Monitor)."""
    from appliance.operations.applied import applied_profile_path
    from appliance.tui.services import live_services, simulated_services

    if args.simulate:  # the profile to simulate, if any: nothing of this machine is read
        return simulated_services(
            args.simulate, profile_path=args.profile, profiles_dir=args.profiles_dir
        )
    return live_services(applied_profile_path(args.profile), profiles_dir=args.profiles_dir)


NO_TERMINAL = (
    "error: llm-appliance is an interactive app and needs a terminal (stdin and stdout are not "
    "one here); from scripts and cron use the `appliance` commands instead, e.g. "
    "`appliance status PROFILE --check` or `appliance apply PROFILE` (see `appliance --help`)"
)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        services = services_for(args)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        sys.exit(error.exit_code)
    # Without a terminal Textual would write escape codes into a log and spin on a dead input:
    # refuse before any screen starts (bad arguments above are still named first).
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(NO_TERMINAL, file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)

    from appliance.tui.app import ApplianceApp

    ApplianceApp(services=services).run()
    sys.exit(ExitCode.OK)
