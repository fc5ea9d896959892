"""The container engine as the runtime uses it: a protocol, so apply, status, down and logs run
against any engine that speaks it (docker-py's adapter in `runtime.docker`, a test's fake) and no
caller needs docker-py to type or check one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from appliance.runtime.model import ContainerSpec, ObservedContainer

__all__ = ["ContainerEngine", "PullProgress"]


@dataclass(frozen=True)
class PullProgress:
    """One step of an image pull, summed over layers."""

    image: str
    status: str
    downloaded_bytes: int
    total_bytes: int | None


class ContainerEngine(Protocol):
    """One container engine: what the appliance reads of it and the few ways it changes it."""

    @property
    def endpoint(self) -> str:
        """The engine's address, spelled one way: what the apply lock is keyed by."""
        ...

    def close(self) -> None: ...

    def managed_containers(self, profile: str | None = None) -> list[ObservedContainer]: ...

    def inspect(self, container_id: str) -> ObservedContainer | None: ...

    def logs(self, container_id: str, tail: int = 50) -> str: ...

    def follow_logs(
        self, container_id: str, stop: threading.Event, tail: int = 100
    ) -> Iterator[str]: ...

    def image_present(self, image: str) -> bool: ...

    def pull(self, image: str, progress: Callable[[PullProgress], None] | None = None) -> None: ...

    def create(self, spec: ContainerSpec, name: str | None = None) -> str: ...

    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, timeout_s: int = 30) -> None: ...

    def remove(self, container_id: str) -> None: ...

    def rename(self, container_id: str, name: str) -> None: ...
