"""Deploy = weights, then apply: the one sequence the CLI's `apply` and the TUI's Deploy share.

Weights come first because they are the long, resumable, cancellable part (minutes to hours);
`apply_profile` then takes its lock, re-plans and asks `confirm` with the plan it will execute,
so a box that changed since the operator read the plan is never changed behind their back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.hardware.box import Box
    from appliance.profile import Profile
    from appliance.runtime.apply import ApplyEvent, ApplyResult
    from appliance.runtime.docker import DockerEngine
    from appliance.runtime.plan import Plan
    from appliance.weights import DownloadProgress


def deploy_profile(
    profile: Profile,
    box: Box,
    engine: DockerEngine,
    *,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Callable[[ApplyEvent], None] | None = None,
    weights_progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> ApplyResult:
    """Check what weights cannot fix, pull the weights (a no-op when they are here), apply."""
    from appliance.runtime.apply import apply_profile, check_box_can_run
    from appliance.weights import pull_profile, resolve_token

    check_box_can_run(profile, box)
    pull_profile(profile, token=resolve_token(None), on_progress=weights_progress, cancel=cancel)
    return apply_profile(profile, box, engine, confirm=confirm, progress=progress)
