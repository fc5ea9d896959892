"""`appliance tune PROFILE`: sweep the engine's batch settings, benchmark each, keep the best."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from appliance.cli import options as opt
from appliance.cli.base import COMMANDS, Commands
from appliance.cli.bench import _api_key, _int_list
from appliance.errors import BadInputError, ExitCode

if TYPE_CHECKING:
    from appliance.operations.tune import TuneResult
    from appliance.tuning import Measured, Sweep

_DEFAULT_POINTS = 8


def _tokens_list(text: str) -> tuple[int, ...]:
    """`2048,8192`: token counts from 1 to 10,485,760, at most 16 of them."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts or len(parts) > 16:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of 1 to 16 token counts")
    convert = opt.int_range(1, 10_485_760)
    return tuple(convert(part) for part in parts)


def _kv_list(text: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not parts or any(part not in ("auto", "fp8") for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of auto and/or fp8")
    return parts


def _sweep_lines(sweep: Sweep, limit: int) -> list[str]:
    lines = [f"{len(sweep.points)} points fit (at most {limit} are measured, in this order):"]
    lines += [f"  {index + 1:>2}. {p.label()}" for index, p in enumerate(sweep.points)]
    for skipped in sweep.skipped:
        lines.append(f"  skipped: {skipped.point.label()}: {skipped.reason}")
    return lines


def _row(measured: Measured) -> list[str]:
    point, level = measured.point, measured.level
    cells = [
        str(point.max_num_seqs),
        str(point.max_num_batched_tokens or "default"),
        point.kv_cache_dtype,
    ]
    if level is None:
        return [*cells, "-", "-", "-", "-", measured.error or "not measured"]
    return [
        *cells,
        f"{level.output_throughput:,.1f}",
        f"{level.ttft.p95 * 1000:,.0f}",
        f"{level.itl.p95 * 1000:,.1f}",
        f"{level.failed}/{level.requests}",
        "met" if level.meets_slo else "missed",
    ]


def _show(result: TuneResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)
    table = Table(title=f"appliance tune: {len(result.measured)} points at "
                  f"{result.concurrency} users")  # fmt: skip
    for name in ("max_num_seqs", "batched tokens", "KV", "out tok/s", "TTFT p95 ms",
                 "ITL p95 ms", "errors", "SLO"):  # fmt: skip
        table.add_column(name, justify="right")
    for measured in result.measured:
        table.add_row(*_row(measured), style=None if measured.met else "yellow")
    console.print(table)
    for point in result.stopped_early:
        console.print(f"not measured (its row missed the SLO): {point.label()}", highlight=False)
    best = result.winner
    if best is None or best.level is None:
        console.print("no point met the SLO: the profile is unchanged", highlight=False)
        return
    verb = "written into the profile and running" if result.written else "not written (--yes)"
    console.print(
        f"winner: {best.point.label()}: {best.level.output_throughput:,.1f} output tok/s ({verb})",
        highlight=False,
        markup=False,
    )


def _to_json(result: TuneResult) -> dict[str, Any]:
    def one(m: Measured) -> dict[str, Any]:
        return {
            "max_num_seqs": m.point.max_num_seqs,
            "max_num_batched_tokens": m.point.max_num_batched_tokens,
            "kv_cache_dtype": m.point.kv_cache_dtype,
            "level": None if m.level is None else m.level.to_json(),
            "met_slo": m.met,
            "bench_file": m.bench_file,
        }

    return {
        "concurrency": result.concurrency,
        "measured": [one(m) for m in result.measured],
        "winner": None if result.winner is None else one(result.winner),
        "written": result.written,
        "not_measured_early_stop": [p.label() for p in result.stopped_early],
    }


def _cmd_tune(args: argparse.Namespace) -> ExitCode:
    from appliance.benchmark import Slo
    from appliance.gateway.config import gateway_trust
    from appliance.hardware import detect_box
    from appliance.operations import bench
    from appliance.operations.tune import build_sweep, run_tune
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    spec = profile.spec
    box = detect_box(models_dir=spec.storage.models_dir)
    sweep = build_sweep(
        profile,
        box,
        seqs=args.max_num_seqs,
        batched=args.max_num_batched_tokens,
        kv_dtypes=args.kv_cache_dtype,
    )
    if args.dry_run:
        print("\n".join(_sweep_lines(sweep, args.points)))
        return ExitCode.OK
    if not sweep.points:
        raise BadInputError(
            "no point of the sweep fits this box",
            hint="see `appliance tune PROFILE --dry-run` for why each was skipped",
        )
    key = _api_key(args, required=spec.gateway.require_api_key)
    default_in, default_out = bench.default_lengths(spec.engine.max_model_len)
    input_len = args.input_len or default_in
    output_len = args.output_len or default_out
    bench.check_lengths(input_len, output_len, spec.engine.max_model_len)
    concurrency = args.concurrency or min(256, spec.engine.max_num_seqs or 16)
    plan = bench.BenchPlan(
        url=bench.gateway_url(profile),
        key=key,
        workload=bench.Workload(
            model=spec.model.served_name,
            input_len=input_len,
            output_len=output_len,
            seed=args.seed,
        ),
        requests=args.requests,
        mode="concurrency",
        levels=(float(concurrency),),
        slo=Slo(ttft_p95_s=args.slo_ttft, itl_p95_s=args.slo_itl / 1000.0),
        verify=gateway_trust(profile),
    )

    def show(event: Any) -> None:
        level = event.measured.level if event.measured is not None else None
        line = event.message
        if level is not None:
            line = (
                f"  {level.output_throughput:,.1f} output tok/s, TTFT p95 "
                f"{level.ttft.p95 * 1000:,.0f} ms, ITL p95 {level.itl.p95 * 1000:,.1f} ms: "
                + ("within the SLO" if level.meets_slo else "misses the SLO")
            )
        print(line, file=sys.stderr, flush=True)

    result = run_tune(
        args.profile,
        box,
        None,  # this box's Docker engine, opened by the operation
        sweep,
        plan,
        write=args.yes,
        points=args.points,
        budget_s=None if args.budget is None else args.budget * 60.0,
        state_dir=args.state_dir,
        on_event=show,
    )
    if args.json:
        print(json.dumps(_to_json(result), indent=2))
    else:
        _show(result)
    return ExitCode.OK


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "tune",
        help=COMMANDS["tune"].summary,
        description="Sweep vLLM's max_num_seqs x max_num_batched_tokens (and the fp8 KV cache "
        "where the GPU has FP8) within what sizing says fits: apply each point through the "
        "normal apply path, benchmark it through the gateway, stop a row at its first point "
        "that misses the SLO, and keep the point with the most output tokens/s within it. "
        "With --yes the winner is written into the profile (comments kept, with when and which "
        "bench) and left running; otherwise, and when interrupted or a point fails, the "
        "original profile and engine are put back.",
    )
    parser.add_argument("profile", type=opt.input_file, metavar="PROFILE")
    parser.add_argument(
        "--max-num-seqs", type=_int_list, metavar="N,N,…",
        help="values to try (default: half, the same, 2x and 4x the profile's)",
    )  # fmt: skip
    parser.add_argument(
        "--max-num-batched-tokens", type=_tokens_list, metavar="N,N,…",
        help="values to try (default: the profile's, then 1x and 2x max_model_len)",
    )  # fmt: skip
    parser.add_argument(
        "--kv-cache-dtype", type=_kv_list, metavar="auto,fp8",
        help="KV cache dtypes to try (default: auto, and fp8 on a GPU with FP8)",
    )  # fmt: skip
    parser.add_argument(
        "--points", type=opt.int_range(1, 64), default=_DEFAULT_POINTS, metavar="N",
        help=f"measure at most N points (default {_DEFAULT_POINTS})",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=opt.float_range(0.0, 24 * 60.0), metavar="MINUTES",
        help="start no point after this many minutes",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=opt.int_range(1, 4096), metavar="N",
        help="users at once while each point is measured (default: the profile's max_num_seqs)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=opt.int_range(1, 100_000), default=64, metavar="N",
        help="requests per point (default 64)",
    )  # fmt: skip
    parser.add_argument("--input-len", type=opt.int_range(1, 10_485_760), metavar="TOKENS")
    parser.add_argument("--output-len", type=opt.int_range(1, 10_485_760), metavar="TOKENS")
    parser.add_argument(
        "--slo-ttft", type=opt.float_range(0.0, 3600.0), default=2.0, metavar="SECONDS",
        help="TTFT p95 the SLO allows (default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--slo-itl", type=opt.float_range(0.0, 60_000.0), default=100.0, metavar="MS",
        help="ITL p95 the SLO allows, in ms (default 100)",
    )  # fmt: skip
    parser.add_argument(
        "--key-file", type=opt.input_file, metavar="FILE",
        help="the gateway API key (default: $APPLIANCE_API_KEY)",
    )  # fmt: skip
    parser.add_argument("--seed", type=opt.non_negative_int, default=0, help="prompt seed")
    parser.add_argument("--dry-run", action="store_true", help="list the points and stop")
    parser.add_argument("--yes", action="store_true", help="write the winner into the profile")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--state-dir", type=opt.directory, help="where bench results are kept")
    parser.set_defaults(handler=_cmd_tune)
