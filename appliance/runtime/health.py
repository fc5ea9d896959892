"""Readiness as a timed check with an injectable clock (STYLE 7), so tests never sleep for real.

A service is ready when its container is running and its `/health` answers 200 (or, without a
URL, when Docker's own healthcheck says healthy). A container that exits while we wait ends the
wait at once: vLLM refusing a configuration exits within seconds, and nobody should wait out a
ten-minute deadline for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.clock import BlockingClock, SystemClock
from appliance.runtime.model import ObservedContainer


class Inspector(Protocol):
    def inspect(self, container_id: str) -> ObservedContainer | None: ...


@dataclass(frozen=True)
class HealthOutcome:
    healthy: bool
    reason: str  # "healthy", "exited with code 1", "killed: out of memory", "not healthy after …"
    container: ObservedContainer | None


def http_call(method: str, url: str, body: bytes = b"") -> bool:
    """True when `method url` answers 200 (an engine's sleep-mode routes: a wake reloads
    weights, so it is given minutes rather than seconds)."""
    import httpx  # here, not at the top: it costs 0.2 s of `appliance` start-up

    headers = {"content-type": "application/json"} if body else {}
    try:
        return httpx.request(method, url, content=body, headers=headers, timeout=600).is_success
    except httpx.HTTPError:
        return False


def engine_sleeping(origin: str) -> bool | None:
    """A vLLM engine's GET /is_sleeping at `origin` (sleep mode); None when it does not say."""
    import httpx  # here, not at the top: it costs 0.2 s of `appliance` start-up

    try:
        answer = httpx.get(f"{origin}/is_sleeping", timeout=2.0, trust_env=False)
        value = answer.json().get("is_sleeping") if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def http_ok(url: str) -> bool:
    """True when `url` answers 200 within two seconds."""
    import httpx  # here, not at the top: it costs 0.2 s of `appliance` start-up

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_healthy(
    inspector: Inspector,
    container_id: str,
    health_url: str | None,
    *,
    deadline_s: float,
    clock: BlockingClock | None = None,
    probe: Callable[[str], bool] = http_ok,
    poll_s: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> HealthOutcome:
    """`stop` is asked before each poll: True ends the wait as "interrupted" (apply's signals)."""
    clock = clock or SystemClock()
    end = clock.monotonic() + deadline_s
    observed: ObservedContainer | None = None
    first_restart_count: int | None = None
    while True:
        if stop is not None and stop():
            return HealthOutcome(False, "interrupted", observed)
        observed = inspector.inspect(container_id)
        if observed is None:
            return HealthOutcome(False, "the container was removed while starting", None)
        if first_restart_count is None:
            first_restart_count = observed.restart_count
        died = _death(observed, first_restart_count)
        if died is not None:
            return died
        if observed.state == "running":
            if health_url is not None:
                if probe(health_url):
                    return HealthOutcome(True, "healthy", observed)
            elif observed.health in ("healthy", None):
                return HealthOutcome(True, "healthy", observed)
        if clock.monotonic() >= end:
            return HealthOutcome(
                False, f"not healthy after {deadline_s:.0f} s (state {observed.state})", observed
            )
        clock.sleep(poll_s)


def _death(observed: ObservedContainer, first_restart_count: int) -> HealthOutcome | None:
    """The outcome when the container died while we waited, else None.

    A restart policy turns an exit into "restarting": it died all the same. Compare with the
    count at the start: a container restarted back to life in a rollback has history.
    """
    died = observed.state in ("exited", "dead", "restarting")
    if not died and observed.restart_count <= first_restart_count:
        return None
    if observed.oom_killed:
        return HealthOutcome(False, "killed: out of host memory (OOM)", observed)
    if observed.exit_code is None:
        reason = f"exited and was restarted by Docker ({observed.restart_count} restarts)"
    else:
        reason = f"exited with code {observed.exit_code}"
    return HealthOutcome(False, reason, observed)
