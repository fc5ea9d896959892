"""Is this box paying for itself? Cost per 1M tokens, the API's price for that traffic, break-even.

Pure: no files, no clock, no network. The inputs are a `Usage` (what the box measured over a window:
tokens, GPU utilisation and power, requests served locally and by the fallback API), the operator's
`CostInputs` (what the box costs) and an `ApiPrice` (the API it replaces). `cost_report` turns them
into a `CostReport` that prints as JSON and ends in a one-line verdict.

The model, and what must stay true:

- The box's cost per hour is either rented (`gpu_cost_per_hour` x GPUs; power is in the price) or
  owned (`purchase_price` spread over `amortisation_months`, plus electricity at the *measured*
  power draw of the GPUs and `host_power_watts` for the rest of the machine). Operations overhead
  (people's time, spares, downtime; default 30 %, the articles say 30-50 %) is added on top.
- "Cost per 1M tokens" counts prompt and generated tokens together, as the articles do. The API's
  cost for the same traffic prices them separately (input and output list prices).
- At full utilisation: throughput is `capacity_tokens_per_s` when the operator gives it (e.g. from
  a benchmark), else extrapolated linearly from the measured throughput and the mean GPU
  utilisation (article 000's own arithmetic: $2/h at 100 % -> $0.50/Mtok, at 10 % -> $5/Mtok). The
  extrapolation is refused below `MIN_UTILISATION_TO_EXTRAPOLATE_PCT`, where it is noise. Power at
  full utilisation is the GPUs' power limit when it was read, else the measured draw.
- Break-even tokens/day is the daily cost of the box divided by the API's price per token at the
  measured input/output mix (70/30 when nothing was measured, the mix article 002 assumes).
- Fallback spend is an estimate: the gateway counts fallback requests, not their tokens, so each
  is priced at the mean tokens per locally served request. The report says so.
- The verdict says "cannot pay for itself" only from a capacity the operator measured: the linear
  extrapolation underestimates what batching achieves at full load.
- Nothing is invented: a figure that cannot be computed is `None`, with a note saying why.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.vocabulary import WindowName

__all__ = [
    "DEFAULT_INPUT_SHARE",
    "DEFAULT_OPERATIONS_OVERHEAD_PCT",
    "HOURS_PER_MONTH",
    "MIN_UTILISATION_TO_EXTRAPOLATE_PCT",
    "ApiPrice",
    "CostInputs",
    "CostReport",
    "Usage",
    "WindowName",
    "break_even_tokens_per_day",
    "cost_report",
]


HOURS_PER_MONTH: Final = 8760.0 / 12  # 730: a calendar year's hours over its months
DEFAULT_OPERATIONS_OVERHEAD_PCT: Final = 30.0
DEFAULT_INPUT_SHARE: Final = 0.7  # article 002's "70/30 input/output split"
MIN_UTILISATION_TO_EXTRAPOLATE_PCT: Final = 5.0
_MILLION: Final = 1_000_000.0
_SECONDS_PER_DAY: Final = 86_400.0

NonNegative = Annotated[float, Ge(0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ApiPrice(_Frozen):
    """An API's list price per 1M tokens, and where and when it was read (prices change)."""

    name: str = Field(min_length=1, description="Key in the price table, e.g. openai/gpt-4o.")
    input_per_million: NonNegative = Field(description="Price of 1M input (prompt) tokens.")
    output_per_million: NonNegative = Field(description="Price of 1M output (generated) tokens.")
    currency: str = "USD"
    read_on: str | None = Field(default=None, description="Date the price was read (YYYY-MM-DD).")
    source: str | None = Field(default=None, description="Where it was read.")
    kind: Literal["frontier", "hosted-open", "custom"] = "custom"

    def blended_per_million(self, input_share: float) -> float:
        """Price of 1M tokens of which `input_share` are input and the rest output."""
        return input_share * self.input_per_million + (1 - input_share) * self.output_per_million


class CostInputs(_Frozen):
    """What the box costs. Either `gpu_cost_per_hour` (rented) or `purchase_price` (owned).

    Accepted from `appliance cost` flags or a small YAML file (`cost.yaml`) with these keys.
    """

    gpu_cost_per_hour: Annotated[float, Gt(0)] | None = Field(
        default=None,
        description="Rental price of one GPU per hour (cloud or colocation), power included; "
        "multiplied by the GPUs the box uses.",
        examples=[2.0],
    )
    purchase_price: Annotated[float, Gt(0)] | None = Field(
        default=None,
        description="Price paid for the whole box (GPUs, server), spread over amortisation_months.",
        examples=[9000],
    )
    amortisation_months: Annotated[int, Ge(1), Le(240)] = Field(
        default=36, description="Months over which purchase_price is written off.", examples=[36]
    )
    electricity_per_kwh: NonNegative | None = Field(
        default=None,
        description="Electricity price per kWh; required with purchase_price. Applied to the "
        "measured GPU power draw plus host_power_watts.",
        examples=[0.30],
    )
    host_power_watts: NonNegative = Field(
        default=0.0,
        description="Power drawn by the rest of the box (CPU, fans, PSU losses), in watts.",
        examples=[150],
    )
    operations_overhead_pct: Annotated[float, Ge(0), Le(500)] = Field(
        default=DEFAULT_OPERATIONS_OVERHEAD_PCT,
        description="Added on top for operations: people's time, spares, downtime.",
        examples=[30],
    )
    capacity_tokens_per_s: Annotated[float, Gt(0)] | None = Field(
        default=None,
        description="Tokens/s (prompt + generated) the box sustains at full utilisation, e.g. "
        "from a benchmark; left out, extrapolated from the measured utilisation.",
        examples=[1100],
    )
    api: str | None = Field(
        default=None,
        description="The API being replaced: a key of the list-price table, e.g. openai/gpt-4o.",
        examples=["openai/gpt-4o"],
    )
    api_input_per_million: NonNegative | None = Field(
        default=None, description="Overrides the table's input price per 1M tokens."
    )
    api_output_per_million: NonNegative | None = Field(
        default=None, description="Overrides the table's output price per 1M tokens."
    )

    @model_validator(mode="after")
    def _one_way_to_pay(self) -> CostInputs:
        if (self.gpu_cost_per_hour is None) == (self.purchase_price is None):
            msg = (
                "give either gpu_cost_per_hour (a rented GPU) or purchase_price with "
                "electricity_per_kwh (an owned box), not both and not neither"
            )
            raise ValueError(msg)
        if self.purchase_price is not None and self.electricity_per_kwh is None:
            msg = "purchase_price needs electricity_per_kwh (0 if power is free)"
            raise ValueError(msg)
        if (self.api_input_per_million is None) != (self.api_output_per_million is None):
            msg = "give both api_input_per_million and api_output_per_million, or neither"
            raise ValueError(msg)
        return self

    @property
    def owned(self) -> bool:
        return self.purchase_price is not None


class Usage(_Frozen):
    """What the box did over a window, as the usage store sums it up.

    `observed_seconds` is the time the recorder actually saw (the monitor may not have run for
    the whole window); costs are charged for the same span, so both sides compare like with like.
    Utilisation and power are means over the observed time: utilisation averaged across GPUs,
    power summed across GPUs.
    """

    window: WindowName | None = None
    start_wall: float | None = None
    end_wall: float | None = None
    observed_seconds: NonNegative = 0.0
    prompt_tokens: NonNegative = 0.0
    generation_tokens: NonNegative = 0.0
    engine_requests: NonNegative = 0.0  # chat requests vLLM finished (its own counter)
    gpu_count: Annotated[int, Ge(0)] = 0
    gpu_utilization_pct: Annotated[float, Ge(0), Le(100)] | None = None
    gpu_power_w: NonNegative | None = None
    gpu_power_limit_w: NonNegative | None = None
    local_requests: NonNegative = 0.0  # chat requests the gateway served locally
    fallback_requests: NonNegative = 0.0  # chat requests the gateway sent to the remote API

    @property
    def total_tokens(self) -> float:
        return self.prompt_tokens + self.generation_tokens

    @property
    def tokens_per_second(self) -> float | None:
        if self.observed_seconds <= 0:
            return None
        return self.total_tokens / self.observed_seconds


class HourlyCost(_Frozen):
    """The box's cost per hour, by part."""

    hardware: float  # rental, or the purchase price written off per hour
    electricity: float  # 0 when rented (power is in the rental)
    overhead: float
    total: float


class CostReport(_Frozen):
    """Everything `appliance cost` prints; `--json` prints exactly this."""

    window: WindowName | None
    currency: str
    observed_hours: float
    # traffic
    prompt_tokens: float
    generation_tokens: float
    tokens_per_day: float | None
    input_share: float  # of the traffic, or DEFAULT_INPUT_SHARE when nothing was measured
    gpu_count: int
    gpu_utilization_pct: float | None
    gpu_power_w: float | None
    # the box
    cost_per_hour: HourlyCost
    cost_per_hour_at_full: HourlyCost
    box_cost: float  # over the observed time
    box_cost_per_day: float
    cost_per_million_measured: float | None
    cost_per_million_full: float | None
    capacity_tokens_per_s: float | None
    capacity_source: Literal["input", "extrapolated"] | None
    # the API
    api: str
    api_input_per_million: float
    api_output_per_million: float
    api_price_read_on: str | None
    api_cost_per_million: float  # at the traffic's input/output mix
    api_cost_same_traffic: float
    savings: float  # api_cost_same_traffic - box_cost (negative: the API would have been cheaper)
    break_even_tokens_per_day: float | None
    # the fallback
    local_requests: float
    fallback_requests: float
    fallback_share_pct: float | None
    fallback_spend_estimate: float | None
    verdict: str
    notes: tuple[str, ...] = ()


def _hourly(inputs: CostInputs, gpu_count: int, gpu_power_w: float | None) -> HourlyCost:
    if inputs.gpu_cost_per_hour is not None:
        hardware = inputs.gpu_cost_per_hour * max(gpu_count, 1)
        electricity = 0.0
    else:
        assert inputs.purchase_price is not None  # the validator guarantees one way to pay
        hardware = inputs.purchase_price / (inputs.amortisation_months * HOURS_PER_MONTH)
        watts = (gpu_power_w or 0.0) + inputs.host_power_watts
        electricity = watts / 1000.0 * (inputs.electricity_per_kwh or 0.0)
    overhead = (hardware + electricity) * inputs.operations_overhead_pct / 100.0
    return HourlyCost(
        hardware=hardware,
        electricity=electricity,
        overhead=overhead,
        total=hardware + electricity + overhead,
    )


def break_even_tokens_per_day(
    box_cost_per_day: float, price: ApiPrice, input_share: float = DEFAULT_INPUT_SHARE
) -> float | None:
    """Tokens/day at which the API would cost as much as the box; None if the API is free."""
    per_token = price.blended_per_million(input_share) / _MILLION
    if per_token <= 0:
        return None
    return box_cost_per_day / per_token


def _capacity(
    usage: Usage, inputs: CostInputs, notes: list[str]
) -> tuple[float | None, Literal["input", "extrapolated"] | None]:
    if inputs.capacity_tokens_per_s is not None:
        return inputs.capacity_tokens_per_s, "input"
    measured = usage.tokens_per_second
    utilisation = usage.gpu_utilization_pct
    if measured is None or measured <= 0 or utilisation is None:
        notes.append(
            "cost at full utilisation unknown: no traffic or no GPU utilisation was measured; "
            "give capacity_tokens_per_s (e.g. from a benchmark)"
        )
        return None, None
    if utilisation < MIN_UTILISATION_TO_EXTRAPOLATE_PCT:
        notes.append(
            f"cost at full utilisation unknown: mean GPU utilisation {utilisation:.1f} % is too "
            f"low to extrapolate from; give capacity_tokens_per_s"
        )
        return None, None
    notes.append(
        "full-utilisation throughput extrapolated linearly from the measured utilisation; "
        "batching usually makes the real figure higher"
    )
    return measured / (utilisation / 100.0), "extrapolated"


def _money(value: float, currency: str) -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    text = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def _tokens(value: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def _verdict(
    *,
    tokens_per_day: float | None,
    break_even: float | None,
    capacity_per_day: float | None,
    box_cost_per_day: float,
    api_per_million: float,
    api: str,
    currency: str,
) -> str:
    if break_even is None:
        return f"{api} costs nothing per token here, so the box cannot pay for itself on price."
    reach = f"break-even of {_tokens(break_even)} tokens/day against {api}"
    if capacity_per_day is not None and capacity_per_day < break_even:
        return (
            f"Cannot pay for itself: even at full utilisation ({_tokens(capacity_per_day)} "
            f"tokens/day) it stays below the {reach}; the API is cheaper."
        )
    if not tokens_per_day:
        return (
            f"No tokens served in this window: the box costs {_money(box_cost_per_day, currency)}"
            f"/day against a {reach}."
        )
    daily_api = tokens_per_day * api_per_million / _MILLION
    if tokens_per_day >= break_even:
        return (
            f"Paying for itself: {_tokens(tokens_per_day)} tokens/day is "
            f"{tokens_per_day / break_even:.1f}x the {reach}; saves about "
            f"{_money(daily_api - box_cost_per_day, currency)}/day."
        )
    return (
        f"Not paying for itself yet: {_tokens(tokens_per_day)} tokens/day is "
        f"{100 * tokens_per_day / break_even:.0f} % of the {reach}; the API would cost "
        f"{_money(box_cost_per_day - daily_api, currency)}/day less."
    )


def cost_report(usage: Usage, inputs: CostInputs, price: ApiPrice) -> CostReport:
    """The whole economics of one window. Pure; see the module doc for the model."""
    notes: list[str] = []
    currency = price.currency
    hours = usage.observed_seconds / 3600.0
    measured = _hourly(inputs, usage.gpu_count, usage.gpu_power_w)
    full_power = usage.gpu_power_limit_w if usage.gpu_power_limit_w else usage.gpu_power_w
    at_full = _hourly(inputs, usage.gpu_count, full_power)
    if inputs.owned and usage.gpu_power_w is None:
        notes.append("no GPU power reading: electricity counts host_power_watts only")
    if usage.gpu_count == 0 and not inputs.owned:
        notes.append("no GPU seen in the window: the rental is charged for one GPU")

    box_cost = measured.total * hours
    total = usage.total_tokens
    input_share = usage.prompt_tokens / total if total > 0 else DEFAULT_INPUT_SHARE
    if total <= 0:
        notes.append(
            f"no traffic measured: the API price uses a {DEFAULT_INPUT_SHARE:.0%} input mix"
        )
    tokens_per_day = total / usage.observed_seconds * _SECONDS_PER_DAY if hours > 0 else None
    if hours <= 0:
        notes.append("nothing was recorded in this window: the gateway records usage; is it up?")

    capacity, capacity_source = _capacity(usage, inputs, notes)
    per_million_measured = box_cost / total * _MILLION if total > 0 and hours > 0 else None
    per_million_full = (
        at_full.total / (capacity * 3600.0) * _MILLION if capacity is not None else None
    )

    api_per_million = price.blended_per_million(input_share)
    api_cost = (
        usage.prompt_tokens * price.input_per_million
        + usage.generation_tokens * price.output_per_million
    ) / _MILLION
    box_per_day = measured.total * 24.0
    break_even = break_even_tokens_per_day(box_per_day, price, input_share)

    chat_requests = usage.local_requests + usage.fallback_requests
    fallback_share = 100.0 * usage.fallback_requests / chat_requests if chat_requests else None
    fallback_spend: float | None = 0.0 if usage.fallback_requests == 0 else None
    per_request = usage.engine_requests or usage.local_requests
    if usage.fallback_requests > 0 and per_request > 0 and total > 0:
        fallback_spend = usage.fallback_requests * api_cost / per_request
        notes.append(
            "fallback spend is estimated: the gateway counts fallback requests, not their "
            "tokens, so each is priced at the mean tokens of a locally served request"
        )
    elif usage.fallback_requests > 0:
        notes.append("fallback spend unknown: no local request to take a mean size from")

    verdict = _verdict(
        tokens_per_day=tokens_per_day,
        break_even=break_even,
        # Only a capacity the operator measured is firm enough to say "cannot": the linear
        # extrapolation underestimates what batching achieves at full load.
        capacity_per_day=(
            capacity * _SECONDS_PER_DAY
            if capacity is not None and capacity_source == "input"
            else None
        ),
        box_cost_per_day=box_per_day,
        api_per_million=api_per_million,
        api=price.name,
        currency=currency,
    )
    return CostReport(
        window=usage.window,
        currency=currency,
        observed_hours=hours,
        prompt_tokens=usage.prompt_tokens,
        generation_tokens=usage.generation_tokens,
        tokens_per_day=tokens_per_day,
        input_share=input_share,
        gpu_count=usage.gpu_count,
        gpu_utilization_pct=usage.gpu_utilization_pct,
        gpu_power_w=usage.gpu_power_w,
        cost_per_hour=measured,
        cost_per_hour_at_full=at_full,
        box_cost=box_cost,
        box_cost_per_day=box_per_day,
        cost_per_million_measured=per_million_measured,
        cost_per_million_full=per_million_full,
        capacity_tokens_per_s=capacity,
        capacity_source=capacity_source,
        api=price.name,
        api_input_per_million=price.input_per_million,
        api_output_per_million=price.output_per_million,
        api_price_read_on=price.read_on,
        api_cost_per_million=api_per_million,
        api_cost_same_traffic=api_cost,
        savings=api_cost - box_cost,
        break_even_tokens_per_day=break_even,
        local_requests=usage.local_requests,
        fallback_requests=usage.fallback_requests,
        fallback_share_pct=fallback_share,
        fallback_spend_estimate=fallback_spend,
        verdict=verdict,
        notes=tuple(notes),
    )
