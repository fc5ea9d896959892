"""`appliance bench PROFILE`: load the running stack through its gateway and report what it did."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from appliance.cli import options as opt
from appliance.cli.base import COMMANDS, Commands
from appliance.errors import BadInputError, ExitCode

_MAX_LEVELS = 32
_MAX_REQUESTS = 100_000
_MAX_CONCURRENCY = 4096


def _int_list(text: str) -> tuple[int, ...]:
    """`1,4,16`: whole numbers from 1 to 4096, at most 32 of them."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts or len(parts) > _MAX_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of levels: give 1 to {_MAX_LEVELS}, e.g. 1,4,16"
        )
    convert = opt.int_range(1, _MAX_CONCURRENCY)
    return tuple(convert(part) for part in parts)


def _rate_list(text: str) -> tuple[float, ...]:
    """`0.5,2,8`: request rates per second above 0, at most 32 of them."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts or len(parts) > _MAX_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of rates: give 1 to {_MAX_LEVELS}, e.g. 1,4"
        )
    convert = opt.float_range(0.0, 100_000.0)
    return tuple(convert(part) for part in parts)


def _api_key(args: argparse.Namespace, required: bool) -> str | None:
    """The key from --key-file, else $APPLIANCE_API_KEY; never printed."""
    from appliance.operations.bench import KEY_ENV

    if args.key_file is not None:
        try:
            key: str = args.key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise BadInputError(
                f"cannot read the key file {args.key_file}: {error}",
                hint="give a file holding one key from `appliance keys create`",
            ) from None
        if not key:
            raise BadInputError(
                f"the key file {args.key_file} is empty",
                hint="give a file holding one key from `appliance keys create`",
            )
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key
    if required:
        raise BadInputError(
            "bench goes through the gateway, which requires an API key",
            hint=f"appliance keys create bench --profile PROFILE > bench.key, then "
            f"--key-file bench.key (or export {KEY_ENV}=…)",
        )
    return None


def _progress(enabled: bool) -> Any:
    """A rich progress bar per level on stderr when it is a terminal, else nothing."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _on_level(progress: Any, mode: str) -> Callable[[float, int], Callable[[int], None] | None]:
    def start(level: float, total: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        what = f"{level:g} users" if mode == "concurrency" else f"{level:g} req/s"
        task = progress.add_task(what, total=total)

        def done(count: int) -> None:
            progress.update(task, completed=count)

        return done

    return start


def _show(run: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from appliance.benchmark import headline, table_rows, text_chart

    # Into a file or a pipe the table keeps its width rather than folding at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    rows = table_rows(run)
    table = Table(
        title=f"appliance bench {run.profile}: {run.model}, {run.workload}",
        caption=f"SLO: TTFT p95 ≤ {run.slo.ttft_p95_s:g} s, ITL p95 ≤ "
        f"{run.slo.itl_p95_s * 1000:g} ms · engine {run.engine_version or 'unknown'}",
    )
    for index, name in enumerate(rows[0]):
        table.add_column(name, justify="left" if index == len(rows[0]) - 1 else "right")
    for row in rows[1:]:
        style = None if row[-1] == "met" else "yellow"
        table.add_row(*row, style=style)
    console.print(table)
    console.print(text_chart(run), highlight=False, markup=False)
    console.print(headline(run), highlight=False, markup=False)
    for level in run.levels:
        for error in level.errors:
            console.print(f"  at {level.level:g}: {error}", highlight=False, markup=False)


def _lengths_and_prompts(
    args: argparse.Namespace, max_model_len: int | None
) -> tuple[int, int, tuple[Any, ...]]:
    """Prompt and output lengths (the defaults scaled to max_model_len), and the recorded
    sample's prompts when --prompts gives one."""
    from appliance.operations import bench

    default_in, default_out = bench.default_lengths(max_model_len)
    input_len = args.input_len or default_in
    output_len = args.output_len or default_out
    if args.prompts is None:
        bench.check_lengths(input_len, output_len, max_model_len)
        return input_len, output_len, ()
    if args.input_len is not None:
        raise BadInputError(
            "--input-len and --prompts both say what the prompts are",
            hint="give one: the sample's prompts are sent as they are",
        )
    prompts = bench.load_prompts(args.prompts)
    if args.output_len is not None:  # as vLLM's --custom-output-len: one length for all
        prompts = tuple(bench.SamplePrompt(p.prompt) for p in prompts)
    return input_len, output_len, prompts


def _cmd_bench(args: argparse.Namespace) -> ExitCode:
    from appliance.benchmark import Mode, Slo, html_report
    from appliance.gateway.config import gateway_trust
    from appliance.operations import bench
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    spec = profile.spec
    key = _api_key(args, required=spec.gateway.require_api_key and args.url is None)
    input_len, output_len, prompts = _lengths_and_prompts(args, spec.engine.max_model_len)
    mode: Mode
    if args.request_rate is not None:
        mode, levels = "rate", args.request_rate
        max_concurrency = max(args.concurrency) if args.concurrency else None
    else:
        mode, levels = "concurrency", tuple(float(c) for c in (args.concurrency or (1, 4, 16)))
        max_concurrency = None
    plan = bench.BenchPlan(
        url=(args.url.rstrip("/") if args.url else bench.gateway_url(profile)),
        key=key,
        workload=bench.Workload(
            model=spec.model.served_name,
            input_len=input_len,
            output_len=output_len,
            endpoint=args.endpoint,
            ignore_eos=not args.allow_eos,
            seed=args.seed,
            prompts=prompts,
        ),
        requests=args.requests,
        mode=mode,
        levels=levels,
        slo=Slo(ttft_p95_s=args.slo_ttft, itl_p95_s=args.slo_itl / 1000.0),
        max_concurrency=max_concurrency,
        verify=True if args.url else gateway_trust(profile),
        prompts_from=None if args.prompts is None else args.prompts.name,
    )
    if args.url is None and not prompts:
        from dataclasses import replace

        words = bench.prompt_words(profile, plan.workload)
        plan = replace(plan, workload=replace(plan.workload, words=words))
    progress = _progress(sys.stderr.isatty() and not args.json)
    facts = bench.engine_facts(profile)
    if progress is not None:
        progress.start()
    try:
        run = bench.run_bench(
            plan,
            profile_name=profile.metadata.name,
            facts=facts,
            on_level=_on_level(progress, mode),
        )
    finally:
        if progress is not None:
            progress.stop()
    saved = None
    if not args.no_save:
        saved = bench.save_run(args.state_dir or spec.storage.state_dir, run)
    if args.report is not None:
        from appliance.fileio import write_output

        write_output(args.report, html_report(run))
    if args.json:
        print(json.dumps(run.to_json(), indent=2))
    else:
        _show(run)
    if saved is not None:
        print(f"kept in {saved}", file=sys.stderr)
    if args.report is not None:
        print(f"report: {args.report}", file=sys.stderr)
    return ExitCode.OK


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "bench",
        help=COMMANDS["bench"].summary,
        description="Send streamed chat requests shaped like the profile's workload through the "
        "gateway, at each concurrency (or request rate), and report request rate, output "
        "tokens/s, TTFT/ITL/E2E p50/p95/p99, errors and goodput under an SLO, by the "
        "definitions of `vllm bench serve`. Results are kept under the profile's state_dir.",
    )
    parser.add_argument("profile", type=opt.input_file, metavar="PROFILE")
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        metavar="N,N,…",
        help="concurrent requests per level (default 1,4,16); with --request-rate, a cap",
    )
    parser.add_argument(
        "--request-rate",
        type=_rate_list,
        metavar="R,R,…",
        help="offer requests as a Poisson process of R per second instead",
    )
    parser.add_argument(
        "--requests",
        type=opt.int_range(1, _MAX_REQUESTS),
        default=64,
        metavar="N",
        help="requests per level (default 64)",
    )
    parser.add_argument(
        "--input-len",
        type=opt.int_range(1, 10_485_760),
        metavar="TOKENS",
        help="prompt length (default 1024, shrunk to fit max_model_len)",
    )
    parser.add_argument(
        "--output-len",
        type=opt.int_range(1, 10_485_760),
        metavar="TOKENS",
        help="output length (default 128, shrunk to fit max_model_len)",
    )
    parser.add_argument(
        "--prompts",
        type=opt.input_file,
        metavar="FILE",
        help="a recorded sample of real traffic instead of random prompts: JSON Lines, one "
        '{"prompt": "...", "output_tokens": N} a line (output_tokens optional; --output-len '
        "sets them all), the file `vllm bench serve --dataset-name custom` reads; sent in "
        "file order, each level from where the last stopped",
    )
    parser.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    parser.add_argument(
        "--allow-eos",
        action="store_true",
        help="let requests stop at end-of-sequence (default: ignore_eos, all run to length)",
    )
    parser.add_argument(
        "--slo-ttft",
        type=opt.float_range(0.0, 3600.0),
        default=2.0,
        metavar="SECONDS",
        help="TTFT p95 the SLO allows (default 2)",
    )
    parser.add_argument(
        "--slo-itl",
        type=opt.float_range(0.0, 60_000.0),
        default=100.0,
        metavar="MS",
        help="ITL p95 the SLO allows, in ms (default 100)",
    )
    parser.add_argument(
        "--key-file",
        type=opt.input_file,
        metavar="FILE",
        help="the gateway API key (default: $APPLIANCE_API_KEY)",
    )
    parser.add_argument(
        "--url",
        type=opt.http_url,
        help="the gateway's base URL ending in /v1 (default: the profile's gateway on this box)",
    )
    parser.add_argument("--seed", type=opt.non_negative_int, default=0, help="prompt seed")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--report", type=opt.output_file, metavar="FILE", help="write an HTML report with a chart"
    )
    parser.add_argument("--no-save", action="store_true", help="do not keep the result")
    parser.add_argument("--state-dir", type=opt.directory, help="override the profile's state_dir")
    parser.set_defaults(handler=_cmd_bench)
