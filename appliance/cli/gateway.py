"""`appliance gateway | keys | fallback`: the team's endpoint and its files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    Commands,
    Parser,
)
from appliance.errors import BadInputError, ExitCode
from appliance.vocabulary import FALLBACK_MODES


def _gateway_config(args: argparse.Namespace) -> Any:
    """The gateway's configuration from `--profile` (or $LLM_APPLIANCE_PROFILE)."""
    from appliance.gateway.config import GatewayConfig
    from appliance.operations.applied import applied_profile_path
    from appliance.profile import load_profile

    path = applied_profile_path(args.profile)
    if path is None:
        raise BadInputError(
            "which box's gateway? no profile has been applied here",
            hint="add --profile profiles/my-box.yaml, or export LLM_APPLIANCE_PROFILE=…",
        )
    return GatewayConfig.from_profile(load_profile(path), state_dir=args.state_dir)


def _cmd_gateway(args: argparse.Namespace) -> ExitCode:
    from appliance.gateway.config import GatewayConfig, Listen
    from appliance.gateway.server import run_gateway
    from appliance.profile import load_profile

    profile = load_profile(args.profile_file)
    config = GatewayConfig.from_profile(
        profile,
        state_dir=args.state_dir,
        chat_upstream=args.chat_upstream,
        embeddings_upstream=args.embeddings_upstream,
        fallback_upstream=args.fallback_upstream,
    )
    listen = Listen.from_profile(profile)
    monitor, companion = _gateway_monitor(profile, args.chat_upstream is None)
    run_gateway(
        config,
        host=args.host or listen.host,
        port=args.port or listen.port,
        ssl_certfile=listen.tls_cert_file,
        ssl_keyfile=listen.tls_key_file,
        log_level=args.log_level,
        load_signal=monitor,
        background=companion,
    )
    return ExitCode.OK


def _gateway_monitor(profile: Any, local_engines: bool) -> tuple[Any, Any]:
    """The monitor the gateway hosts (queue depth for auto fallback, usage for `cost`).

    Returns (load signal, background tasks); (None, ()) when the gateway fronts engines the
    appliance did not start, where it probes the upstream itself.
    """
    if not local_engines:
        return None, ()
    from functools import partial

    from appliance.errors import EnvironmentNotReadyError
    from appliance.gateway.recording import monitor_and_record
    from appliance.monitor.monitor import EngineLoadSignal, Monitor, MonitorConfig
    from appliance.operations.status import profile_samplers
    from appliance.usage_store import GatewayCounters, UsageRecorder, UsageStore

    monitor = Monitor(profile_samplers(profile), config=MonitorConfig.from_profile(profile))
    try:
        # The gateway's counters live in this very process, so they start from zero: requests
        # served before the monitor's first tick still count.
        recorder: UsageRecorder | None = UsageRecorder(
            UsageStore.for_profile(profile), gateway_baseline=GatewayCounters(0.0, 0.0)
        )
    except EnvironmentNotReadyError as error:
        print(f"warning: {error.render()}\n  (usage is not recorded)", file=sys.stderr)
        recorder = None
    companion = partial(monitor_and_record, monitor=monitor, recorder=recorder)
    return EngineLoadSignal.of(monitor), (companion,)


def _cmd_keys(args: argparse.Namespace) -> ExitCode:
    from appliance.gateway.keys import create_key, list_keys, revoke_key

    keys_file = _gateway_config(args).keys_file
    if args.action == "create":
        created = create_key(
            keys_file, args.name, admin=args.admin, rate_limit_per_minute=args.rate_limit
        )
        if args.json:
            print(json.dumps(created.to_json(), indent=2))
        else:
            print(created.key)
            print(
                f"key {args.name!r} created ({created.info.scope.value}); it is shown only "
                "this once, and only its hash is stored",
                file=sys.stderr,
            )
    elif args.action == "list":
        keys = list_keys(keys_file)
        if args.json:
            print(json.dumps([key.to_json() for key in keys], indent=2))
        if keys and not args.json:
            print(f"{'NAME':24} {'ID':12} {'SCOPE':6} {'LIMIT':>8}  CREATED")
        for key in [] if args.json else keys:
            limit = f"{key.rate_limit_per_minute}/min" if key.rate_limit_per_minute else "-"
            print(f"{key.name:24} {key.key_id:12} {key.scope.value:6} {limit:>8}  {key.created_at}")
    else:
        revoked = revoke_key(keys_file, args.name)
        print(f"revoked {revoked.name} ({revoked.key_id})", file=sys.stderr)
    return ExitCode.OK


def _cmd_fallback(args: argparse.Namespace) -> ExitCode:
    from appliance.gateway.state import read_fallback, set_fallback

    config = _gateway_config(args)
    if args.mode is None:
        state = read_fallback(config.state_file, config.default_fallback_mode)
    else:
        state = set_fallback(
            config.state_file, args.mode, remote_configured=config.remote is not None
        )
    if args.json:
        print(json.dumps(state.to_json(), indent=2))
    else:
        since = f" (since {state.changed_at}, by {state.changed_by})" if state.changed_at else ""
        print(f"fallback {state.mode.value}{since}")
    return ExitCode.OK


def _add_gateway(commands: Commands) -> None:
    gateway = commands.add_parser(
        "gateway",
        help=COMMANDS["gateway"].summary,
        description="Serve /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models "
        "in front of the local engines, with API keys and fallback off | auto | always.",
    )
    gateway.add_argument("--profile", dest="profile_file", type=Path, required=True, metavar="FILE")
    gateway.add_argument("--host", help="listen address (default: the profile's)")
    gateway.add_argument("--port", type=opt.port, help="listen port (default: the profile's)")
    gateway.add_argument("--state-dir", type=opt.directory, help="keys and fallback mode live here")
    gateway.add_argument(
        "--chat-upstream", type=opt.http_url, metavar="URL", help="a vLLM base URL ending in /v1"
    )
    gateway.add_argument(
        "--embeddings-upstream", type=opt.http_url, metavar="URL", help="a TEI base URL (/v1)"
    )
    gateway.add_argument(
        "--fallback-upstream",
        type=opt.http_url,
        metavar="URL",
        help="the remote API's base URL, overriding the profile",
    )
    gateway.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    gateway.set_defaults(handler=_cmd_gateway)

    def which_box(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--profile", type=Path, help="the applied profile (or $LLM_APPLIANCE_PROFILE)"
        )
        parser.add_argument(
            "--state-dir", type=opt.directory, help="override the profile's state_dir"
        )

    keys = commands.add_parser("keys", help=COMMANDS["keys"].summary)
    actions = keys.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    create = actions.add_parser("create", help="make a key; it is shown once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--admin", action="store_true", help="for /admin endpoints only")
    create.add_argument(
        "--rate-limit", type=opt.positive_int, metavar="N", help="requests per minute"
    )
    create.add_argument("--json", action="store_true")
    which_box(create)
    listing = actions.add_parser("list", help="the keys (names and ids, never the keys)")
    listing.add_argument("--json", action="store_true")
    which_box(listing)
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("name", metavar="NAME")
    which_box(revoke)
    keys.set_defaults(handler=_cmd_keys)

    fallback = commands.add_parser(
        "fallback",
        help=COMMANDS["fallback"].summary,
    )
    fallback.add_argument("mode", nargs="?", choices=[mode.value for mode in FALLBACK_MODES])
    fallback.add_argument("--json", action="store_true")
    which_box(fallback)
    fallback.set_defaults(handler=_cmd_fallback)


def register(commands: Commands) -> None:
    _add_gateway(commands)
