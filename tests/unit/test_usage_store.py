"""The usage store: snapshots in, per-minute rows on disk, windows out, bounded, across restarts."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from appliance.cost import cost_for_window
from appliance.economics import ApiPrice, CostInputs
from appliance.errors import BadInputError, EnvironmentNotReadyError
from appliance.gateway.app import GatewayMetrics, Outcome
from appliance.monitor.snapshot import GpuStats, ServiceStats, Snapshot, Timestamp
from appliance.usage_store import (
    GatewayCounters,
    UsageRecorder,
    UsageStore,
    gateway_counters_from_metrics,
)

T0 = 1_800_000_000.0  # a Unix time on a minute boundary (2027-01-15)


def _snapshot(
    wall: float,
    *,
    tick: int = 0,
    prompt: float | None = 70.0,
    generation: float | None = 30.0,
    requests: float | None = 0.5,
    utilization: tuple[float | None, ...] = (50.0,),
    power: tuple[float | None, ...] = (300.0,),
    limit: float | None = 450.0,
) -> Snapshot:
    gpus = tuple(
        GpuStats(
            index=index,
            utilization_gpu_pct=util,
            power_draw_w=watts,
            power_limit_w=limit,
        )
        for index, (util, watts) in enumerate(zip(utilization, power, strict=True))
    )
    services = (
        ServiceStats(
            name="vllm",
            kind="vllm",
            url="http://127.0.0.1:8000",
            healthy=True,
            prompt_tokens_per_s=prompt,
            generation_tokens_per_s=generation,
            requests_per_s=requests,
        ),
        # TEI's traffic is embeddings: it must not count as chat tokens.
        ServiceStats(
            name="tei",
            kind="tei",
            url="http://127.0.0.1:8001",
            healthy=True,
            prompt_tokens_per_s=1000.0,
            requests_per_s=10.0,
        ),
    )
    return Snapshot(
        tick=tick,
        taken_at=Timestamp(monotonic=wall - T0, wall=wall),
        interval_s=1.0,
        gpus=gpus,
        services=services,
    )


def _run(recorder: UsageRecorder, start: float, seconds: int, **kwargs: object) -> float:
    for i in range(seconds + 1):
        recorder.record(_snapshot(start + i, tick=i, **kwargs))  # type: ignore[arg-type]
    return start + seconds


def test_three_minutes_of_traffic(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        end = _run(recorder, T0, 180)
        recorder.flush(end)
        usage = store.usage("hour", end)
    # 181 ticks: the first counts one interval, the next 180 one second each.
    assert usage.observed_seconds == pytest.approx(181)
    assert usage.prompt_tokens == pytest.approx(70 * 181)
    assert usage.generation_tokens == pytest.approx(30 * 181)
    assert usage.engine_requests == pytest.approx(0.5 * 181)
    assert usage.gpu_count == 1
    assert usage.gpu_utilization_pct == pytest.approx(50.0)
    assert usage.gpu_power_w == pytest.approx(300.0)
    assert usage.gpu_power_limit_w == pytest.approx(450.0)


def test_several_gpus_average_utilisation_and_add_power(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        end = _run(recorder, T0, 10, utilization=(20.0, 60.0), power=(100.0, 250.0))
        recorder.flush(end)
        usage = store.usage("hour", end)
    assert usage.gpu_count == 2
    assert usage.gpu_utilization_pct == pytest.approx(40.0)
    assert usage.gpu_power_w == pytest.approx(350.0)
    assert usage.gpu_power_limit_w == pytest.approx(900.0)


def test_unknown_readings_stay_unknown(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        end = _run(
            recorder,
            T0,
            5,
            prompt=None,
            generation=None,
            utilization=(None,),
            power=(None,),
            limit=None,
        )
        recorder.flush(end)
        usage = store.usage("hour", end)
    assert usage.prompt_tokens == 0.0
    assert usage.gpu_utilization_pct is None
    assert usage.gpu_power_w is None
    assert usage.observed_seconds == pytest.approx(6)


def test_a_gap_counts_one_interval_not_the_whole_gap(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        recorder.record(_snapshot(T0))
        recorder.record(_snapshot(T0 + 3600))  # the monitor was stopped for an hour
        recorder.record(_snapshot(T0 + 3600))  # the same tick twice adds nothing
        recorder.record(_snapshot(T0 + 3599))  # the clock stepping back adds nothing
        recorder.flush(T0 + 3600)
        usage = store.usage("day", T0 + 3600)
    assert usage.observed_seconds == pytest.approx(2)
    assert usage.prompt_tokens == pytest.approx(140)


def test_gateway_counters_become_increases_and_survive_resets(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        readings = [
            GatewayCounters(100, 10),  # baseline: what came before is unknown
            GatewayCounters(150, 12),  # +50 local, +2 remote
            GatewayCounters(5, 1),  # the gateway restarted: +5, +1
            GatewayCounters(25, 1),  # +20, +0
        ]
        for i, counters in enumerate(readings):
            recorder.record(_snapshot(T0 + i), counters)
        recorder.flush(T0 + 3)
        usage = store.usage("hour", T0 + 3)
    assert usage.local_requests == 75
    assert usage.fallback_requests == 3


def test_usage_persists_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "usage.sqlite3"
    with UsageStore(path) as store:
        recorder = UsageRecorder(store)
        end = _run(recorder, T0, 59)
        recorder.flush(end)
    with UsageStore(path) as store:  # a new process
        recorder = UsageRecorder(store)
        end = _run(recorder, T0 + 120, 59)
        recorder.flush(end)
        usage = store.usage("hour", end)
    assert usage.observed_seconds == pytest.approx(120)
    assert usage.prompt_tokens == pytest.approx(70 * 120)


def test_windows_select_their_span(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        _run(recorder, T0, 9)  # three days before "now"
        recorder.flush()
        recorder = UsageRecorder(store)
        now = _run(recorder, T0 + 3 * 86_400, 9)
        recorder.flush(now)
        assert store.usage("hour", now).observed_seconds == pytest.approx(10)
        assert store.usage("day", now).observed_seconds == pytest.approx(10)
        assert store.usage("7d", now).observed_seconds == pytest.approx(20)
        with pytest.raises(BadInputError, match="unknown window"):
            store.usage("month", now)  # type: ignore[arg-type]


def test_the_store_is_bounded(tmp_path: Path) -> None:
    with UsageStore(tmp_path / "usage.sqlite3", retention_seconds=3600) as store:
        # five hours of minutes
        store.write({int(T0 // 60) + minute: {"seconds": 60.0} for minute in range(300)})
        store.prune(T0 + 300 * 60)
        assert store.rows() <= 61
    # The default retention keeps eight days: at most 8 x 1440 rows.
    with UsageStore(tmp_path / "default.sqlite3") as store:
        recorder = UsageRecorder(store)
        for minute in range(0, 10 * 1440, 29):
            recorder.record(_snapshot(T0 + minute * 60))
        recorder.flush(T0 + 10 * 1440 * 60)
        assert store.rows() <= 8 * 1440 + 1


def test_an_unusable_store_is_an_appliance_error(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(EnvironmentNotReadyError, match="newer appliance"):
        UsageStore(newer)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(EnvironmentNotReadyError, match="cannot open the usage store"):
        UsageStore(garbage)


def test_gateway_counters_from_the_gateways_own_metrics() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    for _ in range(7):
        metrics.count("/v1/chat/completions", "local", Outcome.OK)
    metrics.count("/v1/completions", "local", Outcome.UPSTREAM_ERROR)
    metrics.count("/v1/chat/completions", "remote", Outcome.OK)
    metrics.count("/v1/chat/completions", "remote", Outcome.CLIENT_ERROR)
    metrics.count("/v1/embeddings", "local", Outcome.OK)  # not chat
    metrics.count("/v1/chat/completions", "none", Outcome.UNAUTHORIZED)  # never served
    from prometheus_client import generate_latest

    counters = gateway_counters_from_metrics(generate_latest(metrics.registry).decode())
    assert counters == GatewayCounters(local_requests=8, remote_requests=2)
    assert gateway_counters_from_metrics("# nothing here\nup 1\n") is None


def test_cost_over_a_recorded_day_matches_a_hand_calculation(tmp_path: Path) -> None:
    """The acceptance test: a recorded history through `cost_for_window` to the report."""
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        # 2 hours at 1 s: 70 + 30 tokens/s, 50 % utilisation, 300 W; 200 local, 20 remote.
        for i in range(7201):
            counters = GatewayCounters(local_requests=i / 36, remote_requests=i / 360)
            recorder.record(_snapshot(T0 + i, tick=i), counters)
        recorder.flush(T0 + 7200)
    inputs = CostInputs(
        purchase_price=8760.0,  # / (12 x 730 h) = $1.00/h
        amortisation_months=12,
        electricity_per_kwh=0.50,  # 0.3 kW -> $0.15/h
        operations_overhead_pct=20.0,
    )
    price = ApiPrice(name="api", input_per_million=3.0, output_per_million=15.0)
    from appliance.cost import PriceTable

    table = PriceTable.model_validate(
        {
            "schema": 1,
            "prices": {
                "api": {
                    "input_per_million": 3.0,
                    "output_per_million": 15.0,
                    "read_on": "2026-11-23",
                    "source": "test",
                }
            },
        }
    )
    report = cost_for_window(
        tmp_path,
        inputs.model_copy(update={"api": "api"}),
        window="day",
        now_wall=T0 + 7200,
        prices=table,
    )
    hours = 7201 / 3600
    per_hour = (1.00 + 0.15) * 1.2
    assert report.observed_hours == pytest.approx(hours)
    assert report.cost_per_hour.total == pytest.approx(per_hour)
    assert report.box_cost == pytest.approx(per_hour * hours)
    tokens = 100 * 7201
    assert report.cost_per_million_measured == pytest.approx(per_hour * hours / tokens * 1e6)
    assert report.api_cost_same_traffic == pytest.approx(
        (70 * 7201 * price.input_per_million + 30 * 7201 * price.output_per_million) / 1e6
    )
    assert report.tokens_per_day == pytest.approx(100 * 86_400)
    assert report.local_requests == pytest.approx(200)
    assert report.fallback_requests == pytest.approx(20)
    assert report.fallback_share_pct == pytest.approx(20 / 220 * 100)


def test_cost_without_a_store_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no usage recorded yet"):
        cost_for_window(tmp_path, CostInputs(gpu_cost_per_hour=1.0))


def test_read_gateway_counters_through_an_injected_transport() -> None:
    import asyncio

    import httpx
    from prometheus_client import generate_latest

    from appliance.usage_store import read_gateway_counters

    metrics = GatewayMetrics(CollectorRegistry())
    metrics.count("/v1/chat/completions", "local", Outcome.OK)
    metrics.count("/v1/chat/completions", "remote", Outcome.OK)
    body = generate_latest(metrics.registry)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path != "/metrics":
            return httpx.Response(404)
        return httpx.Response(200, content=body)

    async def read(url: str) -> GatewayCounters | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            return await read_gateway_counters(client, url)

    assert asyncio.run(read("http://gw:8080/")) == GatewayCounters(1, 1)
    assert asyncio.run(read("http://down:8080")) is None


def test_on_snapshot_fits_watch_status(tmp_path: Path) -> None:
    from appliance.monitor.series import History

    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        history = History(capacity=10)
        for i in range(3):
            recorder.on_snapshot(_snapshot(T0 + i), history)
        recorder.flush(T0 + 2)
        assert store.usage("hour", T0 + 2).prompt_tokens == pytest.approx(210)


class _FakeClock:
    """The monitor's clock protocol, advancing only when the monitor sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return T0 + self.now

    async def sleep(self, seconds: float) -> None:
        import asyncio

        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def test_the_simulated_monitor_feeds_the_recorder_and_the_cost_report(tmp_path: Path) -> None:
    """Real snapshots from the monitor loop (simulated H100 box) through to `cost_for_window`."""
    from appliance.operations.status import simulated, watch_status

    clock = _FakeClock()
    samplers, clock_used = simulated("h100", clock=clock)
    with UsageStore(tmp_path / "usage.sqlite3") as store:
        recorder = UsageRecorder(store)
        watch_status(samplers, recorder.on_snapshot, count=120, clock=clock_used)
        recorder.flush(T0 + clock.now)
        usage = store.usage("hour", T0 + clock.now)
    assert usage.observed_seconds == pytest.approx(120, abs=2)
    assert usage.gpu_count == 1
    assert usage.gpu_power_w is not None
    assert usage.gpu_power_w > 0
    assert usage.gpu_utilization_pct is not None
    assert usage.total_tokens > 0
    report = cost_for_window(
        tmp_path,
        CostInputs(gpu_cost_per_hour=2.0, api="openai/gpt-4o"),
        window="hour",
        now_wall=T0 + clock.now,
    )
    assert report.cost_per_million_measured is not None
    assert report.cost_per_million_measured > 0
    assert report.verdict


def test_the_store_and_its_wal_files_are_private(tmp_path: Path) -> None:
    """Usage per minute says who was busy when: private like the keys (#13 item 18)."""
    import os
    import stat

    old_umask = os.umask(0o022)  # a typical root umask: new files would be 0644
    try:
        path = tmp_path / "state" / "usage.sqlite3"
        with UsageStore(path) as store:
            store.add(int(T0 // 60), {"seconds": 1.0})
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in path.parent.iterdir()
                if p.name.startswith("usage.sqlite3")
            }
        assert {"usage.sqlite3", "usage.sqlite3-wal", "usage.sqlite3-shm"} <= set(modes)
        assert all(mode == 0o600 for mode in modes.values()), modes

        # A store created world-readable by an older version is made private when opened.
        path.chmod(0o644)
        UsageStore(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (the tests run as root), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    return filler


def test_a_full_disk_does_not_stop_the_gateways_monitor_and_loses_nothing(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """#13 item 17: one disk-full moment used to kill the monitor task for good."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from appliance.clock import ManualClock
    from appliance.gateway.recording import monitor_and_record
    from appliance.monitor.monitor import Monitor
    from appliance.operations.status import simulated

    clock = ManualClock(0.0, T0)
    samplers, _ = simulated("rtx4090", clock=clock)
    monitor = Monitor(samplers, clock=clock)
    store = UsageStore(tiny_disk / "usage.sqlite3")
    recorder = UsageRecorder(store, gateway_baseline=GatewayCounters(0.0, 0.0))
    app = SimpleNamespace(metrics=GatewayMetrics(CollectorRegistry()))
    filler = _fill(tiny_disk)

    async def until(monotonic: float, task: asyncio.Task[None]) -> None:
        for _ in range(100_000):  # bounded: a few hundred fake seconds of ticks
            latest = monitor.latest
            if task.done() or (latest is not None and latest.taken_at.monotonic >= monotonic):
                return
            await asyncio.sleep(0)
        raise AssertionError("the monitor did not reach the wanted time")

    async def go() -> float:
        task = asyncio.get_running_loop().create_task(
            monitor_and_record(app, monitor, recorder)  # type: ignore[arg-type]
        )
        try:
            await until(180.0, task)  # three minutes on a full disk: three failed flushes
            assert not task.done(), task.exception()
            filler.unlink()
            await until(240.0, task)
            assert not task.done(), task.exception()
            return clock.wall()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="appliance.usage"):
        now = asyncio.run(go())
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "usage store" in r.getMessage()]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said  # once each
    assert "disk is full" in said[0][1]
    assert "written again" in said[1][1]
    usage = store.usage("hour", now)
    assert usage.observed_seconds >= 240.0  # the minutes on the full disk were kept and written
    store.close()
