"""The applied profile: which profile this box runs, found the same way by every face.

`appliance apply` (and a deploy from the TUI) keeps a copy of the profile it applied in the
state directory, and the gateway's systemd unit runs that copy. `keys`, `fallback` and the TUI
look for the profile in the same order: the one named (`--profile`), then
$LLM_APPLIANCE_PROFILE, then that copy. Cheap to import: the CLI calls it before anything heavy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from appliance.gateway.service import APPLIED_PROFILE
from appliance.vocabulary import DEFAULT_STATE_DIR

PROFILE_ENV = "LLM_APPLIANCE_PROFILE"


def applied_profile_path(
    given: Path | str | None = None,
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The applied profile's file: `given`, else $LLM_APPLIANCE_PROFILE, else the copy `apply`
    keeps in `state_dir` when there is one; None when no profile was applied here."""
    env = os.environ if environ is None else environ
    named = given or env.get(PROFILE_ENV)
    if named:
        return Path(named)
    kept = state_dir / APPLIED_PROFILE
    return kept if kept.is_file() else None
