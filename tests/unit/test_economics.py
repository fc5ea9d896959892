"""The economics against hand calculations and against the reference articles' own figures.

Article 000 (shared/reference/000_*): "H100 at 100% utilization: $2/hr -> $0.50/Mtok (great).
H100 at 10% utilization: $2/hr -> $5/Mtok (terrible)."
Article 002 (shared/reference/002_*): "self-hosting a 70B model on an A100 80GB spot instance
(~$2.50/hr) breaks even around 5M tokens/day [against frontier APIs, ~$3-15/1M tokens], assuming
a 70/30 input/output split. Against hosted open-model APIs ... at ~$0.50-0.90/1M tokens, that
break-even jumps to 50M+ tokens/day."
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from appliance.cost import (
    cost_inputs_from,
    load_list_prices,
    render_cost,
    resolve_price,
)
from appliance.economics import (
    HOURS_PER_MONTH,
    ApiPrice,
    CostInputs,
    CostReport,
    Usage,
    break_even_tokens_per_day,
    cost_report,
)
from appliance.errors import BadInputError

DAY = 86_400.0
SONNET = ApiPrice(name="sonnet", input_per_million=3.0, output_per_million=15.0)


def _usage(**changes: object) -> Usage:
    base: dict[str, object] = {
        "window": "day",
        "observed_seconds": DAY,
        "prompt_tokens": 7_000_000.0,
        "generation_tokens": 3_000_000.0,
        "engine_requests": 10_000.0,
        "gpu_count": 1,
        "gpu_utilization_pct": 50.0,
        "gpu_power_w": 300.0,
        "gpu_power_limit_w": 450.0,
        "local_requests": 10_000.0,
        "fallback_requests": 0.0,
    }
    base.update(changes)
    return Usage.model_validate(base)


# ------------------------------------------------------------------ the articles' figures


def test_article_000_h100_at_10_and_100_percent_utilisation() -> None:
    """$2/h H100, ~1111 tokens/s at 100 %: $0.50/Mtok at full, $5/Mtok at 10 %."""
    full_tokens_per_s = 2.0 / 0.50 * 1e6 / 3600  # what "$0.50/Mtok at $2/h" implies
    hour = 3600.0
    usage = _usage(
        observed_seconds=hour,
        prompt_tokens=0.7 * full_tokens_per_s * 0.1 * hour,
        generation_tokens=0.3 * full_tokens_per_s * 0.1 * hour,
        gpu_utilization_pct=10.0,
    )
    inputs = CostInputs(gpu_cost_per_hour=2.0, operations_overhead_pct=0)
    report = cost_report(usage, inputs, SONNET)
    assert report.cost_per_million_measured == pytest.approx(5.0)
    assert report.cost_per_million_full == pytest.approx(0.50)
    assert report.capacity_source == "extrapolated"
    # The article's "add 30-50 %": the default overhead adds 30 %.
    with_ops = cost_report(usage, CostInputs(gpu_cost_per_hour=2.0), SONNET)
    assert with_ops.cost_per_million_measured == pytest.approx(6.5)


def test_article_002_break_even_against_frontier_and_hosted_open_apis() -> None:
    """A100 spot at $2.50/h, 70/30 mix: ~5M tokens/day vs frontier, 50M+ vs hosted open."""
    prices = load_list_prices()
    box_per_day = 2.50 * 24
    opus = prices.price("anthropic/claude-opus-4.5")  # $5 / $25
    sonnet = prices.price("anthropic/claude-sonnet-4.5")  # $3 / $15
    together = prices.price("together/llama-3.3-70b-instruct-turbo")  # $0.88 / $0.88

    at_opus = break_even_tokens_per_day(box_per_day, opus, 0.7)
    at_sonnet = break_even_tokens_per_day(box_per_day, sonnet, 0.7)
    at_together = break_even_tokens_per_day(box_per_day, together, 0.7)
    assert at_opus == pytest.approx(60 / 11.0 * 1e6)  # 5.45M: the article's "~5M"
    assert at_sonnet == pytest.approx(60 / 6.6 * 1e6)  # 9.1M at the $3/$15 end of "$3-15"
    assert at_opus is not None
    assert at_sonnet is not None
    assert at_together is not None
    assert 3e6 < at_opus < 10e6
    assert 50e6 <= at_together < 100e6  # "50M+"
    assert 5 < at_together / at_opus < 15  # "the 10x difference in the crossover point"


def test_article_002_break_even_through_the_report() -> None:
    usage = _usage(prompt_tokens=0.0, generation_tokens=0.0, gpu_utilization_pct=None)
    opus = load_list_prices().price("anthropic/claude-opus-4.5")
    report = cost_report(usage, CostInputs(gpu_cost_per_hour=2.5, operations_overhead_pct=0), opus)
    assert report.input_share == pytest.approx(0.7)  # nothing measured: the article's mix
    assert report.break_even_tokens_per_day == pytest.approx(5.4545e6, rel=1e-3)
    assert report.verdict.startswith("No tokens served in this window")


# ------------------------------------------------------------------ hand calculations


def test_owned_box_hand_calculation() -> None:
    """An owned RTX 4090 box: every figure worked out by hand."""
    inputs = CostInputs(
        purchase_price=4380.0,  # / (12 months x 730 h) = $0.50/h
        amortisation_months=12,
        electricity_per_kwh=0.40,
        host_power_watts=100.0,
        operations_overhead_pct=30.0,
    )
    usage = _usage(
        gpu_power_w=300.0,  # + 100 W host = 0.4 kW x $0.40 = $0.16/h
        gpu_power_limit_w=450.0,  # + 100 W = 0.55 kW x $0.40 = $0.22/h at full
        gpu_utilization_pct=40.0,
        prompt_tokens=6_000_000.0,
        generation_tokens=2_000_000.0,
        engine_requests=8_000.0,
        local_requests=7_500.0,
        fallback_requests=500.0,
    )
    price = ApiPrice(name="api", input_per_million=2.0, output_per_million=8.0)
    report = cost_report(usage, inputs, price)

    assert HOURS_PER_MONTH == 730.0
    assert report.cost_per_hour.hardware == pytest.approx(0.50)
    assert report.cost_per_hour.electricity == pytest.approx(0.16)
    assert report.cost_per_hour.overhead == pytest.approx(0.66 * 0.3)
    assert report.cost_per_hour.total == pytest.approx(0.858)
    assert report.cost_per_hour_at_full.total == pytest.approx((0.50 + 0.22) * 1.3)
    assert report.box_cost == pytest.approx(0.858 * 24)  # 20.592
    assert report.box_cost_per_day == pytest.approx(20.592)
    # 8M tokens in the day
    assert report.tokens_per_day == pytest.approx(8e6)
    assert report.cost_per_million_measured == pytest.approx(20.592 / 8)
    # capacity: 8M/86400 tokens/s at 40 % -> 20M/day at 100 %
    assert report.capacity_tokens_per_s == pytest.approx(20e6 / DAY)
    assert report.cost_per_million_full == pytest.approx(0.936 * 24 / 20)
    # the API: 6M x $2 + 2M x $8 = $28; mix 75/25 -> $3.50 per 1M
    assert report.api_cost_same_traffic == pytest.approx(28.0)
    assert report.api_cost_per_million == pytest.approx(3.5)
    assert report.savings == pytest.approx(28.0 - 20.592)
    assert report.break_even_tokens_per_day == pytest.approx(20.592 / 3.5 * 1e6)
    # fallback: 500 of 8000 chat requests, each priced at the mean local one ($28 / 8000)
    assert report.fallback_share_pct == pytest.approx(500 / 8000 * 100)
    assert report.fallback_spend_estimate == pytest.approx(500 * 28.0 / 8000)
    assert report.verdict.startswith("Paying for itself: 8M tokens/day is 1.4x the break-even")
    assert any("fallback spend is estimated" in note for note in report.notes)


def test_rented_multi_gpu_box_is_charged_per_gpu_and_power_is_in_the_price() -> None:
    usage = _usage(gpu_count=4, gpu_power_w=1600.0)
    report = cost_report(
        usage, CostInputs(gpu_cost_per_hour=2.0, operations_overhead_pct=0), SONNET
    )
    assert report.cost_per_hour.hardware == pytest.approx(8.0)
    assert report.cost_per_hour.electricity == 0.0


def test_capacity_from_the_operator_wins_over_extrapolation() -> None:
    inputs = CostInputs(
        gpu_cost_per_hour=2.0, operations_overhead_pct=0, capacity_tokens_per_s=1000
    )
    report = cost_report(_usage(), inputs, SONNET)
    assert report.capacity_source == "input"
    assert report.cost_per_million_full == pytest.approx(2.0 / 3.6)


def test_too_little_utilisation_to_extrapolate_says_so() -> None:
    report = cost_report(_usage(gpu_utilization_pct=2.0), CostInputs(gpu_cost_per_hour=2.0), SONNET)
    assert report.cost_per_million_full is None
    assert any("too low to extrapolate" in note for note in report.notes)


def test_a_box_that_cannot_reach_break_even_even_when_full() -> None:
    # $20/h against a $0.10/1M API: break-even 4.8B/day; capacity 1000 tokens/s = 86M/day.
    cheap = ApiPrice(name="cheap", input_per_million=0.10, output_per_million=0.10)
    inputs = CostInputs(
        gpu_cost_per_hour=20.0, operations_overhead_pct=0, capacity_tokens_per_s=1e3
    )
    report = cost_report(_usage(), inputs, cheap)
    assert report.verdict.startswith("Cannot pay for itself")


def test_not_paying_for_itself_yet() -> None:
    report = cost_report(
        _usage(prompt_tokens=700_000.0, generation_tokens=300_000.0),
        CostInputs(gpu_cost_per_hour=2.5),
        SONNET,
    )
    assert report.verdict.startswith("Not paying for itself yet: 1M tokens/day is")
    assert report.savings < 0


def test_nothing_recorded_gives_no_invented_numbers() -> None:
    report = cost_report(Usage(), CostInputs(gpu_cost_per_hour=2.0), SONNET)
    assert report.tokens_per_day is None
    assert report.cost_per_million_measured is None
    assert report.cost_per_million_full is None
    assert report.box_cost == 0.0
    assert any("nothing was recorded" in note for note in report.notes)


def test_report_round_trips_through_json() -> None:
    report = cost_report(_usage(), CostInputs(gpu_cost_per_hour=2.0), SONNET)
    again = CostReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert json.loads(report.model_dump_json())["verdict"] == report.verdict
    text = render_cost(report)
    assert text.splitlines()[0] == report.verdict
    assert "break-even" in text


@given(
    cost=st.floats(0.1, 50.0),
    tokens=st.floats(1e3, 1e10),
    share=st.floats(0.0, 1.0),
    price_in=st.floats(0.01, 100.0),
    price_out=st.floats(0.01, 100.0),
)
def test_at_break_even_the_api_costs_what_the_box_costs(
    cost: float, tokens: float, share: float, price_in: float, price_out: float
) -> None:
    price = ApiPrice(name="x", input_per_million=price_in, output_per_million=price_out)
    usage = _usage(prompt_tokens=tokens * share, generation_tokens=tokens * (1 - share))
    report = cost_report(usage, CostInputs(gpu_cost_per_hour=cost), price)
    assert report.break_even_tokens_per_day is not None
    api_at_break_even = report.break_even_tokens_per_day * report.api_cost_per_million / 1e6
    assert api_at_break_even == pytest.approx(report.box_cost_per_day, rel=1e-9)
    # paying for itself exactly when the traffic is past break-even
    assert (report.savings >= 0) == (tokens >= report.break_even_tokens_per_day) or (
        abs(tokens - report.break_even_tokens_per_day) / tokens < 1e-9
    )


# ------------------------------------------------------------------ inputs and prices


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"gpu_cost_per_hour": 2.0, "purchase_price": 9000.0, "electricity_per_kwh": 0.3},
        {"purchase_price": 9000.0},
        {"gpu_cost_per_hour": 2.0, "api_input_per_million": 1.0},
        {"gpu_cost_per_hour": -1.0},
        {"gpu_cost_per_hour": 2.0, "unknown": 1},
    ],
)
def test_impossible_cost_inputs_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CostInputs.model_validate(data)


def test_flags_lay_over_the_cost_file() -> None:
    owned = CostInputs(purchase_price=9000.0, electricity_per_kwh=0.3, api="openai/gpt-4o")
    rented = cost_inputs_from(owned, gpu_cost_per_hour=2.0, operations_overhead_pct=None)
    assert rented.purchase_price is None
    assert rented.gpu_cost_per_hour == 2.0
    assert rented.api == "openai/gpt-4o"
    with pytest.raises(BadInputError, match="cost inputs are incomplete"):
        cost_inputs_from(None, operations_overhead_pct=40.0)


def test_price_table_is_dated_and_sourced() -> None:
    table = load_list_prices()
    assert table.currency == "USD"
    assert len(table.prices) >= 8
    for name, entry in table.prices.items():
        assert "/" in name
        assert entry.read_on
        assert entry.source
        assert entry.kind in ("frontier", "hosted-open")
        assert entry.output_per_million >= entry.input_per_million > 0


def test_explicit_prices_win_and_unknown_names_get_a_hint() -> None:
    given_prices = CostInputs(
        gpu_cost_per_hour=2.0, api_input_per_million=1.0, api_output_per_million=2.0
    )
    price = resolve_price(given_prices)
    assert (price.input_per_million, price.output_per_million) == (1.0, 2.0)
    with pytest.raises(BadInputError, match="no list price") as caught:
        resolve_price(CostInputs(gpu_cost_per_hour=2.0, api="openai/gpt4o"))
    assert caught.value.hint is not None
    assert "openai/gpt-4o" in caught.value.hint


@pytest.mark.parametrize(
    ("name", "api"),
    [
        ("rtx4090-chat", "openai/gpt-4o-mini"),
        ("2x4090-chat", "mistral/mistral-small"),
        ("a100-80g-70b", "openai/gpt-4o"),
        ("h100-70b-fp8", "openai/gpt-4o"),
        ("l40s-rag", "together/qwen2.5-72b-instruct-turbo"),
    ],
)
def test_the_api_a_profile_falls_back_to_is_the_one_it_replaces(name: str, api: str) -> None:
    from pathlib import Path

    from appliance.cost import api_for_profile
    from appliance.profile import load_profile

    root = Path(__file__).resolve().parents[2]
    profile = load_profile(root / "profiles" / f"{name}.yaml")
    assert api_for_profile(profile) == api
    from appliance.profile import FallbackSpec

    gateway = profile.spec.gateway.model_copy(update={"fallback": FallbackSpec()})
    spec = profile.spec.model_copy(update={"gateway": gateway})
    no_remote = profile.model_copy(update={"spec": spec})
    assert api_for_profile(no_remote) is None
