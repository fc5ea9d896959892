"""What `appliance cost` calls: the price table, the cost file, the store, and the report.

Thin glue over the pure `appliance.economics`: it reads the list-price table (package data, or a
file the operator edits), a small YAML cost file, and the usage store, and returns a `CostReport`.
It never prints and never exits; everything a person must fix is an `appliance.errors` exception.

`appliance cost PROFILE [--window hour|day|7d] [--json] [--inputs FILE]
[--gpu-cost-per-hour X | --purchase-price X --electricity-per-kwh Y [--amortisation-months N]]
[--overhead-pct P] [--api NAME] [--prices FILE]`
maps onto `cost_inputs_from(load_cost_inputs(FILE) or None, gpu_cost_per_hour=…, api=… or
api_for_profile(profile), …)` and `cost_for_window(profile.spec.storage.state_dir, inputs,
window=…, prices=load_list_prices(FILE or None))`; `render_cost(report)` is the text and
`report.model_dump_json(indent=2)` the `--json` output.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.economics import ApiPrice, CostInputs, CostReport, WindowName, cost_report
from appliance.errors import BadInputError

# Only the gateway process records usage (its monitor samples the engines and its own counters
# into the usage store); `status --watch` and the TUI's Monitor only look.
RECORDED_BY: Final = (
    "usage is recorded by the gateway (`appliance gateway --profile PROFILE`, which `apply` "
    "runs as the llm-appliance-gateway systemd unit) while it fronts the profile's engines"
)
RECORDED_SHORT: Final = "usage recorded by the gateway (`appliance gateway`; apply runs it)"

if TYPE_CHECKING:
    from appliance.profile import Profile

__all__ = [
    "DEFAULT_API",
    "PriceTable",
    "api_for_profile",
    "cost_for_window",
    "cost_inputs_from",
    "load_cost_inputs",
    "load_list_prices",
    "render_cost",
    "resolve_price",
]

DEFAULT_API: Final = "openai/gpt-4o"
_MAX_FILE_BYTES: Final = 256 * 1024


class _PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "custom"
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    read_on: str
    source: str


class PriceTable(BaseModel):
    """`appliance/data/list_prices.yaml`: list prices with the date and source of each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: int = Field(alias="schema")
    currency: str = "USD"
    prices: dict[str, _PriceEntry]

    def price(self, name: str) -> ApiPrice:
        entry = self.prices.get(name)
        if entry is None:
            import difflib

            close = difflib.get_close_matches(name, self.prices, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise BadInputError(
                f"no list price for API {name!r}",
                hint=f"{hint}known: {', '.join(sorted(self.prices))}; or give the prices with "
                "--api-input-price and --api-output-price",
            )
        kind = entry.kind if entry.kind in ("frontier", "hosted-open") else "custom"
        return ApiPrice.model_validate(
            {
                "name": name,
                "input_per_million": entry.input_per_million,
                "output_per_million": entry.output_per_million,
                "currency": self.currency,
                "read_on": entry.read_on,
                "source": entry.source,
                "kind": kind,
            }
        )


def _read_yaml(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise BadInputError(f"{path} is too large for a {what}")
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"{what} {path} is not valid YAML: {exc}") from None


def _validation_error(path: str, what: str, exc: ValidationError) -> BadInputError:
    lines = [
        f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    ]
    return BadInputError(f"{what} {path} is wrong:\n  " + "\n  ".join(lines))


def load_list_prices(path: Path | None = None) -> PriceTable:
    """The list-price table: `path` if given, else the one shipped in `appliance/data`."""
    if path is None:
        text = resources.files("appliance").joinpath("data", "list_prices.yaml").read_text("utf-8")
        data, name = yaml.safe_load(text), "list_prices.yaml"
    else:
        data, name = _read_yaml(path, "price table"), str(path)
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(name, "price table", exc) from None


def load_cost_inputs(path: Path) -> CostInputs:
    """A cost file: a YAML mapping with `CostInputs`' keys (see `appliance.economics`)."""
    data = _read_yaml(path, "cost file")
    try:
        return CostInputs.model_validate(data or {})
    except ValidationError as exc:
        raise _validation_error(str(path), "cost file", exc) from None


def cost_inputs_from(base: CostInputs | None = None, **flags: object) -> CostInputs:
    """`base` (from a cost file, or none) with the flags that were given laid over it.

    Flags are `CostInputs` field names; `None` means "not given". Giving `gpu_cost_per_hour`
    replaces an owned box's `purchase_price` from the file, and the reverse.
    """
    data: dict[str, object] = base.model_dump(exclude_unset=True) if base is not None else {}
    given = {key: value for key, value in flags.items() if value is not None}
    if "gpu_cost_per_hour" in given:
        data.pop("purchase_price", None)
    if "purchase_price" in given:
        data.pop("gpu_cost_per_hour", None)
    data.update(given)
    try:
        return CostInputs.model_validate(data)
    except ValidationError as exc:
        messages = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise BadInputError(
            f"cost inputs are incomplete or wrong: {messages}",
            hint="e.g. appliance cost PROFILE --gpu-cost-per-hour 2.0, or --purchase-price 9000 "
            "--electricity-per-kwh 0.30 (or --inputs FILE with those keys)",
        ) from None


def resolve_price(inputs: CostInputs, table: PriceTable | None = None) -> ApiPrice:
    """The API being replaced: explicit prices in the inputs win over the table."""
    name = inputs.api or DEFAULT_API
    if inputs.api_input_per_million is not None and inputs.api_output_per_million is not None:
        return ApiPrice(
            name=inputs.api or "custom",
            input_per_million=inputs.api_input_per_million,
            output_per_million=inputs.api_output_per_million,
            source="given by the operator",
        )
    return (table or load_list_prices()).price(name)


# Hosts of well-known OpenAI-compatible APIs → the provider prefix of the price table's keys.
_PROVIDERS: Final = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.mistral.ai": "mistral",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
}


def api_for_profile(profile: Profile, table: PriceTable | None = None) -> str | None:
    """The price-table key of the API the profile falls back to, when the table knows it.

    The API a box replaces is usually the one its gateway overflows to: `https://api.openai.com/v1`
    with `model_map` to `gpt-4o` is `openai/gpt-4o`. None when the profile has no remote API or
    the table has no price for it (then `--api` must say).
    """
    remote = profile.spec.gateway.fallback.remote
    if remote is None:
        return None
    provider = _PROVIDERS.get(urlsplit(remote.base_url).hostname or "")
    if provider is None:
        return None
    prices = (table or load_list_prices()).prices
    for remote_model in remote.model_map.values():
        model = remote_model.rsplit("/", 1)[-1].lower().removesuffix("-latest")
        if f"{provider}/{model}" in prices:
            return f"{provider}/{model}"
    return None


def cost_for_window(
    state_dir: Path,
    inputs: CostInputs,
    *,
    window: WindowName = "day",
    now_wall: float | None = None,
    prices: PriceTable | None = None,
) -> CostReport:
    """`appliance cost`: the report over the last `window`, from the store in `state_dir`."""
    from appliance.usage_store import STORE_FILENAME, UsageStore

    price = resolve_price(inputs, prices)
    path = state_dir / STORE_FILENAME
    if not path.exists():
        raise BadInputError(
            f"no usage recorded yet ({path} does not exist)",
            hint=f"{RECORDED_BY}; check it runs (systemctl status llm-appliance-gateway) and "
            "come back after it has served traffic a while",
        )
    with UsageStore(path) as store:
        usage = store.usage(window, time.time() if now_wall is None else now_wall)
    return cost_report(usage, inputs, price)


def _fmt_money(value: float | None, currency: str) -> str:
    if value is None:
        return "unknown"
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency, "")
    return f"{symbol}{value:,.2f}" if symbol else f"{value:,.2f} {currency}"


def _fmt_tokens(value: float | None) -> str:
    if value is None:
        return "unknown"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def render_cost(report: CostReport) -> str:
    """The report as text for the terminal, verdict first."""
    c = report.currency
    util = (
        "unknown" if report.gpu_utilization_pct is None else f"{report.gpu_utilization_pct:.0f} %"
    )
    power = "unknown" if report.gpu_power_w is None else f"{report.gpu_power_w:.0f} W"
    lines = [
        report.verdict,
        "",
        f"window          {report.window or '-'} ({report.observed_hours:.1f} h recorded)",
        f"traffic         {_fmt_tokens(report.prompt_tokens)} prompt + "
        f"{_fmt_tokens(report.generation_tokens)} generated tokens "
        f"({_fmt_tokens(report.tokens_per_day)}/day)",
        f"GPUs            {report.gpu_count}, utilisation {util}, power {power}",
        f"box             {_fmt_money(report.cost_per_hour.total, c)}/h "
        f"(hardware {_fmt_money(report.cost_per_hour.hardware, c)}, electricity "
        f"{_fmt_money(report.cost_per_hour.electricity, c)}, operations "
        f"{_fmt_money(report.cost_per_hour.overhead, c)}); "
        f"{_fmt_money(report.box_cost, c)} in this window",
        f"per 1M tokens   {_fmt_money(report.cost_per_million_measured, c)} as measured, "
        f"{_fmt_money(report.cost_per_million_full, c)} at full utilisation",
        f"API             {report.api}: {_fmt_money(report.api_cost_per_million, c)} per 1M "
        f"at this mix "
        f"(list {report.api_input_per_million:g}/{report.api_output_per_million:g} in/out, "
        f"read {report.api_price_read_on or 'n/a'}); "
        f"{_fmt_money(report.api_cost_same_traffic, c)} for the same traffic",
        f"break-even      {_fmt_tokens(report.break_even_tokens_per_day)} tokens/day",
        f"fallback        {report.fallback_requests:.0f} of "
        f"{report.fallback_requests + report.local_requests:.0f} chat requests, "
        f"about {_fmt_money(report.fallback_spend_estimate, c)}",
    ]
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"source          {RECORDED_SHORT}")
    return "\n".join(lines)
