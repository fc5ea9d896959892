"""The switching policy (appliance.gateway.switching) rule by rule: pure, no engine."""

from __future__ import annotations

import pytest

from appliance.gateway.switching import (
    CONTROL_PATHS,
    Admission,
    ControlCall,
    SwitchRules,
    admit,
    held_goes_remote,
    idle_sleep_due,
    initial_state,
    level_of,
    may_sleep,
    next_to_wake,
    retry_after_s,
    sleep_calls,
    wake_calls,
)
from appliance.vocabulary import FallbackMode, ModelState

RULES = SwitchRules(hold_max_requests=2, hold_timeout_s=2.5, drain_grace_s=5, idle_sleep_s=60)


@pytest.mark.parametrize(
    ("state", "draining", "held", "expected"),
    [
        ("awake", False, 0, Admission.FORWARD),
        ("awake", False, 99, Admission.FORWARD),  # a full queue never stops an awake model
        ("awake", True, 0, Admission.HOLD),  # being drained for a switch: not any more
        ("asleep-1", False, 0, Admission.HOLD),
        ("asleep-2", False, 1, Admission.HOLD),
        ("waking", False, 1, Admission.HOLD),
        ("sleeping", False, 0, Admission.HOLD),
        ("asleep-1", False, 2, Admission.FULL),
        ("waking", False, 3, Admission.FULL),
    ],
)
def test_admit(state: ModelState, draining: bool, held: int, expected: Admission) -> None:
    assert admit(state, draining=draining, held_total=held, rules=RULES) is expected


def test_a_pinned_model_refuses_a_switch_but_not_its_own_requests() -> None:
    pinned = {"draining": False, "held_total": 0, "rules": RULES, "pinned_elsewhere": True}
    assert admit("asleep-1", **pinned) is Admission.PINNED  # type: ignore[arg-type]
    assert admit("awake", **pinned) is Admission.FORWARD  # type: ignore[arg-type]
    due = {"in_flight": 0, "held_total": 0, "idle_for_s": 1e9, "rules": RULES}
    assert not idle_sleep_due("awake", **due, pinned=True)  # type: ignore[arg-type]


def test_next_to_wake_is_the_longest_waiting() -> None:
    assert next_to_wake({}) is None
    assert next_to_wake({"b": 2.0, "a": 3.0}) == "b"
    assert next_to_wake({"b": 1.0, "a": 1.0}) == "a"


def test_drain_ends_when_requests_finish_or_grace_is_over() -> None:
    assert may_sleep(0, 0.0, RULES)
    assert not may_sleep(1, 4.9, RULES)
    assert may_sleep(1, 5.0, RULES)


def test_idle_sleep() -> None:
    due = {"in_flight": 0, "held_total": 0, "idle_for_s": 60.0, "rules": RULES}
    assert idle_sleep_due("awake", **due)  # type: ignore[arg-type]
    assert not idle_sleep_due("asleep-1", **due)  # type: ignore[arg-type]
    assert not idle_sleep_due("awake", **{**due, "in_flight": 1})  # type: ignore[arg-type]
    assert not idle_sleep_due("awake", **{**due, "held_total": 1})  # type: ignore[arg-type]
    assert not idle_sleep_due("awake", **{**due, "idle_for_s": 59.0})  # type: ignore[arg-type]
    never = SwitchRules(idle_sleep_s=None)
    assert not idle_sleep_due("awake", in_flight=0, held_total=0, idle_for_s=1e9, rules=never)


def test_level_one_wakes_in_one_call() -> None:
    assert sleep_calls(1) == (ControlCall(b"POST", b"/sleep?level=1"),)
    assert wake_calls(1) == (ControlCall(b"POST", b"/wake_up"),)


def test_level_two_wakes_weights_then_reloads_then_kv_cache() -> None:
    assert sleep_calls(2) == (ControlCall(b"POST", b"/sleep?level=2"),)
    assert [(c.path, c.body) for c in wake_calls(2)] == [
        (b"/wake_up?tags=weights", b""),
        (b"/collective_rpc", b'{"method": "reload_weights"}'),
        (b"/wake_up?tags=kv_cache", b""),
    ]


def test_every_control_call_is_a_control_path() -> None:
    calls = [*sleep_calls(1), *sleep_calls(2), *wake_calls(1), *wake_calls(2)]
    assert {c.path.split(b"?")[0] for c in calls} <= CONTROL_PATHS


def test_states_and_levels() -> None:
    assert level_of("asleep-2", 1) == 2
    assert level_of("asleep-1", 2) == 1
    assert level_of("awake", 2) == 2
    assert initial_state(True, expected_awake=True, level=2) == "asleep-2"
    assert initial_state(False, expected_awake=False, level=1) == "awake"
    assert initial_state(None, expected_awake=True, level=1) == "awake"
    assert initial_state(None, expected_awake=False, level=1) == "asleep-1"


def test_refused_requests_go_remote_only_in_auto_for_a_model_it_serves() -> None:
    assert held_goes_remote(FallbackMode.AUTO, remote_configured=True, served_remotely=True)
    assert not held_goes_remote(FallbackMode.OFF, remote_configured=True, served_remotely=True)
    assert not held_goes_remote(FallbackMode.AUTO, remote_configured=False, served_remotely=True)
    assert not held_goes_remote(FallbackMode.AUTO, remote_configured=True, served_remotely=False)


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after_s(RULES) == 3
    assert retry_after_s(SwitchRules(hold_timeout_s=0.1)) == 1
