"""A real engine that dies during a test fails it with the engine's own story, not a KeyError.

A real process that logs what vLLM logs when its worker dies of SIGILL and then dies of SIGILL
itself stands in for the engine; the response is the one vLLM's API server sends then.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.vllm_cpu import VllmCpuServer, engine_failure, expect_json

DIES = (
    "import os, signal\n"
    "print('ERROR [multiproc_executor.py] Worker proc VllmWorker-0 died unexpectedly "
    "(exit code: -4)', flush=True)\n"
    "os.kill(os.getpid(), signal.SIGILL)\n"
)


def _dead_engine(tmp_path: Path) -> VllmCpuServer:
    log_path = tmp_path / "vllm.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", DIES], stdout=log, stderr=log)
    process.wait(timeout=60)
    return VllmCpuServer(process=process, port=1, log_path=log_path)


def test_an_error_response_fails_with_status_body_exit_code_and_log(tmp_path: Path) -> None:
    server = _dead_engine(tmp_path)
    response = httpx.Response(500, json={"error": {"message": "EngineCore encountered an issue"}})
    with pytest.raises(AssertionError) as failure:
        expect_json("POST /v1/completions", server, response)
    message = str(failure.value)
    assert "POST /v1/completions failed" in message
    assert "HTTP 500" in message
    assert "EngineCore encountered an issue" in message
    assert f"engine exited with code {-signal.SIGILL}" in message
    assert "Worker proc VllmWorker-0 died unexpectedly (exit code: -4)" in message


def test_a_body_that_is_not_json_fails_the_same_way(tmp_path: Path) -> None:
    server = _dead_engine(tmp_path)
    with pytest.raises(AssertionError, match="HTTP 200: Internal"):
        expect_json("GET /v1/models", server, httpx.Response(200, text="Internal"))


def test_a_good_answer_is_its_json(tmp_path: Path) -> None:
    server = _dead_engine(tmp_path)
    assert expect_json("GET /v1/models", server, httpx.Response(200, json={"data": []})) == {
        "data": []
    }


def test_a_missing_log_is_said_not_raised(tmp_path: Path) -> None:
    server = _dead_engine(tmp_path)
    server.log_path.unlink()
    assert "(no engine log:" in engine_failure("start", server, None)
