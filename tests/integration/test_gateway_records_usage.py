"""`appliance gateway` hosts the monitor: its usage store is what `appliance cost` reports on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from appliance.errors import ExitCode
from tests.doubles import local_engine_double
from tests.support.gateway_process import appliance, create_key, running_gateway, write_profile


def test_traffic_through_the_gateway_shows_up_in_cost(tmp_path: Path) -> None:
    with local_engine_double("vllm", "--model", "/m", "--served-model-name", "tiny") as engine:
        profile, port = write_profile(tmp_path, engine)
        key = create_key(profile)
        base = f"http://127.0.0.1:{port}"
        with running_gateway(profile, base), httpx.Client(timeout=10) as client:
            headers = {"authorization": f"Bearer {key}"}
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(20):
                reply = client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                assert reply.status_code == 200
                assert reply.headers["x-appliance-route"] == "local"
            # The monitor ticks once a second; let a few ticks see the counters move.
            time.sleep(3)

    report = appliance(
        "cost", str(profile), "--window", "hour", "--gpu-cost-per-hour", "2", "--json"
    )
    assert report.returncode == ExitCode.OK, report.stderr
    cost = json.loads(report.stdout)
    assert cost["generation_tokens"] > 0
    assert cost["local_requests"] > 0
