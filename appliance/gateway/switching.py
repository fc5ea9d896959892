"""Several chat models on one box (spec.switching, issue #19): the switching policy, pure.

One model is awake; the others sleep in vLLM's sleep mode. What to do with a request, when a
draining model may be put to sleep, which model to wake next, when an idle model sleeps, and
which calls wake or sleep an engine are decided here, with no IO and no clock of its own, so
every rule is tested without an engine. `appliance.gateway.switcher` carries the decisions out.

What must stay true:
- A request is forwarded only to an engine that is awake and not being drained for a switch;
  anything else is held (bounded by `hold_max_requests` and `hold_timeout_s`) or refused.
- At most one model is awake: the awake one is put to sleep before another one is woken.
- The engine control routes (`CONTROL_PATHS`) are called by the gateway itself and never
  reached by a client request (the gateway proxies only its fixed OpenAI routes).

The wake sequences are vLLM's (docs/features/sleep_mode.md): level 1 is one `POST /wake_up`;
level 2 is `POST /wake_up?tags=weights`, `POST /collective_rpc {"method": "reload_weights"}`,
then `POST /wake_up?tags=kv_cache` (the weights were discarded, so they are reloaded in place
before the KV cache is allocated again).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from appliance.vocabulary import FallbackMode, ModelState, SleepLevel

# vLLM's development-mode routes behind sleep mode: only the gateway calls them.
CONTROL_PATHS: Final = frozenset({b"/sleep", b"/wake_up", b"/collective_rpc", b"/is_sleeping"})


@dataclass(frozen=True)
class SwitchRules:
    """The profile's spec.switching numbers, as the policy uses them."""

    sleep_level: SleepLevel = 1
    hold_max_requests: int = 64
    hold_timeout_s: float = 60.0
    drain_grace_s: float = 10.0
    idle_sleep_s: float | None = None


class Admission(enum.StrEnum):
    """What happens to a request for one of the switched models, decided on arrival."""

    FORWARD = "forward"  # its engine is awake and stays so: send it now
    HOLD = "hold"  # wait for the switch that wakes its engine
    FULL = "full"  # the held requests are at their bound: refuse (503, or the remote API)
    PINNED = "pinned"  # an admin pinned another model awake: refuse (503, or the remote API)


def admit(
    state: ModelState,
    *,
    draining: bool,
    held_total: int,
    rules: SwitchRules,
    pinned_elsewhere: bool = False,
) -> Admission:
    """Forward to an awake engine that is not being drained; refuse a sleeping one while an
    admin keeps another model pinned awake (no switch may put it to sleep); else hold while
    there is room."""
    if state == "awake" and not draining:
        return Admission.FORWARD
    if pinned_elsewhere:
        return Admission.PINNED
    if held_total >= rules.hold_max_requests:
        return Admission.FULL
    return Admission.HOLD


def next_to_wake(first_held_at: Mapping[str, float]) -> str | None:
    """The model whose oldest held request has waited longest (ties: by name), so no model's
    requests are starved by a busier one's; None when nothing is held."""
    if not first_held_at:
        return None
    return min(first_held_at, key=lambda name: (first_held_at[name], name))


def may_sleep(in_flight: int, draining_for_s: float, rules: SwitchRules) -> bool:
    """A drained engine may be put to sleep once its requests have finished, or once the grace
    period is over (vLLM's default sleep mode, "abort", then ends the rest)."""
    return in_flight <= 0 or draining_for_s >= rules.drain_grace_s


def idle_sleep_due(
    state: ModelState,
    *,
    in_flight: int,
    held_total: int,
    idle_for_s: float,
    rules: SwitchRules,
    pinned: bool = False,
) -> bool:
    """Whether an awake engine that nobody uses should go to sleep (spec.switching's
    idle_sleep_seconds); never while it serves, while requests are held for a switch, or
    while an admin has pinned it awake."""
    return (
        not pinned
        and rules.idle_sleep_s is not None
        and state == "awake"
        and in_flight <= 0
        and held_total == 0
        and idle_for_s >= rules.idle_sleep_s
    )


def asleep(level: SleepLevel) -> ModelState:
    return "asleep-1" if level == 1 else "asleep-2"


def level_of(state: ModelState, default: SleepLevel) -> SleepLevel:
    """The level a sleeping engine sleeps at, which decides how it is woken."""
    if state == "asleep-1":
        return 1
    if state == "asleep-2":
        return 2
    return default


def initial_state(
    is_sleeping: bool | None, *, expected_awake: bool, level: SleepLevel
) -> ModelState:
    """An engine's state at the gateway's start, from its /is_sleeping (None: not readable, so
    what apply leaves: spec.model awake, the others asleep)."""
    if is_sleeping is None:
        return "awake" if expected_awake else asleep(level)
    return asleep(level) if is_sleeping else "awake"


@dataclass(frozen=True)
class ControlCall:
    """One call to an engine's sleep-mode routes, relative to its origin."""

    method: bytes
    path: bytes
    body: bytes = b""


IS_SLEEPING: Final = ControlCall(b"GET", b"/is_sleeping")


def sleep_calls(level: SleepLevel) -> tuple[ControlCall, ...]:
    """Put an engine to sleep. vLLM's default mode ("abort") ends what is still running, which
    the gateway reaches only after the drain's grace period."""
    return (ControlCall(b"POST", b"/sleep?level=%d" % level),)


_RELOAD_WEIGHTS: Final = b'{"method": "reload_weights"}'


def wake_calls(level: SleepLevel) -> tuple[ControlCall, ...]:
    """Wake an engine that sleeps at `level` (see the module docstring)."""
    if level == 1:
        return (ControlCall(b"POST", b"/wake_up"),)
    return (
        ControlCall(b"POST", b"/wake_up?tags=weights"),
        ControlCall(b"POST", b"/collective_rpc", _RELOAD_WEIGHTS),
        ControlCall(b"POST", b"/wake_up?tags=kv_cache"),
    )


def retry_after_s(rules: SwitchRules) -> int:
    """Retry-After for a request refused while a model wakes: the hold bound, whole seconds."""
    return max(1, math.ceil(rules.hold_timeout_s))


def held_goes_remote(mode: FallbackMode, *, remote_configured: bool, served_remotely: bool) -> bool:
    """Whether a request that could not be held (queue full, or its model did not wake in
    time) goes to the remote API: only in auto mode, and only for a model it serves; otherwise
    the client gets a 503 with Retry-After."""
    return mode is FallbackMode.AUTO and remote_configured and served_remotely
