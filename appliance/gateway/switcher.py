"""Several chat models on one box: the gateway's side of vLLM's sleep mode (issue #19).

`ModelSwitcher` carries out what `appliance.gateway.switching` decides. A request for an awake
model passes with two counter updates (`acquire` / `release`). A request for a sleeping one is
held; one switch task at a time drains the awake engine (until its requests finish, or the grace
period ends), puts it to sleep, wakes the wanted one with vLLM's sequence for its level, and then
releases every request held for it. Idle engines sleep after the profile's TTL.

Everything runs on the gateway's event loop: state changes happen between awaits, so a check
and the counter update that follows it can never interleave with another request's. The engine
control routes are called here, at the engines' origins on 127.0.0.1; no client path leads here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from appliance.gateway.switching import (
    IS_SLEEPING,
    Admission,
    ControlCall,
    SwitchRules,
    admit,
    asleep,
    idle_sleep_due,
    initial_state,
    level_of,
    may_sleep,
    next_to_wake,
    sleep_calls,
    wake_calls,
)
from appliance.gateway.upstream import Upstream, UpstreamError, fetch_whole
from appliance.vocabulary import ModelState

log = logging.getLogger("appliance.gateway")


class Held(enum.StrEnum):
    """How a request for a switched model came out of `acquire`."""

    READY = "ready"  # its engine is awake: forward it, then call `release`
    FULL = "full"  # the held requests were at their bound
    PINNED = "pinned"  # an admin pinned another model awake
    TIMEOUT = "timeout"  # its engine did not wake within the hold bound


class SwitchError(Exception):
    """An engine control call failed (refused, timed out, or not 200)."""


class PinnedError(Exception):
    """An admin's order that a pinned model forbids (sleep it, or wake another)."""


@dataclass(frozen=True)
class SwitchTiming:
    """One switch, for the bench and the metrics: all of it, and the part the engines took
    answering the control calls (sleep, wake, reload)."""

    woken: str
    total_s: float
    engine_s: float


class ModelSwitcher:
    """The switched models' states, held requests and the one switch in progress."""

    def __init__(
        self,
        control: Mapping[str, Upstream],
        *,
        initially_awake: str,
        rules: SwitchRules,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = dict(control)
        self._initially_awake = initially_awake
        self.rules = rules
        self._clock = clock
        names = list(control)
        self.states: dict[str, ModelState] = {
            n: "awake" if n == initially_awake else asleep(rules.sleep_level) for n in names
        }
        self.in_flight: dict[str, int] = dict.fromkeys(names, 0)
        self.held: dict[str, int] = dict.fromkeys(names, 0)
        self.held_total = 0
        self._first_held_at: dict[str, float] = {}
        self._last_used: dict[str, float] = dict.fromkeys(names, clock())
        self.draining: str | None = None
        self.switches = 0
        self.wakes: dict[str, int] = dict.fromkeys(names, 0)  # switches to each model
        self.wake_seconds: dict[str, float] = {}  # the last switch to each model, all of it
        self.pinned: str | None = None  # kept awake by an admin: no switch, no idle sleep
        # apply is changing the engines (`gateway.rollout`): no idle sleep meanwhile, which
        # would change the states apply leaves them in.
        self.paused = False
        self.refused: dict[Held, int] = {Held.FULL: 0, Held.TIMEOUT: 0, Held.PINNED: 0}
        self.timings: list[SwitchTiming] = []  # the last few switches, newest last
        self._changed = asyncio.Condition()
        # One engine operation at a time (a switch, an idle sleep): a wake must never overtake
        # the sleep before it.
        self._operating = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None

    def retarget(self, name: str, control: Upstream) -> None:
        """A model update moved `name` to a new engine (blue/green): its sleep-mode calls go
        there from now on. Its state stays: apply leaves the new engine as the old one was."""
        self._control[name] = control

    def __contains__(self, name: object) -> bool:
        return name in self.states

    def report(self) -> dict[str, object]:
        """What /health shows: each model's state, requests in flight and held, the switches
        done and the requests refused, and the last switch's time (the engines' part apart)."""
        last = self.timings[-1] if self.timings else None
        return {
            "models": {
                name: {"state": state, "in_flight": self.in_flight[name], "held": self.held[name]}
                for name, state in self.states.items()
            },
            "pinned": self.pinned,
            "switches": self.switches,
            "held": self.held_total,
            "refused": {reason.value: count for reason, count in self.refused.items()},
            "last_switch": None
            if last is None
            else {"model": last.woken, "seconds": last.total_s, "engine_seconds": last.engine_s},
        }

    # -- lifecycle

    async def start(self) -> None:
        """Read each engine's state; keep one awake (spec.model when it is), put any other
        awake one to sleep; start the idle watch when the profile sets a TTL."""
        level = self.rules.sleep_level
        for name in self.states:
            sleeping = await self._is_sleeping(name)
            self.states[name] = initial_state(
                sleeping, expected_awake=name == self._initially_awake, level=level
            )
        awake = [n for n, s in self.states.items() if s == "awake"]
        keep = self._initially_awake if self._initially_awake in awake else awake[:1]
        for name in awake:
            if name not in keep:
                try:
                    await self._sleep(name)
                except SwitchError as error:
                    log.warning("could not put %s to sleep at start: %s", name, error)
        log.info("switched models: %s", ", ".join(f"{n} {s}" for n, s in self.states.items()))
        if self.rules.idle_sleep_s is not None:
            self._idle_task = asyncio.get_running_loop().create_task(
                self._idle_loop(), name="gateway-idle-sleep"
            )

    async def stop(self) -> None:
        for task in (self._task, self._idle_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._idle_task = None

    # -- requests

    async def acquire(self, name: str) -> Held:
        """Wait (bounded) until `name`'s engine is awake and count the request in its flight.
        READY must be followed by `release(name)` once the answer is through."""
        state = self.states[name]
        decision = admit(
            state,
            draining=self.draining == name,
            held_total=self.held_total,
            rules=self.rules,
            pinned_elsewhere=self.pinned is not None and self.pinned != name,
        )
        if decision is Admission.FORWARD:  # the fast path: no await, no allocation
            self.in_flight[name] += 1
            return Held.READY
        if decision is Admission.PINNED:
            self.refused[Held.PINNED] += 1
            return Held.PINNED
        if decision is Admission.FULL:
            self.refused[Held.FULL] += 1
            return Held.FULL
        self.held[name] += 1
        self.held_total += 1
        self._first_held_at.setdefault(name, self._clock())
        self._kick()
        try:
            await asyncio.wait_for(self._until_ready(name), self.rules.hold_timeout_s)
        except TimeoutError:
            self.refused[Held.TIMEOUT] += 1
            return Held.TIMEOUT
        finally:
            self.held[name] -= 1
            self.held_total -= 1
            if not self.held[name]:
                self._first_held_at.pop(name, None)
        return Held.READY

    async def _until_ready(self, name: str) -> None:
        async with self._changed:
            await self._changed.wait_for(self._ready(name))
            self.in_flight[name] += 1  # no await between the check and this

    def _ready(self, name: str) -> Callable[[], bool]:
        return lambda: self.states[name] == "awake" and self.draining != name

    def release(self, name: str) -> None:
        self.in_flight[name] -= 1
        self._last_used[name] = self._clock()
        if self.draining == name and not self.in_flight[name]:
            self._notify()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _set(self, name: str, state: ModelState) -> None:
        """Change a state at once (a request arriving next sees it), then wake the waiters."""
        self.states[name] = state
        if state == "awake":
            # Its held requests are released now; the switch loop must not pick it again.
            self._first_held_at.pop(name, None)
        self._notify()

    # -- an admin's orders (POST /admin/models)

    async def wake(self, name: str) -> None:
        """Make `name` the awake model now (the awake one drains and sleeps first). Raises
        `SwitchError` when the engines refused, `PinnedError` while another model is pinned."""
        self._refuse_if_pinned_elsewhere(name)
        async with self._operating:
            self._refuse_if_pinned_elsewhere(name)
            if self.states[name] != "awake":
                await self._switch_now(name)

    async def sleep(self, name: str) -> None:
        """Put `name` to sleep now if it is awake (after its requests drain, up to the grace);
        the next request for it wakes it again. Raises `PinnedError` when it is pinned."""
        if self.pinned == name:
            raise PinnedError(f"{name} is pinned awake: unpin it first")
        async with self._operating:
            if self.states[name] == "awake" and self.pinned != name:
                await self._drain(name)
                await self._sleep(name)

    async def pin(self, name: str) -> None:
        """Wake `name` if needed and keep it awake: no idle sleep, and a request for another
        sleeping model is refused (503, or the remote API in auto) until `unpin`."""
        await self.wake(name)
        self.pinned = name
        self._first_held_at.clear()  # held requests for others time out; none starts a switch
        log.info("%s pinned awake by an admin", name)

    def unpin(self) -> None:
        if self.pinned is not None:
            log.info("%s unpinned by an admin", self.pinned)
        self.pinned = None

    def _refuse_if_pinned_elsewhere(self, name: str) -> None:
        if self.pinned is not None and self.pinned != name:
            raise PinnedError(f"{self.pinned} is pinned awake: unpin it first")

    # -- switching

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._switch_loop(), name="gateway-model-switch"
            )

    async def _switch_loop(self) -> None:
        while (wanted := next_to_wake(self._first_held_at)) is not None:
            if self.states[wanted] == "awake":  # released already; its waiters are resuming
                self._first_held_at.pop(wanted, None)
                await asyncio.sleep(0)
                continue
            try:
                await self._switch_to(wanted)
            except SwitchError as error:
                # The held requests time out into 503s (or the remote API); the next request
                # for the model tries again.
                log.warning("switch to %s failed: %s", wanted, error)
                return
            except Exception:  # a switch must never take the gateway down
                log.exception("switch to %s failed", wanted)
                return

    async def _switch_to(self, wanted: str) -> None:
        async with self._operating:
            if self.pinned is not None and self.pinned != wanted:
                self._first_held_at.pop(wanted, None)  # its held requests time out
                return
            if self.states[wanted] != "awake":
                await self._switch_now(wanted)

    async def _switch_now(self, wanted: str) -> None:
        started = self._clock()
        engine_s = 0.0
        for name, state in list(self.states.items()):
            if name != wanted and state == "awake":
                await self._drain(name)
                engine_s += await self._sleep(name)
        level = level_of(self.states[wanted], self.rules.sleep_level)
        self._set(wanted, "waking")
        try:
            engine_s += await self._calls(wanted, wake_calls(level))
        except SwitchError:
            self._set(wanted, asleep(level))
            raise
        self.switches += 1
        self.wakes[wanted] += 1
        self._last_used[wanted] = self._clock()
        self.draining = None
        timing = SwitchTiming(wanted, self._clock() - started, engine_s)
        self.wake_seconds[wanted] = timing.total_s
        self.timings = [*self.timings[-63:], timing]
        self._set(wanted, "awake")
        log.info("switched to %s (level %d wake)", wanted, level)

    async def _drain(self, name: str) -> None:
        """Stop forwarding to `name` and wait for its requests to finish, up to the grace."""
        self.draining = name
        since = self._clock()
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.in_flight[name] <= 0),
                    self.rules.drain_grace_s,
                )
        if not may_sleep(self.in_flight[name], self._clock() - since, self.rules):
            log.warning("%s still had requests after the grace period", name)

    async def _sleep(self, name: str) -> float:
        level = self.rules.sleep_level
        self._set(name, "sleeping")
        try:
            return await self._calls(name, sleep_calls(level))
        finally:
            # Even when the call failed it may sleep now: only a wake makes it usable again,
            # and waking an engine that is awake does nothing.
            if self.draining == name:
                self.draining = None
            if self.states[name] == "sleeping":
                self._set(name, asleep(level))

    async def _calls(self, name: str, calls: tuple[ControlCall, ...]) -> float:
        """Run the calls in order; their time, which is the engine's (wake, reload)."""
        started = self._clock()
        for call in calls:
            status, body = await self._call(name, call)
            if status != 200:
                raise SwitchError(
                    f"{name}: {call.method.decode()} {call.path.decode()} answered {status} "
                    f"{body[:200].decode('utf-8', 'replace')}"
                )
        return self._clock() - started

    async def _call(self, name: str, call: ControlCall) -> tuple[int, bytes]:
        headers = [(b"content-type", b"application/json")] if call.body else []
        try:
            return await fetch_whole(
                self._control[name], call.method, call.path, headers, call.body
            )
        except UpstreamError as error:
            raise SwitchError(f"{name}: {call.path.decode()}: {error}") from error

    async def _is_sleeping(self, name: str) -> bool | None:
        try:
            status, body = await self._call(name, IS_SLEEPING)
            return bool(json.loads(body)["is_sleeping"]) if status == 200 else None
        except (SwitchError, ValueError, KeyError, TypeError):
            return None

    async def _idle_loop(self) -> None:
        idle_s = self.rules.idle_sleep_s
        assert idle_s is not None
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            if self.paused or (self._task is not None and not self._task.done()):
                continue
            for name in list(self.states):
                async with self._operating:
                    due = idle_sleep_due(
                        self.states[name],
                        in_flight=self.in_flight[name],
                        held_total=self.held_total,
                        idle_for_s=self._clock() - self._last_used[name],
                        rules=self.rules,
                        pinned=self.pinned == name,
                    )
                    if not due:
                        continue
                    log.info("%s idle for %.0f s: putting it to sleep", name, idle_s)
                    try:
                        await self._sleep(name)
                    except SwitchError as error:
                        log.warning("idle sleep of %s failed: %s", name, error)
