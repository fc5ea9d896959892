"""The user-felt latency summary of a snapshot: the keys `status --json` promises."""

from __future__ import annotations

import json

from appliance.monitor.snapshot import LatencySummary, ServiceStats, Snapshot, Timestamp


def _services() -> list[ServiceStats]:
    return [
        ServiceStats(
            name="vllm", kind="vllm", url="u", healthy=True,
            ttft_p50_s=0.03, ttft_p95_s=0.08, e2e_p50_s=1.0, e2e_p95_s=2.0,
        ),
        ServiceStats(
            name="gateway", kind="gateway", url="u", healthy=True,
            ttft_p50_s=0.6, ttft_p95_s=1.5, e2e_p50_s=1.7, e2e_p95_s=3.5,
        ),
    ]  # fmt: skip


def test_status_json_carries_gateway_and_vllm_quantiles_under_obvious_keys() -> None:
    services = _services()
    snapshot = Snapshot(
        tick=1,
        taken_at=Timestamp(monotonic=1.0, wall=1e9),
        interval_s=1.0,
        services=tuple(services),
        latency=LatencySummary.of(services),
    )
    document = json.loads(snapshot.model_dump_json())
    latency = document["latency"]
    assert latency["gateway"]["ttft_seconds"] == {"p50": 0.6, "p95": 1.5}
    assert latency["gateway"]["e2e_seconds"] == {"p50": 1.7, "p95": 3.5}
    assert latency["vllm"]["ttft_seconds"] == {"p50": 0.03, "p95": 0.08}
    assert latency["vllm"]["e2e_seconds"] == {"p50": 1.0, "p95": 2.0}
    assert latency["ttft_source"] == "gateway"
    assert Snapshot.model_validate_json(snapshot.model_dump_json()) == snapshot


def test_the_source_falls_back_to_vllm_then_to_none() -> None:
    vllm, gateway = _services()
    quiet = gateway.model_copy(update={"ttft_p50_s": None, "ttft_p95_s": None})
    assert LatencySummary.of([vllm, quiet]).ttft_source == "vllm"
    assert LatencySummary.of([vllm]).gateway.ttft_seconds.p95 is None
    assert LatencySummary.of([]).ttft_source is None
