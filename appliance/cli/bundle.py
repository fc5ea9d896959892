"""`appliance bundle create | load | inspect`: air-gap bundles (issue #20)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from appliance.cli import options as opt
from appliance.cli.base import COMMANDS, ByteProgress, Commands
from appliance.errors import ExitCode


def _sha256_hex(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(
            f"'{text[:80]}' is not a SHA-256 digest (64 hex digits, as bundle create prints)"
        )
    return text.strip().lower()


def register(commands: Commands) -> None:
    group = commands.add_parser("bundle", help=COMMANDS["bundle"].summary)
    actions = group.add_subparsers(dest="action", metavar="ACTION", parser_class=type(group))
    actions.required = True

    create = actions.add_parser(
        "create",
        help="write one file with the profile, its engine images, weights and the appliance",
    )
    create.add_argument(
        "profile", metavar="PROFILE", type=opt.input_file, help="the profile the box will run"
    )
    create.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        type=opt.output_file,
        help="the bundle to write (a .part file until it is complete)",
    )
    create.add_argument(
        "--simulate",
        metavar="NAME|FILE",
        help="the target box (rtx4090, 2xh100, … or a detect --json file from it); "
        "default: this machine",
    )
    wheels = create.add_mutually_exclusive_group()
    wheels.add_argument(
        "--wheels",
        metavar="DIR",
        type=opt.directory,
        help="take the appliance's wheels from DIR (pip wheel llm-appliance -w DIR)",
    )
    wheels.add_argument("--no-wheels", action="store_true", help="leave the appliance's wheels out")
    create.add_argument("--json", action="store_true", help="print the manifest as JSON")
    create.set_defaults(bundle_action=_cmd_create)

    load = actions.add_parser(
        "load", help="verify a bundle, then load its images, weights and profile on this box"
    )
    load.add_argument("file", metavar="FILE", type=opt.input_file, help="the bundle")
    load.add_argument(
        "--expect-sha256",
        metavar="HEX",
        type=_sha256_hex,
        help="the digest bundle create printed; anything else is refused",
    )
    load.add_argument(
        "--models-dir",
        metavar="DIR",
        type=opt.directory,
        help="import weights here (default: the profile's storage.models_dir)",
    )
    load.add_argument(
        "--profiles-dir",
        metavar="DIR",
        type=opt.directory,
        default=Path.cwd(),
        help="where the profile is installed (default: the current directory)",
    )
    load.add_argument(
        "--simulate",
        metavar="NAME|FILE",
        help="check the bundle against this box description instead of probing this machine",
    )
    load.add_argument("--json", action="store_true", help="print what was loaded as JSON")
    load.set_defaults(bundle_action=_cmd_load)

    inspect = actions.add_parser("inspect", help="list what is inside a bundle and its target")
    inspect.add_argument("file", metavar="FILE", type=opt.input_file, help="the bundle")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(bundle_action=_cmd_inspect)
    group.set_defaults(handler=_cmd_bundle)


def _cmd_bundle(args: argparse.Namespace) -> ExitCode:
    result: ExitCode = args.bundle_action(args)
    return result


class _Bytes(ByteProgress):
    """Byte progress on stderr: one bar over the whole bundle, notes above it."""

    def __init__(self) -> None:
        super().__init__(transient=not sys.stderr.isatty())
        self._done = 0
        self._size: int | None = None

    def total(self, size: int) -> None:
        self._size = size
        self.update("bundle", 0, size, "bundle")

    def __call__(self, n: int) -> None:  # bytes since the last call
        self._done += n
        self.update("bundle", self._done, self._size, "bundle")

    def stop(self) -> None:
        self.__exit__()


def _cmd_create(args: argparse.Namespace) -> ExitCode:
    from appliance.bundle.create import build_wheels, plan_bundle, wheels_in
    from appliance.hardware import detect_box
    from appliance.operations.bundle import create
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    box = detect_box(simulate=args.simulate, models_dir=profile.spec.storage.models_dir)
    plan_bundle(profile, box)  # missing weights or a driver no image runs on: before Docker
    wheels: Any = (
        None if args.no_wheels else (wheels_in(args.wheels) if args.wheels else build_wheels)
    )
    progress = _Bytes()
    try:
        manifest = create(
            args.profile,
            box,
            args.output,
            wheels=wheels,
            progress=progress,
            on_total=progress.total,
            note=progress.note,
        )
    finally:
        progress.stop()
    if args.json:
        print(manifest.to_json(), end="")
    else:
        size = args.output.stat().st_size
        print(f"wrote {args.output} ({size:,} bytes, {len(manifest.members)} members)")
        print(f"sha256 {manifest.entries_sha256}")
        print(
            f"load it with: appliance bundle load {args.output.name} --expect-sha256 "
            f"{manifest.entries_sha256}"
        )
    return ExitCode.OK


def _cmd_load(args: argparse.Namespace) -> ExitCode:
    from appliance.bundle.stream import read_manifest
    from appliance.hardware import detect_box
    from appliance.operations.bundle import load

    read_manifest(args.file)  # a file that is no bundle is refused before Docker is asked
    box = detect_box(simulate=args.simulate)
    progress = _Bytes()
    try:
        result = load(
            args.file,
            box,
            profiles_dir=args.profiles_dir,
            models_dir=args.models_dir.resolve() if args.models_dir else None,
            expect_sha256=args.expect_sha256,
            progress=progress,
            on_total=progress.total,
            note=progress.note,
        )
    finally:
        progress.stop()
    summary = {
        "sha256": result.manifest.entries_sha256,
        "profile": str(result.profile_path),
        "images_loaded": result.images_loaded,
        "images_present": result.images_present,
        "weights_imported": result.weights_imported,
        "weights_present": result.weights_present,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle {result.manifest.entries_sha256} verified and loaded")
        for image in result.images_loaded:
            print(f"  image   {image} loaded")
        for image in result.images_present:
            print(f"  image   {image} already here")
        for weights in result.weights_imported:
            print(f"  weights {weights} imported")
        for weights in result.weights_present:
            print(f"  weights {weights} already here")
        print(f"  profile {result.profile_path}")
        print(f"next: appliance apply {result.profile_path}")
    return ExitCode.OK


def _cmd_inspect(args: argparse.Namespace) -> ExitCode:
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
    purpose = {
        "profile": "installed last by bundle load",
        "image": "docker load",
        "weights": "imported into the models dir",
        "wheel": "install.sh --offline",
    }
    for m in manifest.members:
        print(f"  {m.kind:8} {m.size:>14,} B  {m.path}  {m.version}  ({purpose[m.kind]})")
    return ExitCode.OK
