"""The gateway's own view of the local engine, when no monitor is injected: a `LoadSignal`.

Once per interval it asks the engine's `/health` (200 is healthy; refused or 5xx is not) and
reads `vllm:num_requests_waiting` from its `/metrics` with prometheus_client's parser. Only the
lines of that one family are handed to the parser: a vLLM scrape is tens of kilobytes, and this
runs on the event loop the requests share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from appliance.gateway.upstream import Upstream, UpstreamError, fetch_whole
from appliance.monitor.scrape import family_samples

log = logging.getLogger("appliance.gateway")

WAITING_METRIC = "vllm:num_requests_waiting"


def waiting_from_metrics(text: str, metric: str = WAITING_METRIC) -> int | None:
    """The sum of `metric` over all its series (one per engine), or None if it is absent."""
    samples = family_samples(text, metric)
    if not samples:
        return None
    return int(sum(sample.value for sample in samples if sample.name == metric))


class EngineProbe:
    """A `LoadSignal` fed by polling the engine; run `run()` as a background task.

    `queue=False` reads only `/health` (TEI: its queue routes nothing). Health transitions are
    logged by the gateway's engine watch, which sees this probe and the monitor alike.
    """

    def __init__(
        self,
        origin: Upstream,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        queue: bool = True,
    ) -> None:
        self._origin = origin
        self._interval_s = interval_s
        self._clock = clock
        self._queue = queue
        self._waiting: int | None = None
        self._healthy: bool | None = None
        self._problem: str | None = None
        self._read_at: float | None = None

    def waiting_requests(self) -> int | None:
        return self._waiting

    def healthy(self) -> bool | None:
        return self._healthy

    def problem(self) -> str | None:
        """Why the engine is not healthy, as last read (None while it is)."""
        return self._problem

    @property
    def age_seconds(self) -> float | None:
        return None if self._read_at is None else self._clock() - self._read_at

    async def _get(self, path: bytes) -> tuple[int, bytes]:
        return await fetch_whole(self._origin, b"GET", path)

    async def probe_once(self) -> None:
        try:
            status, _ = await self._get(b"/health")
        except UpstreamError as error:
            self._record(False, None, str(error))
            return
        healthy = status == 200
        waiting: int | None = None
        if not healthy:
            self._record(False, None, f"/health answered {status}")
            return
        if self._queue:
            try:
                status, text = await self._get(b"/metrics")
                if status == 200:
                    waiting = waiting_from_metrics(text.decode("utf-8", "replace"))
            except (UpstreamError, ValueError) as error:
                log.debug("engine metrics unreadable: %s", error)
        self._record(healthy, waiting)

    def _record(self, healthy: bool, waiting: int | None, why: str | None = None) -> None:
        self._healthy, self._waiting, self._problem = healthy, waiting, why
        self._read_at = self._clock()

    async def run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # a probe must never take the gateway down
                log.exception("engine probe failed")
            await asyncio.sleep(self._interval_s)
