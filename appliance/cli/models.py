"""`appliance models PROFILE [ACTION MODEL]`: the switched chat models (spec.switching) as the
running gateway reports them, and an admin's pin, unpin, sleep and wake.

A thin face over `operations.models.ModelControl`, which the TUI's n/p/z/u keys use too; the
gateway does the engine calls, with the admin key it reads itself.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Final

from appliance.cli import options as opt
from appliance.cli.base import COMMANDS, Commands
from appliance.errors import ExitCode

# operations.models.ACTIONS, written out so that building the parser imports no httpx
# (tests/unit/test_cli_models.py keeps the two equal).
ACTIONS: Final = ("pin", "unpin", "sleep", "wake")


def report_lines(report: dict[str, Any]) -> list[str]:
    """The gateway's report of its switched models as a table, then one summary line."""
    models: dict[str, dict[str, Any]] = report["models"]
    pinned = report.get("pinned")
    width = max((len(name) for name in models), default=5) + 2
    lines = [f"{'MODEL':<{width}}{'STATE':<11}{'IN FLIGHT':>9}{'HELD':>6}"]
    for name, shown in models.items():
        mark = "  pinned" if name == pinned else ""
        lines.append(
            f"{name:<{width}}{shown.get('state', '?'):<11}"
            f"{shown.get('in_flight', 0):>9}{shown.get('held', 0):>6}{mark}"
        )
    summary = f"{report.get('switches', 0)} switches"
    last = report.get("last_switch")
    if isinstance(last, dict):
        summary += f"; last to {last.get('model')} in {float(last.get('seconds', 0.0)):.2f} s"
    refused = {reason: n for reason, n in (report.get("refused") or {}).items() if n}
    if refused:
        summary += "; refused " + ", ".join(f"{n} {reason}" for reason, n in refused.items())
    return [*lines, summary]


def _cmd_models(args: argparse.Namespace) -> ExitCode:
    from appliance.errors import BadInputError
    from appliance.operations.models import ModelControl
    from appliance.profile import load_profile

    if args.action is not None and args.model is None:
        raise BadInputError(
            f"appliance models: {args.action} needs a MODEL",
            hint=f"appliance models PROFILE {args.action} MODEL",
        )
    control = ModelControl.of(load_profile(args.profile))
    if args.action is None:
        report = control.report()
        print(json.dumps(report, indent=2) if args.json else "\n".join(report_lines(report)))
        return ExitCode.OK
    report = control.carry_out(args.model, args.action)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.action} {args.model}: done")
        print("\n".join(report_lines(report)))
    return ExitCode.OK


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "models",
        help=COMMANDS["models"].summary,
        description="Without an action: each switched chat model's state (awake, asleep-1, "
        "asleep-2, waking), its requests in flight and held, the pinned one and the switches, "
        "as the running gateway reports them. pin MODEL wakes it and keeps it awake (requests "
        "for the others get 503, or the remote API in auto, until unpin); sleep MODEL puts it "
        "to sleep once its requests finish; wake MODEL makes it the awake one now. Needs the "
        "gateway's admin key (gateway.admin_key_env, gateway.admin_key_file or "
        "<state_dir>/gateway/admin.key).",
        epilog="examples:\n  appliance models profile.yaml\n"
        "  appliance models profile.yaml pin qwen2.5-coder-7b\n"
        "  appliance models profile.yaml unpin qwen2.5-coder-7b --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("profile", type=opt.input_file, metavar="PROFILE")
    parser.add_argument("action", nargs="?", choices=ACTIONS, metavar="{" + ",".join(ACTIONS) + "}")
    parser.add_argument("model", nargs="?", metavar="MODEL", help="a served model name")
    parser.add_argument("--json", action="store_true", help="print the gateway's report as JSON")
    parser.set_defaults(handler=_cmd_models)
