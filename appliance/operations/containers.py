"""What runs, for both faces: the services' status, their logs, and taking them down."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import TYPE_CHECKING

from appliance.operations.engine import engine_session

if TYPE_CHECKING:
    from appliance.runtime.containers import ServiceStatus
    from appliance.runtime.model import ObservedContainer


def service_status(base_url: str | None = None) -> tuple[ServiceStatus, ...]:
    """Every managed container and whether its health URL answers."""
    from appliance.runtime.containers import status

    with engine_session(base_url) as engine:
        return status(engine)


def running_services(base_url: str | None = None, *, timeout_s: float = 5.0) -> tuple[str, ...]:
    """The roles of the managed containers, once each (what a log view offers)."""
    with engine_session(base_url, timeout_s=timeout_s) as engine:
        return tuple(dict.fromkeys(c.role for c in engine.managed_containers()))


def service_logs(role: str, *, tail: int = 100, base_url: str | None = None) -> str:
    from appliance.runtime.containers import service_logs as logs

    with engine_session(base_url) as engine:
        return logs(engine, role, tail=tail)


def follow_service_logs(
    role: str, stop: threading.Event, *, tail: int = 100, base_url: str | None = None
) -> Generator[str, None, None]:
    """Log lines of `role` until `stop` is set or the container goes; the engine stays open
    while the lines are read and closes with the generator."""
    from appliance.runtime.containers import follow_service_logs as follow

    with engine_session(base_url) as engine:
        yield from follow(engine, role, stop, tail=tail)


def mounted_weights(base_url: str | None = None) -> tuple[tuple[str, str], ...]:
    """(container, host path) of what the running engines mount: what `weights rm` spares."""
    from appliance.runtime.containers import weights_mounts

    with engine_session(base_url) as engine:
        return weights_mounts(engine)


def take_down(base_url: str | None = None) -> tuple[ObservedContainer, ...]:
    """Stop and remove every container the appliance manages, under the apply lock."""
    from appliance.runtime.containers import down

    with engine_session(base_url) as engine:
        return down(engine)
