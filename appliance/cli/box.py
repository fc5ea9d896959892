"""`appliance detect` and `appliance validate`: what the box has, and whether profiles are sound."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    Commands,
)
from appliance.errors import ExitCode
from appliance.vocabulary import DEFAULT_MODELS_DIR


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


def _add_detect(commands: Commands) -> None:
    detect = commands.add_parser(
        "detect",
        help=COMMANDS["detect"].summary,
        description="Report the GPUs (NVML), host (CPU, RAM, disk) and Docker engine, with "
        "every problem and its fix.",
    )
    detect.add_argument(
        "--simulate",
        metavar="NAME|FILE",
        help="describe a simulated box instead, e.g. rtx4090, 2x4090, l40s, a100-80g, h100, or "
        "a file `appliance detect --json` wrote on the GPU box",
    )
    detect.add_argument("--json", action="store_true", help="print the report as JSON")
    detect.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when the box cannot serve (no GPU, no Docker, no NVIDIA toolkit)",
    )
    detect.add_argument(
        "--models-dir",
        type=opt.directory,
        default=DEFAULT_MODELS_DIR,
        help=f"where weights are stored, for the free-disk check (default {DEFAULT_MODELS_DIR})",
    )
    detect.set_defaults(handler=_cmd_detect)


def _add_validate(commands: Commands) -> None:
    validate = commands.add_parser(
        "validate",
        help=COMMANDS["validate"].summary,
        description="Check profile files; every problem is reported with file:line and a fix.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_cmd_validate)


def register(commands: Commands) -> None:
    _add_detect(commands)
    _add_validate(commands)
