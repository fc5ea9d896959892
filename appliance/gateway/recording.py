"""The gateway process also watches the box: one monitor feeds auto fallback and the cost store.

The gateway is the one appliance process that runs all the time, so it hosts the 1 Hz monitor:
its snapshots give `auto` fallback the engine's queue depth and health (instead of a probe of
its own), and each tick, with the gateway's own request counters read in-process, is recorded
in the usage store that `appliance cost` reads.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import generate_latest

from appliance.usage_store import gateway_counters_from_metrics

if TYPE_CHECKING:
    from appliance.gateway.app import GatewayApp
    from appliance.monitor.monitor import Monitor
    from appliance.usage_store import UsageRecorder

log = logging.getLogger("appliance.gateway")


async def monitor_and_record(
    app: GatewayApp, monitor: Monitor, recorder: UsageRecorder | None
) -> None:
    """Tick the monitor until cancelled; record each snapshot with the gateway's counters.

    Recording never ends the loop: the monitor is what auto fallback and /health read, so a
    failing store (the recorder logs and retries write errors itself) or a bug in recording is
    logged once and the ticks go on.
    """
    failing = False
    try:
        async with monitor:
            async for snapshot in monitor.run():
                if recorder is None:
                    continue
                try:
                    text = generate_latest(app.metrics.registry).decode()
                    recorder.record(snapshot, gateway_counters_from_metrics(text))
                except Exception:  # the monitor outlives any recording failure
                    if not failing:
                        log.exception("recording usage failed; the monitor keeps running")
                    failing = True
                else:
                    failing = False
    finally:
        if recorder is not None:
            try:
                recorder.flush(time.time())
            except Exception:  # shutting down: a lost minute is only logged
                log.exception("could not write the last minute of usage")
