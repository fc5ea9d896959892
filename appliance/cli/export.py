"""`appliance export`: Prometheus scrape config, Grafana dashboard, Kubernetes manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    Commands,
)
from appliance.errors import BadInputError, ExitCode


def _cmd_export(args: argparse.Namespace) -> ExitCode:
    from appliance.profile import load_profile

    if args.output is not None:  # a directory for k8s, a file for the others
        convert = opt.output_dir if args.target == "k8s" else opt.output_file
        try:
            args.output = convert(args.output)
        except argparse.ArgumentTypeError as error:
            raise BadInputError(
                f"-o/--output: {error}", hint="see `appliance export --help`"
            ) from None

    if args.target == "grafana":
        from appliance.exports.grafana import grafana_export

        text = grafana_export(output=args.output)
    elif args.target == "prometheus":
        from appliance.exports.prometheus import prometheus_export

        profile = load_profile(args.profile) if args.profile is not None else None
        text = prometheus_export(profile, output=args.output)
    else:
        from appliance.exports.k8s import box_for_export, k8s_export

        if args.profile is None or args.output is None:
            raise BadInputError(
                "export k8s needs a profile and an output directory",
                hint="appliance export k8s profiles/h100-70b-fp8.yaml -o k8s/",
            )
        profile = load_profile(args.profile)
        written = k8s_export(
            profile, box_for_export(profile, args.simulate), args.output, fmt=args.format
        )
        for path in written:
            print(path)
        return ExitCode.OK
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.output}", file=sys.stderr)
    return ExitCode.OK


def _add_export(commands: Commands) -> None:
    export = commands.add_parser(
        "export",
        help=COMMANDS["export"].summary,
        description="prometheus: a scrape config for vLLM, TEI, the gateway and DCGM; grafana: "
        "a dashboard; k8s: the profile as Kubernetes manifests (or production-stack values).",
    )
    export.add_argument("target", choices=["prometheus", "grafana", "k8s"])
    export.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    export.add_argument("-o", "--output", metavar="PATH", help="file (dir for k8s)")
    export.add_argument("--format", choices=["manifests", "production-stack"], default="manifests")
    export.add_argument(
        "--simulate", metavar="NAME|FILE", help="the nodes' GPUs and driver, or a detect file"
    )
    export.set_defaults(handler=_cmd_export)


def register(commands: Commands) -> None:
    _add_export(commands)
