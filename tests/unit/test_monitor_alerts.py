"""Alert thresholds with hysteresis: raised after the condition held, cleared at a lower level."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.monitor.alerts import AlertThresholds, AlertTracker, Observation, observe, rules
from appliance.monitor.snapshot import GpuStats, ServiceStats
from appliance.profile import load_profile

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def _run(
    tracker: AlertTracker, code: str, values: list[float | None], *, subject: str = "gpu0"
) -> list[bool]:
    """Feed one value a second; say after each tick whether the alert is active."""
    active = []
    for t, value in enumerate(values):
        alerts = tracker.update([Observation(code, subject, value)], now=float(t), now_wall=1e9 + t)
        active.append(any(a.code == code and a.subject == subject for a in alerts))
    return active


def test_raised_only_after_the_condition_held_for_sustain_seconds() -> None:
    tracker = AlertTracker(AlertThresholds(gpu_temperature_c=80, sustain_seconds=3))
    # Above 80 from t=1: held 3 s at t=4.
    assert _run(tracker, "gpu-temperature", [70, 85, 85, 85, 85, 85]) == [
        False, False, False, False, True, True,
    ]  # fmt: skip


def test_hysteresis_clears_only_below_the_lower_level_for_as_long() -> None:
    tracker = AlertTracker(AlertThresholds(gpu_temperature_c=80, sustain_seconds=2))
    values = [85, 85, 85, 79, 78, 77, 75, 74, 74, 74]
    # raised at t=2; 79..76 is below 80 but above the clear level 75: stays raised;
    # ≤ 75 from t=6, held 2 s at t=8: cleared.
    assert _run(tracker, "gpu-temperature", values) == [
        False, False, True, True, True, True, True, True, False, False,
    ]  # fmt: skip


def test_a_value_hovering_around_the_threshold_does_not_flap() -> None:
    tracker = AlertTracker(AlertThresholds(kv_cache_usage_pct=90, sustain_seconds=2))
    assert not any(_run(tracker, "kv-cache-full", [91, 89] * 10, subject="vllm"))


def test_unknown_values_neither_raise_nor_clear() -> None:
    tracker = AlertTracker(AlertThresholds(waiting_requests=10, sustain_seconds=2))
    values = [20, None, 20, 20, None, None, 0, 0, None, 0]
    # above since t=0 (t=1 unknown), raised at t=2; the unknowns at t=4..5 keep it; 0 from t=6,
    # held 2 s at t=8 even though t=8 itself is unknown → cleared when judged at t=9.
    active = _run(tracker, "requests-waiting", values, subject="vllm")
    assert active == [False, False, True, True, True, True, True, True, True, False]


def test_a_subject_no_longer_observed_loses_its_alerts() -> None:
    tracker = AlertTracker(AlertThresholds().immediate())
    assert tracker.update([Observation("service-unhealthy", "tei", 1.0)], now=0, now_wall=0)
    assert tracker.update([], now=1, now_wall=1) == ()


def test_immediate_thresholds_raise_on_the_first_tick() -> None:
    tracker = AlertTracker(AlertThresholds().immediate())
    alerts = tracker.update([Observation("ttft-slow", "vllm", 3.2)], now=5.0, now_wall=1234.0)
    (alert,) = alerts
    assert alert.code == "ttft-slow"
    assert alert.value == 3.2
    assert alert.threshold == 2.0
    assert alert.since == 1234.0
    assert alert.message == "vllm time to first token p95 is 3.20 s"


def test_unhealthy_is_acted_on_sooner_than_trends() -> None:
    tracker = AlertTracker(AlertThresholds(sustain_seconds=30, unhealthy_seconds=3))
    assert _run(tracker, "service-unhealthy", [1, 1, 1, 1, 0, 0, 0, 0], subject="vllm") == [
        False, False, False, True, True, True, True, False,
    ]  # fmt: skip


def test_restarts_alert_at_once_and_clear_when_the_window_holds_none() -> None:
    tracker = AlertTracker(AlertThresholds(sustain_seconds=30))
    active = _run(tracker, "container-restarts", [0, 1, 1, 0], subject="vllm")
    assert active == [False, True, True, False]


def test_critical_alerts_come_first() -> None:
    tracker = AlertTracker(AlertThresholds().immediate())
    alerts = tracker.update(
        [
            Observation("kv-cache-full", "vllm", 95.0),
            Observation("service-unhealthy", "tei", 1.0),
        ],
        now=0,
        now_wall=0,
    )
    assert [alert.code for alert in alerts] == ["service-unhealthy", "kv-cache-full"]


def test_every_rule_says_what_to_do() -> None:
    for rule in rules(AlertThresholds()).values():
        assert rule.suggestion
        assert "\n" not in rule.suggestion
    kv = rules(AlertThresholds())["kv-cache-full"].suggestion
    assert "max_num_seqs" in kv
    assert "fp8" in kv
    assert "fallback" in kv


def test_observations_from_gpus_and_services() -> None:
    gpu = GpuStats(
        index=1,
        temperature_c=83,
        memory_used_bytes=995,
        memory_total_bytes=1000,
        throttle_reasons=("sw_power_cap", "hw_thermal"),
        ecc_errors_uncorrected=2,
    )
    vllm = ServiceStats(
        name="vllm", kind="vllm", url="u", healthy=True, kv_cache_usage_pct=93.0,
        waiting_requests=20, ttft_p95_s=2.5, error_rate_pct=0.0,
    )  # fmt: skip
    tei = ServiceStats(name="tei", kind="tei", url="u", healthy=False)
    gateway = ServiceStats(name="gateway", kind="http", url="u", healthy=True)
    found = {
        (o.code, o.subject): o.value for o in observe([gpu], [vllm, tei, gateway], {"vllm": 0.0})
    }
    assert found[("gpu-temperature", "gpu1")] == 83
    assert found[("gpu-memory", "gpu1")] == 99.5
    assert found[("gpu-throttled", "gpu1")] == 1.0  # hw_thermal protects the card
    assert found[("gpu-ecc-errors", "gpu1")] == 2.0
    assert found[("kv-cache-full", "vllm")] == 93.0
    assert found[("requests-waiting", "vllm")] == 20
    assert found[("service-unhealthy", "tei")] == 1.0
    assert found[("embeddings-waiting", "tei")] is None
    assert found[("container-restarts", "vllm")] == 0.0
    assert ("error-rate", "gateway") not in found
    tracker = AlertTracker(AlertThresholds().immediate())
    codes = {
        (a.code, a.subject)
        for a in tracker.update(observe([gpu], [vllm, tei, gateway]), now=0, now_wall=0)
    }
    assert codes == {
        ("gpu-temperature", "gpu1"),
        ("gpu-memory", "gpu1"),
        ("gpu-throttled", "gpu1"),
        ("gpu-ecc-errors", "gpu1"),
        ("kv-cache-full", "vllm"),
        ("requests-waiting", "vllm"),
        ("ttft-slow", "vllm"),
        ("service-unhealthy", "tei"),
    }


def test_power_cap_alone_is_not_throttling_worth_an_alert() -> None:
    gpu = GpuStats(index=0, throttle_reasons=("sw_power_cap",))
    (throttled,) = [o for o in observe([gpu], []) if o.code == "gpu-throttled"]
    assert throttled.value == 0.0


@pytest.mark.parametrize("name", ["rtx4090-chat", "l40s-rag"])
def test_thresholds_come_from_the_profile(name: str) -> None:
    profile = load_profile(PROFILES / f"{name}.yaml")
    thresholds = AlertThresholds.from_profile(profile)
    alerts = profile.spec.monitoring.alerts
    assert thresholds.gpu_temperature_c == alerts.gpu_temperature_c
    assert thresholds.kv_cache_usage_pct == alerts.kv_cache_usage_pct
    assert thresholds.waiting_requests == alerts.waiting_requests
    assert thresholds.ttft_p95_seconds == alerts.ttft_p95_seconds
    assert thresholds.error_rate_pct == alerts.error_rate_pct
    assert thresholds.sustain_seconds == alerts.sustain_seconds
    assert thresholds.gpu_memory_used_pct == alerts.gpu_memory_used_pct


def test_defaults_match_the_profile_schema_defaults() -> None:
    from appliance.profile import AlertThresholds as ProfileAlerts

    ours, theirs = AlertThresholds(), ProfileAlerts()
    assert ours.gpu_temperature_c == theirs.gpu_temperature_c
    assert ours.gpu_memory_used_pct == theirs.gpu_memory_used_pct
    assert ours.kv_cache_usage_pct == theirs.kv_cache_usage_pct
    assert ours.waiting_requests == theirs.waiting_requests
    assert ours.ttft_p95_seconds == theirs.ttft_p95_seconds
    assert ours.error_rate_pct == theirs.error_rate_pct
    assert ours.sustain_seconds == theirs.sustain_seconds


def _ttft(tracker: AlertTracker, values: list[float]) -> tuple[object, ...]:
    alerts: tuple[object, ...] = ()
    for t, value in enumerate(values):
        alerts = tracker.update(
            [Observation("ttft-slow", "vllm", value)], now=float(t), now_wall=1e9 + t
        )
    return alerts


def test_an_alert_shows_its_threshold_and_when_it_clears() -> None:
    tracker = AlertTracker(AlertThresholds(ttft_p95_seconds=2.0, sustain_seconds=30))
    # Raised after 30 s above 2.0 s; then back at 0.71 s for 6 s: 24 s left until it clears.
    (alert,) = _ttft(tracker, [2.5] * 31 + [0.71] * 7)
    assert alert.headline() == (  # type: ignore[attr-defined]
        "vllm time to first token p95 is 0.71 s (> 2.0 s) — clearing in 24 s"
    )
    assert alert.clear_threshold == 1.5  # type: ignore[attr-defined]
    # Below the threshold but above the clear level: it holds, and says what clears it.
    (alert,) = _ttft(tracker, [1.8])
    assert alert.headline().endswith("is 1.80 s (> 2.0 s) — clears once ≤ 1.5 s")  # type: ignore[attr-defined]
    (alert,) = _ttft(tracker, [2.4])
    assert alert.headline().endswith("is 2.40 s (> 2.0 s)")  # type: ignore[attr-defined]


def test_advice_reads_the_running_profile() -> None:
    from appliance.monitor.alerts import RunningProfile

    everything = rules(AlertThresholds())["ttft-slow"].suggestion
    assert "enable_prefix_caching: true" in everything
    assert "fallback" in everything
    profile = load_profile(PROFILES / "rtx4090-chat.yaml")
    running = RunningProfile.from_profile(profile)
    assert running.prefix_caching is True  # the default: already on
    advice = rules(AlertThresholds(), running)
    assert "enable_prefix_caching" not in advice["ttft-slow"].suggestion
    assert "max_num_seqs" in advice["ttft-slow"].suggestion
    if profile.spec.gateway.fallback.remote is None:  # fallback auto would be refused
        assert not [r.code for r in advice.values() if "fallback" in r.suggestion]
    fp8 = RunningProfile(kv_cache_fp8=True, remote_fallback=True)
    kv = rules(AlertThresholds(), fp8)["kv-cache-full"].suggestion
    assert "fp8" not in kv
    assert kv == "lower spec.engine.max_num_seqs or set gateway fallback to auto"


def test_status_and_the_monitor_config_carry_the_same_advice_and_thresholds() -> None:
    from appliance.monitor.monitor import MonitorConfig
    from appliance.monitor.render import render_status
    from appliance.monitor.snapshot import Snapshot, Timestamp

    profile = load_profile(PROFILES / "rtx4090-chat.yaml")
    config = MonitorConfig.from_profile(profile)
    tracker = AlertTracker(config.thresholds.immediate(), config.running)
    alerts = tracker.update([Observation("ttft-slow", "vllm", 9.0)], now=0.0, now_wall=1e9)
    snapshot = Snapshot(tick=1, taken_at=Timestamp(monotonic=0, wall=1e9), interval_s=1.0,
                        alerts=alerts)  # fmt: skip
    text = render_status(snapshot)
    threshold = config.thresholds.ttft_p95_seconds
    assert f"vllm time to first token p95 is 9.00 s (> {threshold:.1f} s)" in text
    assert "enable_prefix_caching" not in text


def test_an_unhealthy_gateway_is_pointed_at_its_systemd_unit_not_docker() -> None:
    from appliance.gateway.service import UNIT_NAME

    tracker = AlertTracker(AlertThresholds().immediate())
    alerts = tracker.update(
        [Observation("service-unhealthy", name, 1.0) for name in ("gateway", "vllm")],
        now=0.0,
        now_wall=1e9,
    )
    advice = {alert.subject: alert.suggestion for alert in alerts}
    assert UNIT_NAME.removesuffix(".service") in advice["gateway"]
    assert "docker" not in advice["gateway"]
    assert "docker logs" in advice["vllm"]


def test_status_check_names_the_threshold_as_status_and_the_tui_do() -> None:
    from appliance.monitor.snapshot import Snapshot, Timestamp
    from appliance.operations.status import AlertsActiveError

    tracker = AlertTracker(AlertThresholds(kv_cache_usage_pct=90).immediate())
    alerts = tracker.update([Observation("kv-cache-full", "vllm", 97.0)], now=0.0, now_wall=1e9)
    snapshot = Snapshot(tick=1, taken_at=Timestamp(monotonic=0, wall=1e9), interval_s=1.0,
                        alerts=alerts)  # fmt: skip
    assert "[warning] vllm KV cache is 97 % full (> 90 %)" in AlertsActiveError(snapshot).message


def test_ttft_alert_reads_the_users_figure_from_the_gateway_when_it_has_one() -> None:
    vllm = ServiceStats(name="vllm", kind="vllm", url="u", healthy=True, ttft_p95_s=0.2)
    gateway = ServiceStats(name="gateway", kind="gateway", url="u", healthy=True, ttft_p95_s=3.0)
    ttft = {(o.subject, o.value) for o in observe([], [vllm, gateway]) if o.code == "ttft-slow"}
    assert ttft == {("gateway", 3.0)}  # the subject names the source
    (alert,) = AlertTracker(AlertThresholds().immediate()).update(
        observe([], [vllm, gateway]), now=0, now_wall=0
    )
    assert (alert.code, alert.subject) == ("ttft-slow", "gateway")
    assert alert.message.startswith("gateway time to first token p95")


def test_ttft_alert_falls_back_to_vllm_without_gateway_figures() -> None:
    vllm = ServiceStats(name="vllm", kind="vllm", url="u", healthy=True, ttft_p95_s=2.5)
    quiet = ServiceStats(name="gateway", kind="gateway", url="u", healthy=True)
    for services in ([vllm], [vllm, quiet]):
        ttft = {(o.subject, o.value) for o in observe([], services) if o.code == "ttft-slow"}
        assert ttft == {("vllm", 2.5)}
