"""What the box served, minute by minute, kept across restarts for `appliance cost`.

A `UsageRecorder` is fed every monitor `Snapshot` (and, when the gateway's `/metrics` is read,
its request counters as `GatewayCounters`); it integrates rates into counts and writes one row per
minute into a small SQLite file (`<state_dir>/usage.sqlite3`). `UsageStore.usage(window, now)`
sums the rows of the last hour, day or seven days into an `appliance.economics.Usage`.

What must stay true:

- Bounded: rows older than `retention_seconds` (eight days by default: the longest window plus a
  day) are deleted on every flush, so the file stays around a megabyte whatever the uptime.
- Gaps are not invented: a tick that comes more than `max_gap_seconds` after the one before counts
  for one interval only, so a stopped monitor does not turn into hours of traffic.
- Counters survive their own restarts: a gateway counter that goes down was reset, and its new
  value is the increase. The first reading after the recorder starts only sets the baseline.
- Tokens are vLLM's per-second rates from each snapshot integrated over the time between
  snapshots, so they match vLLM's own counters to within the monitor's rate window.
- Only chat traffic counts: tokens come from vLLM (TEI's embeddings are priced differently), and
  the gateway counters count the chat routes only.
- SQLite errors never escape as tracebacks: they become `appliance.errors` exceptions that say
  which file and what to do.
- A write that fails (disk full) never stops the recording: `record` keeps the minutes in
  memory (a day at most), logs the failure once, and writes them at a later tick that succeeds.
- The file and its -wal/-shm are 0600: per-minute usage shows who worked when.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from appliance.economics import Usage, WindowName
from appliance.errors import ApplianceError, BadInputError, EnvironmentNotReadyError
from appliance.monitor.scrape import GATEWAY_REQUESTS_METRIC, family_samples

if TYPE_CHECKING:
    import httpx

    from appliance.monitor.series import History
    from appliance.monitor.snapshot import Snapshot
    from appliance.profile import Profile

__all__ = [
    "CHAT_ROUTES",
    "DEFAULT_RETENTION_SECONDS",
    "GATEWAY_REQUESTS_METRIC",
    "STORE_FILENAME",
    "WINDOW_SECONDS",
    "GatewayCounters",
    "UsageRecorder",
    "UsageStore",
    "gateway_counters_from_metrics",
    "read_gateway_counters",
]

STORE_FILENAME: Final = "usage.sqlite3"
WINDOW_SECONDS: Final[dict[WindowName, float]] = {"hour": 3600.0, "day": 86_400.0, "7d": 604_800.0}
DEFAULT_RETENTION_SECONDS: Final = 8 * 86_400.0
CHAT_ROUTES: Final = frozenset({"/v1/chat/completions", "/v1/completions"})
_SCHEMA_VERSION: Final = 1
_BUCKET_SECONDS: Final = 60
# Minutes kept in memory while the store cannot be written: a day, a few hundred kilobytes.
_MAX_PENDING_MINUTES: Final = 24 * 60

log = logging.getLogger("appliance.usage")

# Every column but `minute` is a sum, so merging a bucket into a row is `col = col + excluded.col`.
_SUMS: Final = (
    "seconds",
    "prompt_tokens",
    "generation_tokens",
    "engine_requests",
    "utilization_pct_seconds",  # Σ mean GPU utilisation x seconds, over the seconds it was known
    "utilization_seconds",
    "power_watt_seconds",  # Σ total GPU power draw x seconds
    "power_seconds",
    "power_limit_watt_seconds",
    "power_limit_seconds",
    "gpu_seconds",  # Σ GPUs seen x seconds: gpu_count = gpu_seconds / seconds, rounded
    "local_requests",
    "fallback_requests",
)


@dataclass(frozen=True)
class GatewayCounters:
    """The gateway's cumulative chat-request counters, as read from its `/metrics`."""

    local_requests: float
    remote_requests: float


def gateway_counters_from_metrics(text: str) -> GatewayCounters | None:
    """Chat requests answered locally and remotely, from the gateway's Prometheus text.

    None when the text has no `appliance_gateway_requests_total` at all (not the gateway, or an
    older one). Requests of every outcome count: a failed remote request is still paid for.
    """
    found = False
    local = remote = 0.0
    for sample in family_samples(text, GATEWAY_REQUESTS_METRIC) or ():
        if sample.name != f"{GATEWAY_REQUESTS_METRIC}_total":
            continue
        found = True
        if sample.labels.get("route") not in CHAT_ROUTES:
            continue
        destination = sample.labels.get("destination")
        if destination == "local":
            local += sample.value
        elif destination == "remote":
            remote += sample.value
    return GatewayCounters(local, remote) if found else None


async def read_gateway_counters(
    client: httpx.AsyncClient, gateway_url: str
) -> GatewayCounters | None:
    """The gateway's counters from `<gateway_url>/metrics`; None when it cannot be read.

    `client` is the caller's pooled client (the monitor's `HttpPool.client()`), so tests inject a
    transport and nothing here opens connections of its own. A gateway that is down is a normal
    case: its requests simply are not counted for those ticks.
    """
    import httpx

    try:
        response = await client.get(gateway_url.rstrip("/") + "/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return gateway_counters_from_metrics(response.text)
    except ValueError:  # not Prometheus text
        return None


@dataclass
class _Bucket:
    minute: int
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))

    def add(self, name: str, value: float) -> None:
        self.sums[name] += value


def _make_private(path: Path) -> None:
    """Create the store 0600, or make an older world-readable one so, before SQLite opens it.

    SQLite gives the -wal and -shm files it creates the database file's permissions
    (`robust_open` / `findCreateFileMode` in os_unix.c), so they follow; ones left by an older
    version are tightened here too. Usage by the minute shows who worked when: private like
    the keys file.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).chmod(0o600)


class UsageStore:
    """The SQLite file of per-minute usage. Open one per process; close it (or use `with`)."""

    def __init__(self, path: Path, *, retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        self.path = path
        self.retention_seconds = retention_seconds
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _make_private(path)
            self._db = sqlite3.connect(path, timeout=5.0)
            # WAL lets `appliance cost` read while the recorder writes; NORMAL sync may lose the
            # last minute on a power cut, never corrupt the file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._create()
        except (OSError, sqlite3.Error) as exc:
            raise EnvironmentNotReadyError(
                f"cannot open the usage store {path}: {exc}",
                hint="check that the state directory (spec.storage.state_dir) exists and that "
                "this user may write to it",
            ) from None

    @classmethod
    def for_profile(cls, profile: Profile) -> UsageStore:
        """The store in the profile's state directory."""
        return cls(profile.spec.storage.state_dir / STORE_FILENAME)

    def __enter__(self) -> UsageStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _create(self) -> None:
        columns = ", ".join(f"{name} REAL NOT NULL DEFAULT 0" for name in _SUMS)
        with self._db:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"written by a newer appliance (schema {version}, this one reads "
                    f"{_SCHEMA_VERSION})"
                )
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS usage (minute INTEGER PRIMARY KEY, {columns})"
            )
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._db:
                yield self._db
        except sqlite3.Error as exc:
            raise EnvironmentNotReadyError(
                f"cannot write the usage store {self.path}: {exc}",
                hint="check free disk space and the permissions of spec.storage.state_dir",
            ) from None

    def add(self, minute: int, sums: dict[str, float]) -> None:
        """Add `sums` (column → amount) into the row of `minute` (Unix time // 60)."""
        self.write({minute: sums})

    def write(self, rows: dict[int, dict[str, float]], prune_before: float | None = None) -> None:
        """Add each minute's sums into its row, and prune, in one transaction (one fsync)."""
        with self._writing() as db:
            for minute, sums in rows.items():
                unknown = set(sums) - set(_SUMS)
                if unknown:
                    raise ValueError(f"unknown usage columns: {sorted(unknown)}")
                names = list(sums)
                placeholders = ", ".join("?" for _ in names)
                updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in names)
                db.execute(
                    f"INSERT INTO usage (minute, {', '.join(names)}) VALUES (?, {placeholders}) "  # noqa: S608 - column names come from _SUMS
                    f"ON CONFLICT(minute) DO UPDATE SET {updates}",
                    (minute, *(sums[name] for name in names)),
                )
            if prune_before is not None:
                self._prune(db, prune_before)

    def _prune(self, db: sqlite3.Connection, now_wall: float) -> int:
        oldest = int((now_wall - self.retention_seconds) // _BUCKET_SECONDS)
        return db.execute("DELETE FROM usage WHERE minute < ?", (oldest,)).rowcount

    def prune(self, now_wall: float) -> int:
        """Delete rows older than the retention; the number deleted."""
        with self._writing() as db:
            return self._prune(db, now_wall)

    def rows(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])

    def usage(self, window: WindowName, now_wall: float) -> Usage:
        """The sums over the last `window` before `now_wall` (minutes that started in it)."""
        if window not in WINDOW_SECONDS:
            choices = ", ".join(WINDOW_SECONDS)
            raise BadInputError(f"unknown window {window!r}", hint=f"use one of: {choices}")
        start = now_wall - WINDOW_SECONDS[window]
        first = math.ceil(start / _BUCKET_SECONDS)
        last = int(now_wall // _BUCKET_SECONDS)
        query = ", ".join(f"TOTAL({name})" for name in _SUMS)
        try:
            row = self._db.execute(
                f"SELECT {query} FROM usage WHERE minute BETWEEN ? AND ?",  # noqa: S608 - fixed names
                (first, last),
            ).fetchone()
        except sqlite3.Error as exc:
            raise EnvironmentNotReadyError(
                f"cannot read the usage store {self.path}: {exc}",
                hint="move the file aside; a new one is started on the next record",
            ) from None
        s = dict(zip(_SUMS, (float(v) for v in row), strict=True))
        seconds = s["seconds"]

        def mean(total: str, known: str) -> float | None:
            return s[total] / s[known] if s[known] > 0 else None

        utilisation = mean("utilization_pct_seconds", "utilization_seconds")
        return Usage(
            window=window,
            start_wall=start,
            end_wall=now_wall,
            observed_seconds=seconds,
            prompt_tokens=s["prompt_tokens"],
            generation_tokens=s["generation_tokens"],
            engine_requests=s["engine_requests"],
            gpu_count=round(s["gpu_seconds"] / seconds) if seconds > 0 else 0,
            gpu_utilization_pct=min(utilisation, 100.0) if utilisation is not None else None,
            gpu_power_w=mean("power_watt_seconds", "power_seconds"),
            gpu_power_limit_w=mean("power_limit_watt_seconds", "power_limit_seconds"),
            local_requests=s["local_requests"],
            fallback_requests=s["fallback_requests"],
        )


def _counter_increase(previous: float | None, current: float) -> float:
    if previous is None:
        return 0.0  # the baseline: what happened before the recorder started is unknown
    return current - previous if current >= previous else current  # went down: it was reset


class UsageRecorder:
    """Turns snapshots into per-minute rows. Not thread-safe: feed it from one task."""

    def __init__(
        self,
        store: UsageStore,
        *,
        max_gap_seconds: float = 10.0,
        flush_every_seconds: float = 60.0,
        gateway_baseline: GatewayCounters | None = None,
    ) -> None:
        """`gateway_baseline`: the counters' values when recording starts, when known (the
        gateway's own process knows they start at zero); None takes the first reading as it."""
        self.store = store
        self.max_gap_seconds = max_gap_seconds
        self.flush_every_seconds = flush_every_seconds
        self._last_wall: float | None = None
        self._last_flush: float | None = None
        self._counters: GatewayCounters | None = gateway_baseline
        self._pending: dict[int, _Bucket] = {}
        # The last write failure, while writes fail (None when the store is being written).
        self.write_error: str | None = None

    def record(self, snapshot: Snapshot, gateway: GatewayCounters | None = None) -> None:
        """Account for the time since the previous snapshot; flush about once a minute."""
        wall = snapshot.taken_at.wall
        gap = None if self._last_wall is None else wall - self._last_wall
        if gap is not None and gap <= 0:
            return  # the same tick again, or the wall clock stepped back: nothing to add
        seconds = gap if gap is not None and gap <= self.max_gap_seconds else snapshot.interval_s
        self._last_wall = wall
        minute = int(wall // _BUCKET_SECONDS)
        bucket = self._pending.setdefault(minute, _Bucket(minute))
        bucket.add("seconds", seconds)

        for engine in snapshot.services:
            if engine.kind != "vllm":
                continue
            bucket.add("prompt_tokens", (engine.prompt_tokens_per_s or 0.0) * seconds)
            bucket.add("generation_tokens", (engine.generation_tokens_per_s or 0.0) * seconds)
            bucket.add("engine_requests", (engine.requests_per_s or 0.0) * seconds)

        gpus = [gpu for gpu in snapshot.gpus if gpu.error is None]
        bucket.add("gpu_seconds", len(gpus) * seconds)
        utilisation = [g.utilization_gpu_pct for g in gpus if g.utilization_gpu_pct is not None]
        if utilisation:
            bucket.add("utilization_pct_seconds", sum(utilisation) / len(utilisation) * seconds)
            bucket.add("utilization_seconds", seconds)
        power = [g.power_draw_w for g in gpus if g.power_draw_w is not None]
        if power:
            bucket.add("power_watt_seconds", sum(power) * seconds)
            bucket.add("power_seconds", seconds)
        limits = [g.power_limit_w for g in gpus if g.power_limit_w is not None]
        if limits:
            bucket.add("power_limit_watt_seconds", sum(limits) * seconds)
            bucket.add("power_limit_seconds", seconds)

        if gateway is not None:
            previous = self._counters
            bucket.add(
                "local_requests",
                _counter_increase(
                    None if previous is None else previous.local_requests, gateway.local_requests
                ),
            )
            bucket.add(
                "fallback_requests",
                _counter_increase(
                    None if previous is None else previous.remote_requests,
                    gateway.remote_requests,
                ),
            )
            self._counters = gateway

        if self._last_flush is None:
            self._last_flush = wall
        if wall - self._last_flush >= self.flush_every_seconds or len(self._pending) > 1:
            self._flush_or_log(wall)

    def on_snapshot(self, snapshot: Snapshot, history: History) -> None:
        """`status.OnSnapshot`-shaped: record the tokens and GPUs of each tick (no gateway).

        For `appliance status --watch` and the TUI: `watch_status(samplers, recorder.on_snapshot)`.
        A loop that also reads the gateway calls `record(snapshot, counters)` instead.
        """
        self.record(snapshot)

    def flush(self, now_wall: float | None = None) -> None:
        """Write what is pending, and drop rows past the retention.

        When the write fails (disk full, a read-only remount) the rows stay pending, so the
        next flush writes them; the error is raised. `record` calls it and does not raise.
        """
        pending, self._pending = self._pending, {}
        try:
            self.store.write({b.minute: b.sums for b in pending.values()}, prune_before=now_wall)
        except ApplianceError:
            for minute, bucket in pending.items():
                kept = self._pending.setdefault(minute, _Bucket(minute))
                for name, value in bucket.sums.items():
                    kept.add(name, value)
            # Bounded however long the disk stays full: the oldest minutes go first.
            while len(self._pending) > _MAX_PENDING_MINUTES:
                del self._pending[min(self._pending)]
            raise
        if now_wall is not None:
            self._last_flush = now_wall

    def _flush_or_log(self, now_wall: float) -> None:
        """Flush from `record`: a failure is logged once, and retried on every tick after."""
        try:
            self.flush(now_wall)
        except ApplianceError as error:
            if self.write_error is None:
                log.warning(
                    "%s; usage is kept in memory and written when that works again (%s)",
                    error.message,
                    error.hint,
                )
            self.write_error = error.message
            return
        if self.write_error is not None:
            log.info("the usage store %s is written again", self.store.path)
            self.write_error = None
