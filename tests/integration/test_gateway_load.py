"""500 concurrent streams through the gateway: all complete, none crossed, none lost.

Bounded: 500 requests of at most 7 tokens each, once, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from appliance.gateway.keys import create_key
from tests.integration.test_gateway import engine, gateway, vllm

STREAMS = 500


async def _one(client: httpx.AsyncClient, index: int, key: str) -> tuple[int, str, list[str]]:
    tokens = 1 + index % 7
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"request {index}"}],
        "max_tokens": tokens,
        "stream": True,
    }
    ids, contents, done = set(), [], False
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["x-appliance-route"] == "local"
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            ids.add(event["id"])
            delta = event["choices"][0]["delta"]
            if delta.get("content"):
                contents.append(delta["content"])
    assert done, f"stream {index} did not finish"
    assert len(ids) == 1, f"stream {index} mixed events of {len(ids)} requests"
    return tokens, ids.pop(), contents


async def _all(url: str, key: str) -> list[tuple[int, str, list[str]]]:
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        return await asyncio.gather(*(_one(client, i, key) for i in range(STREAMS)))


def test_500_concurrent_streams_each_complete_and_its_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    api_key = create_key(state / "keys.json", "load").key
    with (
        vllm() as chat,
        engine("tei", "--model-id", "bge") as tei,
        gateway(state, api_key, chat, tei, None) as gw,
    ):
        results = asyncio.run(_all(gw.url, api_key))
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert len(results) == STREAMS
    for tokens, _, contents in results:
        assert contents == [f" tok{i}" for i in range(tokens)]
    assert len({request_id for _, request_id, _ in results}) == STREAMS
    assert (
        'appliance_gateway_requests_total{destination="local",outcome="ok",'
        f'route="/v1/chat/completions"}} {float(STREAMS)}'
    ) in metrics
