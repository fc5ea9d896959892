"""`appliance gateway` hosts the monitor: its usage store is what `appliance cost` reports on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from appliance.errors import ExitCode
from tests.doubles import free_port, local_engine_double

APPLIANCE = str(Path(sys.executable).parent / "appliance")

PROFILE = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: usage-test
spec:
  model:
    repo: acme/tiny-chat
    quantization: bf16
    served_model_name: tiny
  embeddings:
    enabled: false
  ports:
    vllm: {vllm}
    tei: {tei}
    gateway: {gateway}
  gateway:
    host: 127.0.0.1
  storage:
    models_dir: {root}/models
    state_dir: {root}/state
"""


def _appliance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPLIANCE, *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_traffic_through_the_gateway_shows_up_in_cost(tmp_path: Path) -> None:
    with local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine:
        gateway_port = free_port()
        profile = tmp_path / "usage.yaml"
        profile.write_text(
            PROFILE.format(
                vllm=httpx.URL(engine).port, tei=free_port(), gateway=gateway_port, root=tmp_path
            )
        )
        created = _appliance("keys", "create", "ci", "--json", "--profile", str(profile))
        assert created.returncode == ExitCode.OK, created.stderr
        key = json.loads(created.stdout)["key"]

        gateway = subprocess.Popen(
            [APPLIANCE, "gateway", "--profile", str(profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HOME": str(tmp_path)},
        )
        base = f"http://127.0.0.1:{gateway_port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                assert gateway.poll() is None, gateway.stderr.read() if gateway.stderr else ""
                assert time.monotonic() < deadline, "the gateway did not come up"
                time.sleep(0.1)
            headers = {"authorization": f"Bearer {key}"}
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(20):
                reply = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                assert reply.status_code == 200
                assert reply.headers["x-appliance-route"] == "local"
            # The monitor ticks once a second; let a few ticks see the counters move.
            time.sleep(3)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)

    report = _appliance(
        "cost", str(profile), "--window", "hour", "--gpu-cost-per-hour", "2", "--json"
    )
    assert report.returncode == ExitCode.OK, report.stderr
    cost = json.loads(report.stdout)
    assert cost["generation_tokens"] > 0
    assert cost["local_requests"] > 0
