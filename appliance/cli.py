"""`appliance …`: the headless face of llm-appliance.

Thin on purpose: parse arguments, call the core, print. Data goes to stdout (`--json` where it
makes sense), diagnostics to stderr, and the process exits with an `ExitCode`. Heavy libraries
(pydantic models, docker-py, pynvml, Textual) are imported inside the command that needs them,
so `appliance --help` starts fast over SSH; `tests/unit/test_imports.py` keeps it that way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from appliance import __version__
from appliance.errors import ApplianceError, BadInputError, ExitCode

DEFAULT_MODELS_DIR = Path("/var/lib/llm-appliance/models")

log = logging.getLogger("appliance")

Handler = Callable[[argparse.Namespace], ExitCode]
# The `appliance COMMAND` table that each _add_* function fills.
_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def state_dir() -> Path:
    """Where the appliance keeps its own logs and small state files for this user."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-appliance"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as `BadInputError` (exit 2) instead of exiting itself."""

    def error(self, message: str) -> NoReturn:
        raise BadInputError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


# ---------------------------------------------------------------------------------- commands


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


def _monitor_samplers(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The samplers, monitor config and clock for `status`: simulated, or a profile's services."""
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.status import profile_samplers, simulated

    if args.simulate:
        samplers, clock = simulated(args.simulate)
        return samplers, MonitorConfig(), clock
    if args.profile is None:
        raise BadInputError(
            "status needs the profile that was applied (or --simulate NAME)",
            hint="appliance status profiles/my-box.yaml",
        )
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    return (
        profile_samplers(profile, runtime=_runtime_source(profile.metadata.name)),
        (MonitorConfig.from_profile(profile)),
        None,
    )


def _runtime_source(profile_name: str) -> Any:
    """Container states and restart counts, when the Docker engine answers; else None."""
    from appliance.errors import EnvironmentNotReadyError
    from appliance.monitor.samplers import ContainersRuntimeSource
    from appliance.runtime.docker import DockerEngine

    try:
        return ContainersRuntimeSource(DockerEngine(timeout_s=3), profile_name)
    except EnvironmentNotReadyError as error:
        log.debug("no container states in status: %s", error.message)
        return None


def _cmd_status(args: argparse.Namespace) -> ExitCode:
    from appliance.monitor.render import render_status
    from appliance.monitor.status import check_status, sample_status, watch_status

    samplers, config, clock = _monitor_samplers(args)
    if args.watch:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(stderr=False)
        with Live(console=console, auto_refresh=False, screen=False) as live:

            def redraw(snapshot: Any, history: Any) -> None:
                live.update(Text(render_status(snapshot, history)), refresh=True)

            watch_status(samplers, redraw, config=config, clock=clock)
        return ExitCode.OK
    if args.check:
        snapshot = check_status(samplers, config=config, clock=clock)
    else:
        snapshot = sample_status(samplers, config=config, clock=clock)
    print(snapshot.model_dump_json(indent=2) if args.json else render_status(snapshot))
    return ExitCode.OK


def _cmd_scrape(args: argparse.Namespace) -> ExitCode:
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.render import render_status
    from appliance.monitor.status import url_samplers, watch_status

    def show(snapshot: Any, history: Any) -> None:
        print(snapshot.model_dump_json() if args.json else render_status(snapshot, history))
        sys.stdout.flush()

    watch_status(
        url_samplers(args.urls),
        show,
        count=args.count,
        config=MonitorConfig(interval_s=args.interval),
    )
    return ExitCode.OK


def _cmd_estimate(args: argparse.Namespace) -> ExitCode:
    from appliance.local_model import resolve_model
    from appliance.recommend import (
        DoesNotFitError,
        estimate_for,
        estimate_json,
        gpu_target_from_box,
        render_estimate,
        resolve_gpu,
    )
    from appliance.sizing import PINNED_VLLM_VERSION, EngineFlags

    model = resolve_model(args.model, args.quantization)
    if args.gpu is None and args.gpu_memory_gib is None:
        from appliance.hardware import detect_box

        target = gpu_target_from_box(detect_box(models_dir=DEFAULT_MODELS_DIR))
    else:
        target = resolve_gpu(args.gpu, args.gpu_memory_gib, args.gpus)
    try:
        flags = EngineFlags(
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_dtype=args.kv_cache_dtype,
            enforce_eager=args.enforce_eager,
        )
    except ValueError as error:
        raise BadInputError(str(error)) from None
    try:
        estimate = estimate_for(
            model,
            target,
            tensor_parallel_size=args.tp,
            flags=flags,
            vllm_version=args.vllm_version or PINNED_VLLM_VERSION,
        )
    except DoesNotFitError as error:
        if args.json:
            print(json.dumps(estimate_json(error.estimate), indent=2))
        raise
    if args.json:
        print(json.dumps(estimate_json(estimate), indent=2))
    else:
        print(render_estimate(estimate, model.label))
    return ExitCode.OK


def _cmd_recommend(args: argparse.Namespace) -> ExitCode:
    from appliance.hardware import detect_box
    from appliance.profile import dump_profile
    from appliance.recommend import Workload, recommend, render_recommendation

    box = detect_box(simulate=args.simulate, models_dir=DEFAULT_MODELS_DIR)
    workload = Workload.for_kind(
        args.workload,
        users=args.users,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        context=args.context,
        preference=args.prefer,
        embeddings=args.embeddings,
        allow_gated=args.allow_gated or bool(os.environ.get("HF_TOKEN")),
    )
    recommendation = recommend(box, workload)
    top = recommendation.top  # raises RefusedError (exit 4) when nothing fits
    if args.json:
        print(json.dumps(recommendation.to_json_dict(), indent=2))
    else:
        print(render_recommendation(recommendation))
    if args.output is not None:
        text = dump_profile(recommendation.to_profile(), comment=recommendation.profile_comment())
        if args.output == Path("-"):
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
            print(f"wrote {args.output} ({top.model_name}, {top.quantization})", file=sys.stderr)
    return ExitCode.OK


# ---------------------------------------------------------------------------------- parser


def _add_detect(commands: _Commands) -> None:
    detect = commands.add_parser(
        "detect",
        help="report the GPUs, host, Docker engine and container toolkit",
        description="Report the GPUs (NVML), host (CPU, RAM, disk) and Docker engine, with "
        "every problem and its fix.",
    )
    detect.add_argument(
        "--simulate",
        metavar="NAME",
        help="describe a simulated box instead, e.g. rtx4090, 2x4090, l40s, a100-80g, h100",
    )
    detect.add_argument("--json", action="store_true", help="print the report as JSON")
    detect.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when the box cannot serve (no GPU, no Docker, no NVIDIA toolkit)",
    )
    detect.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"where weights are stored, for the free-disk check (default {DEFAULT_MODELS_DIR})",
    )
    detect.set_defaults(handler=_cmd_detect)


def _add_validate(commands: _Commands) -> None:
    validate = commands.add_parser(
        "validate",
        help="check profile files",
        description="Check profile files; every problem is reported with file:line and a fix.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_cmd_validate)


def _add_estimate(commands: _Commands) -> None:
    estimate = commands.add_parser(
        "estimate",
        help="how vLLM would budget GPU memory for a model, and whether it fits",
        description="Reproduce vLLM's start-up memory budget: weights, activations, non-torch "
        "memory, CUDA graphs, KV cache, and the concurrency it gives. Exit 4 when vLLM would "
        "refuse to start, with the nearest settings that fit.",
    )
    estimate.add_argument(
        "model", metavar="MODEL", help="catalog id, a Hugging Face repo the catalog knows, or a dir"
    )
    where = estimate.add_mutually_exclusive_group()
    where.add_argument("--gpu", metavar="NAME", help="a catalog GPU, e.g. rtx4090, l40s, h100")
    where.add_argument("--gpu-memory-gib", type=float, metavar="N", help="one card's memory")
    estimate.add_argument("--gpus", type=int, default=1, metavar="N", help="how many cards")
    estimate.add_argument("--tp", type=int, metavar="N", help="tensor_parallel_size")
    estimate.add_argument("--quantization", choices=["bf16", "fp16", "awq", "gptq", "fp8"])
    estimate.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="F")
    estimate.add_argument("--max-model-len", type=int, metavar="N")
    estimate.add_argument("--max-num-seqs", type=int, metavar="N")
    estimate.add_argument("--max-num-batched-tokens", type=int, metavar="N")
    estimate.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto")
    estimate.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    estimate.add_argument(
        "--vllm-version",
        metavar="V",
        help="follow this vLLM release's memory rules (default: the pinned image's)",
    )
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    estimate.set_defaults(handler=_cmd_estimate)


def _add_recommend(commands: _Commands) -> None:
    rec = commands.add_parser(
        "recommend",
        help="rank models, quantizations and vLLM flags that fit this box and workload",
        description="Rank (model, quantization, flags) for the box and workload, each with its "
        "memory split and one line of why; the top choice can be written as a profile.",
    )
    rec.add_argument("--simulate", metavar="NAME", help="recommend for a simulated box")
    rec.add_argument("--workload", choices=["chat", "rag", "batch"], required=True)
    rec.add_argument("--users", type=int, metavar="N", help="requests at once at peak")
    rec.add_argument("--context", type=int, metavar="N", help="max_model_len wanted")
    rec.add_argument("--prompt-tokens", type=int, metavar="N", help="typical prompt length")
    rec.add_argument("--output-tokens", type=int, metavar="N", help="typical answer length")
    rec.add_argument("--prefer", choices=["quality", "balanced", "speed"], help="what wins ties")
    rec.add_argument(
        "--embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run TEI embeddings on the same GPU (default: on for rag)",
    )
    rec.add_argument(
        "--allow-gated",
        action="store_true",
        help="consider gated models (default when HF_TOKEN is set)",
    )
    rec.add_argument("--json", action="store_true", help="print the ranking as JSON")
    rec.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the top choice as a profile"
    )
    rec.set_defaults(handler=_cmd_recommend)


def _add_status(commands: _Commands) -> None:
    status = commands.add_parser(
        "status",
        help="health, GPU use, throughput, latency and alerts of the running services",
        description="Sample the profile's services (vLLM, TEI, gateway) and the GPUs: health, "
        "tokens/s, TTFT and inter-token latency p50/p95, KV-cache use, queue, alerts.",
    )
    status.add_argument("profile", nargs="?", type=Path, metavar="PROFILE")
    status.add_argument("--simulate", metavar="NAME", help="show a simulated box's services")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 when any alert is active (for cron, CI)"
    )
    status.set_defaults(handler=_cmd_status)


def _add_scrape(commands: _Commands) -> None:
    scrape = commands.add_parser(
        "scrape",
        help="watch any vLLM or TEI server by URL",
        description="Sample vLLM or TEI servers the appliance did not start, by base URL.",
    )
    scrape.add_argument("urls", nargs="+", metavar="URL")
    scrape.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    scrape.add_argument("--count", type=int, default=None, help="stop after N samples")
    scrape.add_argument("--json", action="store_true", help="one JSON snapshot per line")
    scrape.set_defaults(handler=_cmd_scrape)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="appliance",
        description="Turn one GPU box into a private, OpenAI-compatible LLM service.",
        epilog="Exit codes: 0 ok, 1 failed (rolled back), 2 bad input, "
        "3 environment not ready, 4 nothing fits / refused.",
    )
    parser.add_argument("--version", action="version", version=f"llm-appliance {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks of unexpected errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _add_detect(commands)
    _add_validate(commands)
    _add_estimate(commands)
    _add_recommend(commands)
    _add_status(commands)
    _add_scrape(commands)
    return parser


# ---------------------------------------------------------------------------------- main


def _log_unexpected(error: BaseException) -> Path | None:
    """Write the full traceback to the state directory; return where, or None if it can't."""
    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "appliance.log"
        with path.open("a", encoding="utf-8") as stream:
            stream.write(f"\n--- {dt.datetime.now(dt.UTC).isoformat()} {sys.argv!r}\n")
            stream.write("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def run(argv: Sequence[str] | None = None) -> ExitCode:
    """Run one command and return its exit code; never raises for a user's mistake."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except ApplianceError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `appliance … | head` closed the pipe: not an error. Silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception as error:  # noqa: BLE001 - last line of defence; tracebacks are for --debug
        if debug:
            traceback.print_exception(error)
        else:
            where = _log_unexpected(error)
            trace = f"; full trace in {where}" if where else ""
            print(
                f"error: unexpected {type(error).__name__}: {error}{trace}\n"
                "  → run again with --debug to see it here, and report it",
                file=sys.stderr,
            )
        return ExitCode.FAILED


def main() -> None:
    sys.exit(run())
