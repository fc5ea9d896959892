"""`llm-appliance`: the admin's terminal app (Textual).

Textual is imported only inside `main()`, so importing `appliance.tui` (or the CLI) stays cheap
and never pulls the UI in (`tests/unit/test_imports.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.errors import ApplianceError, ExitCode


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
        help="the profile that was applied: the Monitor, fallback and keys watch its services",
    )
    parser.add_argument(
        "--profiles-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where Recommend saves profiles (default: the current directory)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from appliance.tui.services import live_services, simulated_services

    try:
        if args.simulate:
            services = simulated_services(args.simulate, profiles_dir=args.profiles_dir)
        else:
            services = live_services(args.profile, profiles_dir=args.profiles_dir)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        sys.exit(error.exit_code)

    from appliance.tui.app import ApplianceApp

    ApplianceApp(services=services).run()
    sys.exit(ExitCode.OK)
