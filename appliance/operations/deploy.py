"""Deploy = weights, then apply, then the gateway: the one sequence `appliance apply` and the
TUI's Deploy share, so a deploy from either face leaves the box in the same state.

Weights come first because they are the long, resumable, cancellable part (minutes to hours);
`apply_profile` then takes its lock, re-plans and asks `confirm` with the plan it will execute,
so a box that changed since the operator read the plan is never changed behind their back. Once
the engines answer, the gateway (the team's endpoint) is installed as a systemd unit running a
copy of the applied profile, and restarted when that profile changed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.gateway.service import ServiceResult
    from appliance.hardware.box import Box
    from appliance.profile import Profile
    from appliance.runtime.apply import ApplyEvent, ApplyResult
    from appliance.runtime.engine import ContainerEngine
    from appliance.runtime.plan import Plan
    from appliance.runtime.specs import SpecOptions
    from appliance.weights import DownloadProgress

# (profile text, state dir) → the unit installed, or None where the box has no systemd.
GatewayInstaller = Callable[[str, Path], "ServiceResult | None"]


def install_gateway(profile_text: str, state_dir: Path) -> ServiceResult | None:
    """The gateway of the applied profile under systemd (None: this box has no systemd)."""
    from appliance.gateway.service import appliance_executable, install_gateway_service

    return install_gateway_service(profile_text, state_dir, appliance_bin=appliance_executable())


@dataclass(frozen=True)
class Deployment:
    """What a deploy did: the apply's result, and what became of the gateway.

    `gateway` is the systemd unit when one was installed; `gateway_note` says what the operator
    must do instead (no systemd here) — both are None when nothing was applied.
    """

    result: ApplyResult
    gateway: ServiceResult | None = None
    gateway_note: str | None = None

    @property
    def applied(self) -> bool:
        return self.result.applied

    @property
    def plan(self) -> Plan:
        return self.result.plan

    def gateway_line(self) -> str | None:
        """One line on the gateway for the operator, or None when there is nothing to say."""
        if self.gateway is None:
            return self.gateway_note
        verb = "(re)started" if self.gateway.changed else "running, unchanged"
        return f"gateway {verb}: {self.gateway.unit_path}"

    def to_json(self) -> dict[str, Any]:
        gateway = None
        if self.gateway is not None:
            gateway = {
                "unit": str(self.gateway.unit_path),
                "profile": str(self.gateway.profile_copy),
                "restarted": self.gateway.changed,
            }
        return {**self.result.to_json(), "gateway": gateway, "gateway_note": self.gateway_note}


def deploy_profile(
    profile: Profile,
    box: Box,
    engine: ContainerEngine | None = None,
    *,
    base_url: str | None = None,
    source: Path | None = None,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Callable[[ApplyEvent], None] | None = None,
    weights_progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    options: SpecOptions | None = None,
    deadlines_s: dict[str, float] | None = None,
    gateway: GatewayInstaller = install_gateway,
) -> Deployment:
    """Check what weights cannot fix, pull the weights (a no-op when they are here), apply,
    then install the gateway's unit when anything was applied.

    `source` is the profile's file, when it has one: the gateway then runs its text, comments
    and all; otherwise (a profile chosen in the TUI and not saved) the profile as dumped.
    `options` and `deadlines_s` go to `apply_profile` (tests on a box without a GPU). With no
    `engine`, the Docker engine at `base_url` (this box's by default) is opened for the apply
    and closed after it: what `appliance apply` and the TUI's Deploy both run.
    """
    from appliance.operations.engine import engine_session
    from appliance.runtime.apply import apply_profile, check_box_can_run
    from appliance.weights import pull_profile, resolve_token

    # The engine first: an unreachable Docker is said before an hour-long download, not after.
    with engine_session(base_url) if engine is None else contextlib.nullcontext(engine) as session:
        check_box_can_run(profile, box, options)
        pull_profile(
            profile, token=resolve_token(None), on_progress=weights_progress, cancel=cancel
        )
        result = apply_profile(
            profile,
            box,
            session,
            options=options,
            confirm=confirm,
            progress=progress,
            deadlines_s=deadlines_s,
            fit_checked=True,  # check_box_can_run sized it before the download
        )
    if not result.applied:
        return Deployment(result)
    if source is not None:
        text = source.read_text(encoding="utf-8")
    else:
        from appliance.profile import dump_profile

        text = dump_profile(profile)
    service = gateway(text, profile.spec.storage.state_dir)
    if service is not None:
        return Deployment(result, gateway=service)
    if source is None:
        note = (
            "no systemd here: save the profile (s in Recommend) and run the gateway yourself "
            "with `appliance gateway --profile FILE`"
        )
    else:
        command = f"appliance gateway --profile {source}"
        note = f"no systemd here: run the gateway yourself with `{command}`"
    return Deployment(result, gateway_note=note)
