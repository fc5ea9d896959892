"""The Monitor screen against the vLLM engine double on real loopback HTTP: tokens/s advance."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console

from appliance.hardware import detect_box
from appliance.monitor.monitor import Monitor, MonitorConfig
from appliance.monitor.samplers import Endpoint, http_samplers
from appliance.tui.app import ApplianceApp
from appliance.tui.services import Services
from appliance.tui.widgets.panels import ServicesPanel
from tests.doubles import local_engine_double

VLLM_ARGS = ("--model", "/models/tiny", "--served-model-name", "tiny")


def _load(base_url: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as client:
        while not stop.is_set():
            body = {"model": "tiny", "prompt": "a b c", "max_tokens": 8}
            client.post("/v1/completions", json=body).raise_for_status()
            stop.wait(0.02)


def test_monitor_shows_advancing_tokens_per_second_from_a_live_double(tmp_path: Path) -> None:
    with local_engine_double("vllm", *VLLM_ARGS) as url:

        def monitor() -> Monitor:
            samplers = http_samplers([Endpoint("vllm", "vllm", url)])
            return Monitor(samplers, config=MonitorConfig(interval_s=0.25, timeout_s=0.2))

        services = Services(
            detect_box=lambda: detect_box(simulate="rtx4090"),
            monitor=monitor,
            profiles_dir=tmp_path,
        )
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(url, stop))
        rates: list[float] = []

        async def go() -> None:
            app = ApplianceApp(services=services)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("m")
                load.start()
                deadline = time.monotonic() + 20
                while len(rates) < 3:
                    assert time.monotonic() < deadline, f"tokens/s never advanced: {rates}"
                    await pilot.pause(0.25)
                    snapshot = app.snapshot
                    vllm = None if snapshot is None else snapshot.service("vllm")
                    rate = None if vllm is None else vllm.generation_tokens_per_s
                    if rate and (not rates or rate != rates[-1]):
                        rates.append(rate)
                panel = app.screen.query_one(ServicesPanel)
                assert panel.snapshot is app.snapshot
                console = Console(width=80, record=True, file=io.StringIO())
                console.print(panel.render())
                shown = console.export_text()
                assert "UP  vllm  tiny" in shown
                assert "tokens/s" in shown
                stop.set()

        try:
            asyncio.run(go())
        finally:
            stop.set()
            if load.is_alive():
                load.join(10)
    assert all(rate > 0 for rate in rates)
