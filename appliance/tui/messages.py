"""Messages the workers post back to the screens: events, named for what happened (STYLE 9).

Each carries a frozen core object (a `Box`, a `Snapshot`, a `Recommendation`, a `Plan`) and
nothing the receiver could mutate behind the sender's back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from appliance.gateway.keys import CreatedKey, KeyInfo
    from appliance.hardware.box import Box
    from appliance.monitor.snapshot import Snapshot
    from appliance.operations.deploy import Deployment
    from appliance.profile import Profile
    from appliance.recommend import Recommendation, Workload
    from appliance.runtime.plan import Plan
    from appliance.tui.services import CostView


@dataclass
class BoxDetected(Message):
    box: Box


@dataclass
class MetricsSampled(Message):
    """One monitor tick. At 1 Hz a backlog is pointless: only the newest is kept."""

    snapshot: Snapshot
    series: dict[str, tuple[float | None, ...]]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MetricsSampled)


@dataclass
class MonitorStopped(Message):
    reason: str


@dataclass
class RecommendationComputed(Message):
    workload: Workload
    recommendation: Recommendation

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RecommendationComputed)


@dataclass
class RecommendationFailed(Message):
    workload: Workload
    reason: str


@dataclass
class ProfileChosen(Message):
    """Recommend picked a candidate (or `--profile` gave one); Deploy plans it."""

    profile: Profile
    comment: str
    source: Path | None = None  # the profile's file, when it has one


@dataclass
class ProfileSaved(Message):
    path: str


@dataclass
class PlanComputed(Message):
    profile: Profile
    plan: Plan


@dataclass
class PlanFailed(Message):
    reason: str


@dataclass
class DeployProgressed(Message):
    """A weights `DownloadProgress` or a runtime `ApplyEvent`."""

    report: object

    def can_replace(self, message: Message) -> bool:
        # Byte counters supersede each other; steps (create, start, healthy…) all arrive.
        from appliance.weights import DownloadProgress

        return (
            isinstance(message, DeployProgressed)
            and isinstance(self.report, DownloadProgress)
            and isinstance(message.report, DownloadProgress)
        )


@dataclass
class DeployFinished(Message):
    result: Deployment


@dataclass
class DeployFailed(Message):
    reason: str


@dataclass
class FallbackRead(Message):
    mode: str


@dataclass
class FallbackSwitched(Message):
    mode: str


@dataclass
class ModelOrdered(Message):
    """An admin's order to one of several chat models was carried out (or refused: `ok`)."""

    model: str
    action: str
    outcome: str
    ok: bool = True


@dataclass
class LogLines(Message):
    service: str
    lines: tuple[str, ...]


@dataclass
class LogsEnded(Message):
    service: str
    reason: str


@dataclass
class KeysListed(Message):
    keys: tuple[KeyInfo, ...]


@dataclass
class KeyCreated(Message):
    created: CreatedKey


@dataclass
class KeyRevoked(Message):
    info: KeyInfo


@dataclass
class CostComputed(Message, bubble=False):
    """`appliance cost` for one window: the report as text, or why there is none."""

    view: CostView
