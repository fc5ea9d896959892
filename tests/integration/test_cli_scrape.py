"""`appliance scrape URL` against a vLLM double under traffic: tokens/s and TTFT p95 appear."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from appliance.errors import ExitCode
from tests.doubles import local_engine_double

APPLIANCE = str(Path(sys.executable).parent / "appliance")


def test_scrape_reports_generation_rate_and_ttft(tmp_path: Path) -> None:
    with local_engine_double(
        "vllm", "--served-model-name", "tiny", env={"DOUBLE_TOKEN_DELAY_S": "0.002"}
    ) as url:
        stop = threading.Event()

        def traffic() -> None:
            body = {"model": "tiny", "prompt": "one two three", "max_tokens": 8}
            for _ in range(2000):  # bounded; stops as soon as the scrape is done
                if stop.is_set():
                    return
                httpx.post(f"{url}/v1/completions", json=body, timeout=10)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            result = subprocess.run(
                [APPLIANCE, "scrape", url, "--count", "4", "--interval", "0.5", "--json"],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        finally:
            stop.set()
            sender.join(timeout=30)
    assert result.returncode == ExitCode.OK, result.stderr
    last = json.loads(result.stdout.splitlines()[-1])
    [engine] = last["services"]
    assert engine["kind"] == "vllm"
    assert engine["healthy"] is True
    assert engine["generation_tokens_per_s"] > 0
    assert engine["ttft_p95_s"] is not None
