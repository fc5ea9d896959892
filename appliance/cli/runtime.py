"""`appliance plan | apply | down | logs | compose`: the containers of a profile."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    ByteProgress,
    Commands,
    Parser,
)
from appliance.errors import BadInputError, ExitCode


def _box_for(args: argparse.Namespace, profile: Any) -> Any:
    from appliance.hardware import detect_box

    return detect_box(
        simulate=getattr(args, "simulate", None), models_dir=profile.spec.storage.models_dir
    )


def _cmd_plan(args: argparse.Namespace) -> ExitCode:
    from appliance.operations.plan import plan
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    # Refuses (exit 4) what vLLM would refuse on the box, with the nearest settings that fit.
    planned = plan(profile, _box_for(args, profile), simulated=bool(args.simulate))
    if planned.note is not None:
        print(f"note: {planned.note}", file=sys.stderr)
    text = planned.plan.render()
    print(json.dumps(planned.plan.to_json(), indent=2) if args.json else text)
    return ExitCode.OK


def _cmd_apply(args: argparse.Namespace) -> ExitCode:
    from appliance.operations.deploy import deploy_profile
    from appliance.profile import load_profile
    from appliance.runtime.apply import ApplyEvent
    from appliance.runtime.plan import Plan

    profile = load_profile(args.profile)
    box = _box_for(args, profile)

    progress = ByteProgress()

    def show(event: ApplyEvent) -> None:
        if event.pull is not None:
            pull = event.pull
            progress.update(pull.image, pull.downloaded_bytes, pull.total_bytes, "pull")
        else:
            role = f"[{event.role}] " if event.role else ""
            progress.note(f"{event.step}: {role}{event.message}")

    def confirm(plan: Plan) -> bool:
        print(plan.render(), file=sys.stderr)
        if plan.is_noop or args.yes or not sys.stdin.isatty():
            return True
        answer = input("Apply these changes? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    with progress:
        result = deploy_profile(
            profile,
            box,
            source=args.profile,
            confirm=confirm,
            progress=show,
            weights_progress=progress,
        )
    gateway = result.gateway_line()
    if gateway is not None and (result.gateway is None or result.gateway.changed):
        print(gateway, file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif not result.applied:
        print("nothing applied", file=sys.stderr)
    return ExitCode.OK


def _cmd_down(args: argparse.Namespace) -> ExitCode:
    from appliance.operations.containers import take_down

    profile = None
    if args.purge_weights:
        if args.profile is None:
            raise BadInputError(
                "--purge-weights needs the profile whose weights to remove",
                hint="appliance down PROFILE --purge-weights",
            )
        from appliance.profile import load_profile

        profile = load_profile(args.profile)
    removed = take_down()
    for container in removed:
        print(f"removed {container.name} ({container.role})")
    if profile is not None:
        from appliance import weights

        for ref in weights.profile_weights(profile):
            for item in weights.remove_weights(profile.spec.storage.models_dir, ref.repo):
                print(f"removed weights {item.repo}@{item.revision}")
    return ExitCode.OK


def _cmd_logs(args: argparse.Namespace) -> ExitCode:
    from appliance.operations.containers import follow_service_logs, service_logs

    if not args.follow:
        sys.stdout.write(service_logs(args.service, tail=args.tail))
        return ExitCode.OK
    stop = threading.Event()
    lines = follow_service_logs(args.service, stop, tail=args.tail)
    try:
        for line in lines:
            print(line, flush=True)
    except KeyboardInterrupt:
        stop.set()
    finally:
        lines.close()  # closes the engine
    return ExitCode.OK


def _cmd_compose(args: argparse.Namespace) -> ExitCode:
    from appliance.profile import load_profile
    from appliance.runtime.compose import compose_export

    profile = load_profile(args.profile)
    text = compose_export(
        profile, _box_for(args, profile), box_name=args.simulate, output=args.output
    )
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.output}", file=sys.stderr)
    return ExitCode.OK


def container_status(args: argparse.Namespace) -> ExitCode:
    """`appliance status` without a profile: the managed containers, found by their labels."""
    from appliance.operations.containers import service_status

    services = service_status()
    if args.json:
        print(json.dumps([service.to_json() for service in services], indent=2))
        return ExitCode.OK
    if not services:
        print("no llm-appliance containers on this box (appliance apply PROFILE starts them)")
    for service in services:
        ready = {True: "ready", False: "NOT READY", None: "-"}[service.ready]
        ports = ", ".join(f"127.0.0.1:{h}" for h in service.host_ports.values())
        print(
            f"{service.role:8} {service.name:32} {service.state:10} {ready:10} "
            f"restarts {service.restart_count}  {ports}  ({service.profile})"
        )
    return ExitCode.OK


def _add_runtime(commands: Commands) -> None:
    plan = commands.add_parser(
        "plan",
        help=COMMANDS["plan"].summary,
        description="Compare the profile with the running containers (found by label) and say "
        "what apply would do, with the fields that changed. Changes nothing.",
    )
    plan.add_argument("profile", type=Path, metavar="PROFILE")
    plan.add_argument(
        "--simulate", metavar="NAME|FILE", help="plan for a simulated box or a detect file"
    )
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=_cmd_plan)

    apply = commands.add_parser(
        "apply",
        help=COMMANDS["apply"].summary,
        description="Download the weights, pull images, create the engines, wait until healthy. "
        "A second run with the "
        "same file changes nothing; on failure what ran before is restored (exit 1).",
    )
    apply.add_argument("profile", type=Path, metavar="PROFILE")
    apply.add_argument("-y", "--yes", action="store_true", help="do not ask on a terminal")
    apply.add_argument("--json", action="store_true", help="print the result as JSON")
    apply.set_defaults(handler=_cmd_apply)

    down = commands.add_parser("down", help=COMMANDS["down"].summary)
    down.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    down.add_argument(
        "--purge-weights", action="store_true", help="also delete the profile's weights"
    )
    down.set_defaults(handler=_cmd_down)

    logs = commands.add_parser("logs", help=COMMANDS["logs"].summary)
    logs.add_argument("service", choices=["vllm", "tei", "gateway"])
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until Ctrl-C")
    logs.add_argument(
        "--tail", type=opt.non_negative_int, default=100, metavar="N", help="last N lines"
    )
    logs.set_defaults(handler=_cmd_logs)

    compose = commands.add_parser("compose", help=COMMANDS["compose"].summary)
    compose_actions = compose.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    compose_actions.required = True
    export = compose_actions.add_parser("export", help="write the compose file")
    export.add_argument("profile", type=Path, metavar="PROFILE")
    export.add_argument("-o", "--output", type=opt.output_file, metavar="FILE")
    export.add_argument(
        "--simulate", metavar="NAME|FILE", help="the box the file is for, or its detect file"
    )
    compose.set_defaults(handler=_cmd_compose)


def register(commands: Commands) -> None:
    _add_runtime(commands)
