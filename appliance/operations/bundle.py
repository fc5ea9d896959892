"""`bundle create` and `bundle load` on this box's Docker engine: the air-gap verbs (issue #20).

The bundle's own modules (`appliance.bundle`) stream, hash and verify; these open the engine for
the operation and close it afterwards, as every operation does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.operations.engine import engine_session

if TYPE_CHECKING:
    from pathlib import Path

    from appliance.bundle.load import LoadResult
    from appliance.bundle.manifest import Manifest
    from appliance.hardware.box import Box


def create(profile_path: Path, box: Box, out: Path, **options: Any) -> Manifest:
    """Write the bundle for `profile_path` on `box` to `out` (`bundle.create.create_bundle`)."""
    from appliance.bundle.create import create_bundle

    with engine_session() as engine:
        return create_bundle(profile_path, box, engine, out, **options)


def load(bundle: Path, box: Box, **options: Any) -> LoadResult:
    """Verify and install `bundle` on this box (`bundle.load.load_bundle`)."""
    from appliance.bundle.load import load_bundle

    with engine_session() as engine:
        return load_bundle(bundle, box, engine, **options)
