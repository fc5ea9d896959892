"""`plan`: what an apply of a profile would change on a box, with the fit check, for both faces.

Planning refuses (exit 4, with the nearest settings that fit) what vLLM would refuse on the box,
before any download: `runtime.apply.plan_profile` runs the same preflight as apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.errors import EnvironmentNotReadyError
from appliance.operations.engine import engine_session

if TYPE_CHECKING:
    from appliance.hardware.box import Box
    from appliance.profile import Profile
    from appliance.runtime.plan import Plan
    from appliance.runtime.specs import SpecOptions


@dataclass(frozen=True)
class PlannedChange:
    """The plan, and a note when it was made against an empty box instead of the engine."""

    plan: Plan
    note: str | None = None


def plan(
    profile: Profile,
    box: Box,
    *,
    base_url: str | None = None,
    options: SpecOptions | None = None,
    simulated: bool = False,
    timeout_s: float = 10.0,
) -> PlannedChange:
    """Plan `profile` against what the Docker engine runs. On a simulated box (planned on a
    laptop, usually without an engine) an engine that does not answer means planning from
    nothing, said in the note; on a real box it is an error."""
    from appliance.runtime.apply import plan_profile

    try:
        with engine_session(base_url, timeout_s=timeout_s) as engine:
            return PlannedChange(plan_profile(profile, box, engine, options=options))
    except EnvironmentNotReadyError as error:
        if not simulated:
            raise
        note = f"{error.message}; planning against an empty box"
    return PlannedChange(plan_profile(profile, box, None, options=options), note)


def plan_from_nothing(profile: Profile, box: Box) -> Plan:
    """The plan on a box where nothing runs yet (`--simulate` in the TUI): every container is
    created. Refuses what vLLM would refuse on this box, as `plan` does."""
    from appliance.runtime.apply import plan_profile

    return plan_profile(profile, box, None)
