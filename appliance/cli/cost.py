"""`appliance cost`: is the box paying for itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli import options as opt
from appliance.cli.base import (
    COMMANDS,
    Commands,
)
from appliance.errors import ExitCode
from appliance.vocabulary import COST_WINDOWS


def _cmd_cost(args: argparse.Namespace) -> ExitCode:
    from appliance.cost import (
        api_for_profile,
        cost_for_window,
        cost_inputs_from,
        load_cost_inputs,
        load_list_prices,
        render_cost,
    )
    from appliance.profile import load_profile

    profile = load_profile(args.profile)
    prices = load_list_prices(args.prices)
    base = load_cost_inputs(args.inputs) if args.inputs is not None else profile.spec.cost
    inputs = cost_inputs_from(
        base,
        gpu_cost_per_hour=args.gpu_cost_per_hour,
        purchase_price=args.purchase_price,
        amortisation_months=args.amortisation_months,
        electricity_per_kwh=args.electricity_per_kwh,
        operations_overhead_pct=args.overhead_pct,
        api=args.api or (None if base is not None and base.api else api_for_profile(profile)),
    )
    report = cost_for_window(
        profile.spec.storage.state_dir, inputs, window=args.window, prices=prices
    )
    print(report.model_dump_json(indent=2) if args.json else render_cost(report))
    return ExitCode.OK


def _add_cost(commands: Commands) -> None:
    cost = commands.add_parser(
        "cost",
        help=COMMANDS["cost"].summary,
        description="Cost per 1M tokens on this box (measured, and at full use) against the "
        "API it replaces, the break-even tokens/day and fallback spend, from recorded usage.",
    )
    cost.add_argument("profile", type=Path, metavar="PROFILE")
    cost.add_argument("--window", choices=COST_WINDOWS, default="day")
    cost.add_argument(
        "--inputs", type=opt.input_file, metavar="FILE", help="a YAML file of cost inputs"
    )
    cost.add_argument(
        "--gpu-cost-per-hour",
        type=opt.finite_non_negative_float,
        metavar="X",
        help="rented or cloud",
    )
    cost.add_argument(
        "--purchase-price", type=opt.finite_non_negative_float, metavar="X", help="an owned box"
    )
    cost.add_argument("--amortisation-months", type=opt.positive_int, metavar="N")
    cost.add_argument("--electricity-per-kwh", type=opt.finite_non_negative_float, metavar="X")
    cost.add_argument(
        "--overhead-pct", type=opt.percent, metavar="X", help="operations (default 30)"
    )
    cost.add_argument("--api", metavar="NAME", help="the API replaced, e.g. openai/gpt-4o")
    cost.add_argument(
        "--prices", type=opt.input_file, metavar="FILE", help="your own list-price table"
    )
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    cost.set_defaults(handler=_cmd_cost)


def register(commands: Commands) -> None:
    _add_cost(commands)
