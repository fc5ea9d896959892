"""The container engine for one operation: opened on this box's Docker (or `base_url`), closed
when the operation ends, whichever face asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.runtime.docker import DockerEngine


@contextlib.contextmanager
def engine_session(
    base_url: str | None = None, *, timeout_s: float = 60.0
) -> Iterator[DockerEngine]:
    """A connection to the Docker engine for the `with` block (a `ContainerEngine`, and the image
    save/load a bundle needs). Raises
    `EnvironmentNotReadyError` (worded as `detect` words it) when no engine answers."""
    from appliance.runtime.docker import DockerEngine  # docker-py only when an engine is used

    engine = DockerEngine(base_url, timeout_s=timeout_s)
    try:
        yield engine
    finally:
        engine.close()
