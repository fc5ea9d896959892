"""The data the runtime passes around: what a container should be, and what one is.

Pure: no Docker here. `ContainerSpec` is the desired state of one service, hashed into a label;
`ObservedContainer` is what the Docker adapter found, rebuilt from labels alone (no state file).
"""

from __future__ import annotations

import hashlib
import json
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance import __version__
from appliance.vocabulary import Role

# An apply renames each container it replaces to `<name>-previous-<id>` until the new one is
# healthy; the mark in the name is all a later run has to find it by (labels cannot change).
SET_ASIDE_MARK: Final = "-previous-"
CONTAINER_PREFIX: Final = "llm-appliance-"
"""Every managed container is `llm-appliance-<profile>-<service>` (`specs.container_name`)."""


def service_name(name: str, profile_name: str) -> str | None:
    """The service a profile's container serves, as the monitor names it: its container name
    without the profile's prefix or a set-aside mark ("vllm", "vllm-2" for a further switched
    model, "tei"); None for a container of another profile."""
    base = name.split(SET_ASIDE_MARK, maxsplit=1)[0]
    prefix = f"{CONTAINER_PREFIX}{profile_name}-"
    if not base.startswith(prefix) or base == prefix:
        return None
    return base.removeprefix(prefix)


LABEL_PREFIX = "io.llm-appliance."
LABEL_MANAGED_BY = f"{LABEL_PREFIX}managed-by"
LABEL_ROLE = f"{LABEL_PREFIX}role"
LABEL_PROFILE = f"{LABEL_PREFIX}profile"
LABEL_SPEC_HASH = f"{LABEL_PREFIX}spec-hash"
LABEL_VERSION = f"{LABEL_PREFIX}version"
# The whole spec as JSON: lets `plan` say which fields changed, not only that the hash did.
LABEL_SPEC = f"{LABEL_PREFIX}spec"
MANAGED_BY = "llm-appliance"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortBinding(_Frozen):
    container_port: int
    host_port: int
    host_ip: str = "127.0.0.1"  # engines are never exposed beyond the box


class Mount(_Frozen):
    source: str  # host path
    target: str  # path in the container
    read_only: bool = True


class Healthcheck(_Frozen):
    """Docker's HEALTHCHECK, in seconds (the adapter converts to nanoseconds)."""

    test: tuple[str, ...]
    interval_s: float = 10.0
    timeout_s: float = 5.0
    retries: int = 3
    start_period_s: float = 0.0


class ContainerSpec(_Frozen):
    """Everything that decides how one service's container is created."""

    role: Role
    name: str
    image: str
    # None keeps the image's own entrypoint; the CPU target replaces it (`cpu_engine.py`).
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] = ()
    environment: dict[str, str] = Field(default_factory=dict)
    ports: tuple[PortBinding, ...] = ()
    mounts: tuple[Mount, ...] = ()
    # GPU UUIDs the container may see; "all" for every GPU; None for none (CPU, or the tests).
    gpu_device_ids: tuple[str, ...] | Literal["all"] | None = None
    ipc_mode: str | None = "host"
    # Docker's init (tini) as PID 1: forwards SIGTERM to the engine and reaps the worker
    # processes vLLM spawns; without it an engine that installs no handler ignores `docker stop`.
    init: bool = True
    shm_size_bytes: int | None = None
    healthcheck: Healthcheck | None = None
    health_url: str | None = None  # http://127.0.0.1:PORT/health, polled by apply
    restart_policy: Literal["no", "on-failure", "unless-stopped", "always"] = "unless-stopped"
    log_max_size: str = "50m"
    log_max_files: int = 5
    profile: str

    def spec_hash(self) -> str:
        """A stable digest of the spec: equal specs mean an unchanged container."""
        # A spec without an entrypoint hashes as before the field existed: no engine that
        # keeps its image's entrypoint is replaced by an upgrade of the appliance.
        unset = {"entrypoint"} if self.entrypoint is None else None
        dumped = self.model_dump(mode="json", exclude=unset)
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def labels(self) -> dict[str, str]:
        return {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_ROLE: self.role,
            LABEL_PROFILE: self.profile,
            LABEL_SPEC_HASH: self.spec_hash(),
            LABEL_VERSION: __version__,
            LABEL_SPEC: self.model_dump_json(),
        }


ContainerState = Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"]
HealthState = Literal["starting", "healthy", "unhealthy"]


class ObservedContainer(_Frozen):
    """A managed container as the engine reports it."""

    id: str
    name: str
    role: Role
    profile: str
    spec_hash: str
    appliance_version: str
    image: str
    state: ContainerState
    health: HealthState | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    restart_count: int = 0
    started_at: str | None = None
    host_ports: dict[int, int] = Field(default_factory=dict)  # container port -> host port
    spec_json: str | None = None  # the LABEL_SPEC label: the spec it was created from
    mounts: tuple[str, ...] = ()  # host paths it mounts (the weights' directories)

    @property
    def health_url(self) -> str | None:
        """The health URL of the spec it was created from (None for a spec without one)."""
        if self.spec_json is None:
            return None
        try:
            url = json.loads(self.spec_json).get("health_url")
        except (ValueError, AttributeError):
            return None
        return url if isinstance(url, str) else None

    @property
    def set_aside(self) -> bool:
        """Renamed out of the way by an apply that has not finished (see runtime.apply)."""
        return SET_ASIDE_MARK in self.name
