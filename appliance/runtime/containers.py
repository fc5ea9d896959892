"""The appliance's containers once they run: `status`, `logs` and `down`.

Everything here reads containers by the appliance's labels, so it never touches a container it
did not create; `down` takes the engine's apply lock so it never races an apply.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import BadInputError
from appliance.runtime.apply import ApplyEvent, Progress
from appliance.runtime.engine import ContainerEngine
from appliance.runtime.health import http_ok
from appliance.runtime.lock import LOCK_DIR, apply_lock, engine_lock_path, shared_lock_dir_usable
from appliance.runtime.model import ObservedContainer


@dataclass(frozen=True)
class ServiceStatus:
    role: str
    name: str
    container_id: str
    profile: str
    image: str
    state: str
    docker_health: str | None  # Docker's healthcheck, where the image has one
    ready: bool | None  # the health URL answered 200; None when not probed
    exit_code: int | None
    restart_count: int
    started_at: str | None
    host_ports: dict[int, int]
    health_url: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def status(
    engine: ContainerEngine, *, probe: Callable[[str], bool] | None = http_ok
) -> tuple[ServiceStatus, ...]:
    """`appliance status`: every managed container, from its labels, and whether it answers."""
    result = []
    for container in engine.managed_containers():
        url = container.health_url
        ready = None
        if probe is not None and url is not None and container.state == "running":
            ready = probe(url)
        result.append(
            ServiceStatus(
                role=container.role,
                name=container.name,
                container_id=container.id,
                profile=container.profile,
                image=container.image,
                state=container.state,
                docker_health=container.health,
                ready=ready,
                exit_code=container.exit_code,
                restart_count=container.restart_count,
                started_at=container.started_at,
                host_ports=dict(container.host_ports),
                health_url=url,
            )
        )
    return tuple(result)


def weights_mounts(engine: ContainerEngine) -> tuple[tuple[str, str], ...]:
    """(container name, host path) of every mount of the managed containers that run, restart
    or are paused: what `weights.remove_weights` must not delete."""
    return tuple(
        (container.name, source)
        for container in engine.managed_containers()
        if container.state in ("running", "restarting", "paused")
        for source in container.mounts
    )


def down(
    engine: ContainerEngine,
    *,
    state_dir: Path | None = None,
    lock_file: Path | None = None,
    progress: Progress | None = None,
) -> tuple[ObservedContainer, ...]:
    """`appliance down`: stop and remove every container the appliance manages, nothing else.

    Takes the engine's apply lock (`lock_file` when given), so `down` never races an apply;
    `state_dir` is where the lock goes when the shared lock directory cannot be written (without
    it, and without that directory, `down` runs unlocked). Weights are left alone
    (`--purge-weights` belongs to the weights module).
    """
    report = progress or (lambda _: None)
    path = lock_file
    if path is None and (state_dir is not None or shared_lock_dir_usable()):
        path = engine_lock_path(engine.endpoint, state_dir or LOCK_DIR)
    locked = apply_lock(path, "appliance down", endpoint=engine.endpoint) if path else None
    with locked or contextlib.nullcontext():
        removed = tuple(engine.managed_containers())
        for container in removed:
            report(ApplyEvent("remove", f"removing {container.name}", container.role))
            engine.stop(container.id)
            engine.remove(container.id)
        return removed


def _service(engine: ContainerEngine, role: str) -> ObservedContainer:
    candidates = [c for c in engine.managed_containers() if c.role == role]
    live = [c for c in candidates if not c.set_aside]
    if not (live or candidates):
        raise BadInputError(
            f"no {role} container is managed on this box",
            hint="`appliance status` lists the services; `appliance apply PROFILE` starts them",
        )
    return (live or candidates)[0]


def service_logs(engine: ContainerEngine, role: str, *, tail: int = 100) -> str:
    """`appliance logs SERVICE --tail N`."""
    return engine.logs(_service(engine, role).id, tail=tail)


def follow_service_logs(
    engine: ContainerEngine, role: str, stop: threading.Event, *, tail: int = 100
) -> Iterator[str]:
    """`appliance logs SERVICE --follow`: lines until `stop` is set or the container goes."""
    return engine.follow_logs(_service(engine, role).id, stop, tail=tail)
