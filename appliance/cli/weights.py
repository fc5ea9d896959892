"""`appliance weights …`: pull, import, list and remove model weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    ByteProgress,
    Commands,
    Parser,
    cancellable,
    load_profiles,
)
from appliance.errors import ApplianceError, ExitCode
from appliance.vocabulary import DEFAULT_MODELS_DIR


def _import_error(error: OSError, source: Path, models_dir: Path) -> ApplianceError:
    """An OS error during `weights import` as one line: a full disk, or a file it may not use.

    The import copies into a staging directory that it removes on any failure, so nothing half
    copied is left behind; the message says so.
    """
    import errno

    from appliance.errors import EnvironmentNotReadyError

    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentNotReadyError(
            f"the disk under {models_dir} filled up while importing {source}{where}; "
            "what was copied so far is removed",
            hint="free some space (appliance weights list / rm) or use a larger --models-dir",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return EnvironmentNotReadyError(
            f"cannot import {source}: permission denied{where}",
            hint=f"run as a user that can read {source} and write {models_dir} (e.g. with sudo)",
        )
    return EnvironmentNotReadyError(
        f"cannot import {source}: {error.strerror or error}{where}",
        hint=f"check {source} and the disk under {models_dir}, then import again",
    )


def _cmd_weights(args: argparse.Namespace) -> ExitCode:
    from appliance import weights

    models_dir: Path = args.models_dir_given or DEFAULT_MODELS_DIR
    if args.action == "list":
        installed = weights.list_weights(models_dir, load_profiles(args.profiles))
        if args.json:
            print(json.dumps([item.to_json() for item in installed], indent=2))
        else:
            for item in installed:
                used = f"  used by {', '.join(item.used_by)}" if item.used_by else ""
                size = item.size_bytes / 2**30
                print(f"{item.repo}@{item.revision}  {item.sha[:12]}  {size:.2f} GiB{used}")
            if not installed:
                print(f"no weights under {models_dir}", file=sys.stderr)
        return ExitCode.OK
    if args.action == "rm":
        removed = weights.remove_weights(
            models_dir, args.repo, load_profiles(args.profiles), mounted_by=_running_mounts()
        )
        for item in removed:
            print(f"removed {item.repo}@{item.revision} ({item.sha[:12]})")
        return ExitCode.OK
    if args.action == "import":
        repo, revision = weights.parse_repo_ref(args.as_repo)
        try:
            with ByteProgress() as progress:
                installed = cancellable(
                    lambda cancel: weights.import_weights(
                        args.path, repo, revision, models_dir=models_dir,
                        on_progress=progress, cancel=cancel,
                    )
                )  # fmt: skip
        except OSError as error:
            raise _import_error(error, args.path, models_dir) from None
        print(f"{installed.repo}@{installed.revision} -> {installed.path}")
        return ExitCode.OK
    token = weights.resolve_token(args.token_file)
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") or target.is_file():
        from appliance.profile import load_profile

        profile = load_profile(target)
        with ByteProgress() as progress:
            pulled = cancellable(
                lambda cancel: weights.pull_profile(
                    profile, models_dir=args.models_dir_given, token=token,
                    on_progress=progress, cancel=cancel,
                )
            )  # fmt: skip
    else:
        with ByteProgress() as progress:
            pulled = [
                cancellable(
                    lambda cancel: weights.pull_weights(
                        args.target, args.revision or "main", models_dir=models_dir,
                        token=token, on_progress=progress, cancel=cancel,
                    )
                )
            ]  # fmt: skip
    for item in pulled:
        print(f"{item.repo}@{item.revision} ({item.sha[:12]}) -> {item.path}")
    return ExitCode.OK


def _running_mounts() -> tuple[tuple[str, str], ...]:
    """What the running engines mount, so `weights rm` spares it; () when Docker is not up."""
    from appliance.errors import EnvironmentNotReadyError
    from appliance.operations.containers import mounted_weights

    try:
        return mounted_weights()
    except EnvironmentNotReadyError as error:
        print(f"note: {error.message}; not checking what containers mount", file=sys.stderr)
        return ()


def _add_weights(commands: Commands) -> None:
    weights = commands.add_parser(
        "weights",
        help=COMMANDS["weights"].summary,
        description="Model weights on this box: pulled from the Hugging Face Hub with a "
        "preflight, byte progress and resume, or imported from a directory or tarball.",
    )
    actions = weights.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--models-dir",
            type=opt.directory,
            default=None,
            dest="models_dir_given",
            metavar="DIR",
            help=f"where weights live (default: the profile's, else {DEFAULT_MODELS_DIR})",
        )

    pull = actions.add_parser("pull", help="download a profile's weights, or one repo")
    pull.add_argument("target", metavar="PROFILE|REPO")
    pull.add_argument("--revision", metavar="R", help="branch, tag or commit (default main)")
    pull.add_argument(
        "--token-file", type=Path, metavar="FILE", help="a 0600 file holding a Hub token"
    )
    common(pull)
    listing = actions.add_parser("list", help="weights on this box, and which profile uses them")
    listing.add_argument("--json", action="store_true")
    listing.add_argument(
        "--profile", dest="profiles", type=Path, action="append", default=[], metavar="FILE"
    )
    common(listing)
    remove = actions.add_parser("rm", help="delete a repo's weights (refused while in use)")
    remove.add_argument("repo", metavar="REPO")
    remove.add_argument(
        "--profile", dest="profiles", type=Path, action="append", default=[], metavar="FILE"
    )
    common(remove)
    imported = actions.add_parser("import", help="import weights for an air-gapped box")
    imported.add_argument("path", type=Path, metavar="PATH", help="a directory or a tarball")
    imported.add_argument("--as", dest="as_repo", required=True, metavar="REPO[@REVISION]")
    common(imported)
    weights.set_defaults(handler=_cmd_weights)


def register(commands: Commands) -> None:
    _add_weights(commands)
