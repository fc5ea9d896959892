"""The vLLM double's sleep mode behaves as vLLM documents it (see engine_double's docstring for
the sources): dev-mode routes only, the two levels, the level-2 wake sequence, in-flight requests
aborted on sleep, and requests that arrive asleep waiting for the wake."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.doubles import threaded_engine_double

ARGS = ("--model", "/m", "--served-model-name", "tiny", "--enable-sleep-mode")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    with threaded_engine_double(*ARGS) as server:
        yield server


def _chat(url: str, max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        f"{url}/v1/chat/completions", json={**body, "max_tokens": max_tokens, **extra}, timeout=30
    )
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def _asleep(url: str) -> bool:
    answer: bool = httpx.get(f"{url}/is_sleeping").json()["is_sleeping"]
    return answer


def test_routes_need_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_SERVER_DEV_MODE", raising=False)
    with threaded_engine_double(*ARGS) as server:
        assert httpx.post(f"{server.url}/sleep?level=1").status_code == 404
        assert httpx.get(f"{server.url}/is_sleeping").status_code == 404


def test_sleep_needs_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    with threaded_engine_double("--model", "/m", "--served-model-name", "tiny") as server:
        assert httpx.post(f"{server.url}/sleep?level=1").status_code == 400
        assert not _asleep(server.url)


def test_level_one_round_trip(engine: Any) -> None:
    assert not _asleep(engine.url)
    assert httpx.post(f"{engine.url}/sleep?level=1").status_code == 200
    assert _asleep(engine.url)
    assert httpx.post(f"{engine.url}/wake_up").status_code == 200
    assert not _asleep(engine.url)
    assert _chat(engine.url)["choices"][0]["message"]["content"] == " tok0 tok1 tok2"


def test_level_two_needs_the_reload_sequence(engine: Any) -> None:
    httpx.post(f"{engine.url}/sleep?level=2")
    assert httpx.post(f"{engine.url}/wake_up?tags=weights").status_code == 200
    assert _asleep(engine.url)  # kv_cache still asleep
    reload = httpx.post(f"{engine.url}/collective_rpc", json={"method": "reload_weights"})
    assert reload.status_code == 200
    assert reload.json() == {"results": [None]}
    httpx.post(f"{engine.url}/wake_up?tags=kv_cache")
    assert not _asleep(engine.url)
    assert _chat(engine.url)["choices"][0]["message"]["content"] == " tok0 tok1 tok2"


def test_level_two_without_reload_answers_garbage(engine: Any) -> None:
    httpx.post(f"{engine.url}/sleep?level=2")
    httpx.post(f"{engine.url}/wake_up")
    assert "tok" not in _chat(engine.url)["choices"][0]["message"]["content"]


def test_reload_into_unmapped_weights_fails(engine: Any) -> None:
    httpx.post(f"{engine.url}/sleep?level=2")
    assert httpx.post(f"{engine.url}/collective_rpc", json={}).status_code == 400
    reload = httpx.post(f"{engine.url}/collective_rpc", json={"method": "reload_weights"})
    assert reload.status_code == 500


def test_sleep_aborts_in_flight_requests(engine: Any) -> None:
    results: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: results.append(_chat(engine.url, max_tokens=100_000)))
    worker.start()
    while engine.in_flight == 0:
        threading.Event().wait(0.01)
    assert httpx.post(f"{engine.url}/sleep?level=1", timeout=30).status_code == 200
    worker.join(timeout=30)
    assert results[0]["choices"][0]["finish_reason"] == "abort"
    assert engine.in_flight == 0


def test_request_while_asleep_waits_for_the_wake(engine: Any) -> None:
    httpx.post(f"{engine.url}/sleep?level=1")
    results: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: results.append(_chat(engine.url)))
    worker.start()
    while engine.arrived_asleep == 0:
        threading.Event().wait(0.01)
    assert not results
    httpx.post(f"{engine.url}/wake_up")
    worker.join(timeout=30)
    assert results[0]["choices"][0]["finish_reason"] == "length"
