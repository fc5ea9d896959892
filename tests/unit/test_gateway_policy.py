"""The routing policy and the rate limiter are pure: every rule is checked for all inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import BadInputError
from appliance.gateway.policy import (
    Destination,
    FallbackMode,
    LoadReading,
    LocalFailure,
    Reason,
    RoutingRules,
    after_local_answer,
    after_local_failure,
    choose_route,
)
from appliance.gateway.ratelimit import RateLimiter, retry_after_header

RULES = RoutingRules(
    remote_configured=True, queue_threshold=16, max_signal_age_s=5.0, failure_cooldown_s=2.0
)

readings = st.builds(
    LoadReading,
    waiting_requests=st.none() | st.integers(0, 1000),
    healthy=st.none() | st.booleans(),
    age_seconds=st.none() | st.floats(-1, 100, allow_nan=False),
)
rules = st.builds(
    RoutingRules,
    remote_configured=st.booleans(),
    queue_threshold=st.none() | st.integers(0, 100),
    max_signal_age_s=st.floats(0, 60, allow_nan=False),
    failure_cooldown_s=st.floats(0, 60, allow_nan=False),
)
since = st.none() | st.floats(0, 100, allow_nan=False)


@given(rules, readings, since)
def test_off_never_routes_remote(rules_, reading, since_failure) -> None:
    route = choose_route(
        FallbackMode.OFF, rules_, reading, seconds_since_local_failure=since_failure
    )
    assert route.destination is Destination.LOCAL


@given(rules, readings, since)
def test_always_routes_remote_whenever_a_remote_exists(rules_, reading, since_failure) -> None:
    route = choose_route(
        FallbackMode.ALWAYS, rules_, reading, seconds_since_local_failure=since_failure
    )
    if rules_.remote_configured:
        assert route.destination is Destination.REMOTE
        assert route.reason is Reason.MODE_ALWAYS
    else:
        assert route.destination is Destination.LOCAL


@given(rules, readings, since)
def test_auto_goes_remote_only_for_a_documented_reason(rules_, reading, since_failure) -> None:
    route = choose_route(
        FallbackMode.AUTO, rules_, reading, seconds_since_local_failure=since_failure
    )
    if route.destination is Destination.LOCAL:
        assert route.reason is Reason.LOCAL
        return
    assert rules_.remote_configured
    fresh = reading.age_seconds is not None and 0 <= reading.age_seconds <= rules_.max_signal_age_s
    if route.reason is Reason.UNHEALTHY:
        assert fresh
        assert reading.healthy is False
    elif route.reason is Reason.QUEUE:
        assert fresh
        assert rules_.queue_threshold is not None
        assert reading.waiting_requests is not None
        assert reading.waiting_requests > rules_.queue_threshold
    else:
        assert route.reason is Reason.RECENT_FAILURE
        assert since_failure is not None
        assert since_failure < rules_.failure_cooldown_s


@given(readings)
def test_stale_readings_never_move_traffic(reading) -> None:
    stale = LoadReading(reading.waiting_requests, reading.healthy, age_seconds=5.001)
    route = choose_route(FallbackMode.AUTO, RULES, stale, seconds_since_local_failure=None)
    assert route.destination is Destination.LOCAL


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (LoadReading(waiting_requests=0, healthy=True, age_seconds=0.5), Reason.LOCAL),
        (LoadReading(waiting_requests=16, healthy=True, age_seconds=0.5), Reason.LOCAL),
        (LoadReading(waiting_requests=17, healthy=True, age_seconds=0.5), Reason.QUEUE),
        (LoadReading(waiting_requests=None, healthy=False, age_seconds=0.5), Reason.UNHEALTHY),
        (LoadReading(waiting_requests=99, healthy=True, age_seconds=30), Reason.LOCAL),
        (LoadReading(), Reason.LOCAL),
    ],
)
def test_auto_examples(reading: LoadReading, reason: Reason) -> None:
    route = choose_route(FallbackMode.AUTO, RULES, reading, seconds_since_local_failure=None)
    assert route.reason is reason


def test_recent_failure_opens_the_circuit_until_a_newer_healthy_reading() -> None:
    unknown = LoadReading()
    assert (
        choose_route(FallbackMode.AUTO, RULES, unknown, seconds_since_local_failure=0.5).reason
        is Reason.RECENT_FAILURE
    )
    assert (
        choose_route(FallbackMode.AUTO, RULES, unknown, seconds_since_local_failure=2.5).reason
        is Reason.LOCAL
    )
    healed = LoadReading(waiting_requests=0, healthy=True, age_seconds=0.1)
    assert (
        choose_route(FallbackMode.AUTO, RULES, healed, seconds_since_local_failure=0.5).reason
        is Reason.LOCAL
    )
    older = LoadReading(waiting_requests=0, healthy=True, age_seconds=1.0)
    assert (
        choose_route(FallbackMode.AUTO, RULES, older, seconds_since_local_failure=0.5).reason
        is Reason.RECENT_FAILURE
    )


@given(
    st.sampled_from(FallbackMode),
    rules,
    st.sampled_from(LocalFailure),
    st.integers(0, 10_000),
    st.booleans(),
)
def test_never_retried_after_a_byte_reached_the_client(mode, rules_, failure, sent, served) -> None:
    route = after_local_failure(
        mode, rules_, failure, bytes_sent_to_client=sent, model_served_remotely=served
    )
    if route is not None:
        assert sent == 0
        assert mode is FallbackMode.AUTO
        assert rules_.remote_configured
        assert route.destination is Destination.REMOTE
    elif mode is FallbackMode.AUTO and rules_.remote_configured and sent == 0:
        assert failure is LocalFailure.MODEL_NOT_FOUND
        assert not served


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (LocalFailure.CONNECT, Reason.CONNECT_FAILED),
        (LocalFailure.TIMEOUT, Reason.TIMEOUT),
        (LocalFailure.SERVER_ERROR, Reason.SERVER_ERROR),
        (LocalFailure.MODEL_NOT_FOUND, Reason.MODEL_NOT_LOCAL),
    ],
)
def test_each_failure_has_its_reason(failure: LocalFailure, reason: Reason) -> None:
    route = after_local_failure(FallbackMode.AUTO, RULES, failure, bytes_sent_to_client=0)
    assert route is not None
    assert route.reason is reason


def test_mode_parsing() -> None:
    assert FallbackMode.parse(" Auto ") is FallbackMode.AUTO
    with pytest.raises(BadInputError) as refused:
        FallbackMode.parse("sometimes")
    assert "off | auto | always" in refused.value.render()


# ---------------------------------------------------------------------------------- rate limit


def test_rate_limit_bursts_then_refills() -> None:
    limiter = RateLimiter()
    assert [limiter.check("k", 3, now=100.0) for _ in range(3)] == [None, None, None]
    wait = limiter.check("k", 3, now=100.0)
    assert wait == pytest.approx(20.0)  # one request per 20 s at 3/min
    assert retry_after_header(wait) == "20"
    assert limiter.check("k", 3, now=110.0) is not None
    assert limiter.check("k", 3, now=120.5) is None
    assert limiter.check("other", 3, now=120.5) is None  # buckets are per key


@given(st.integers(1, 600), st.lists(st.floats(0, 5, allow_nan=False), max_size=200))
def test_rate_limit_never_allows_more_than_burst_plus_refill(per_minute, gaps) -> None:
    limiter = RateLimiter()
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        wait = limiter.check("k", per_minute, now)
        if wait is None:
            allowed += 1
        else:
            assert wait > 0
            assert int(retry_after_header(wait)) >= 1
    assert allowed <= per_minute + now * per_minute / 60.0 + 1e-6


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


def test_policy_and_the_cli_facing_modules_load_no_io_library() -> None:
    """The policy is pure, and `appliance keys` / `appliance fallback` must start fast."""
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "import appliance.gateway.policy, appliance.gateway.ratelimit\n"
        "import appliance.gateway.keys, appliance.gateway.state, appliance.gateway.config\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    heavy = {
        "httpx",
        "httptools",
        "uvicorn",
        "uvloop",
        "starlette",
        "prometheus_client",
        "pydantic",
    }
    assert not loaded & heavy


@pytest.mark.parametrize(
    ("mode", "status", "served", "failure", "reason"),
    [
        (FallbackMode.AUTO, 200, False, None, None),
        (FallbackMode.AUTO, 400, True, None, None),
        (FallbackMode.AUTO, 503, False, LocalFailure.SERVER_ERROR, Reason.SERVER_ERROR),
        (FallbackMode.OFF, 503, False, LocalFailure.SERVER_ERROR, None),  # the client gets it
        (FallbackMode.AUTO, 404, True, LocalFailure.MODEL_NOT_FOUND, Reason.MODEL_NOT_LOCAL),
        (FallbackMode.AUTO, 404, False, None, None),  # nobody serves it: the 404 is the answer
        (FallbackMode.OFF, 404, True, None, None),
    ],
)
def test_the_decision_after_a_local_answer_is_one_pure_function(
    mode: FallbackMode,
    status: int,
    served: bool,
    failure: LocalFailure | None,
    reason: Reason | None,
) -> None:
    verdict = after_local_answer(mode, RULES, status, model_served_remotely=served)
    assert verdict.failure is failure
    assert (verdict.fallback.reason if verdict.fallback else None) is reason


@given(rules, st.sampled_from(list(FallbackMode)), st.integers(100, 599), st.booleans())
def test_a_local_answer_goes_remote_only_when_a_remote_is_configured_and_mode_allows(
    rules_: RoutingRules, mode: FallbackMode, status: int, served: bool
) -> None:
    verdict = after_local_answer(mode, rules_, status, model_served_remotely=served)
    if verdict.fallback is not None:
        assert rules_.remote_configured
        assert mode is FallbackMode.AUTO
        assert verdict.fallback.destination is Destination.REMOTE
