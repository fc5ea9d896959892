"""`appliance bundle …`: air-gap bundles (issue #20). Only `inspect` so far."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance import cli_options as opt
from appliance.errors import ExitCode


def add_bundle_parser(commands: Any) -> None:
    group = commands.add_parser("bundle", help="air-gap bundles: inspect what a bundle holds")
    actions = group.add_subparsers(dest="action", metavar="ACTION", parser_class=type(group))
    actions.required = True
    inspect = actions.add_parser("inspect", help="list what is inside a bundle and its target")
    inspect.add_argument("file", metavar="FILE", type=opt.input_file)
    inspect.add_argument("--json", action="store_true")
    group.set_defaults(handler=_cmd_bundle)


def _cmd_bundle(args: argparse.Namespace) -> ExitCode:
    from appliance.bundle.stream import read_manifest

    manifest = read_manifest(args.file)
    if args.json:
        data = json.loads(manifest.to_json())
        print(json.dumps(data, indent=2))
        return ExitCode.OK
    t = manifest.target
    print(f"appliance {manifest.appliance_version} bundle, digest {manifest.entries_sha256}")
    print(
        f"target: {t.driver} compute capability {t.compute_capability or '-'}, "
        f"python {t.python}, {t.platform}"
    )
    for m in manifest.members:
        print(f"  {m.kind:8} {m.size:>14,} B  {m.path}  {m.version}")
    return ExitCode.OK
