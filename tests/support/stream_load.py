"""A client load in its own process: `concurrency` streams of chat completions through the
official `openai` SDK's async client, each stream one request after another, each request
written as a JSON line (when it was sent, when its first chunk came, the tokens its usage
reported) as soon as it ends, until SIGTERM; the requests in flight then finish.

Its own process because a client that shares an interpreter with the TUI (or anything else busy
in Python) waits for the GIL between chunks, and that wait lands in its TTFT: the full-stack test
once measured 45 ms at the client against 14 ms at the gateway for that reason. It raises its
own priority where it may: it stands for a user on another machine, and on the test's shared
cores its waits for a core behind the engine would be its own time, not the service's.

Each prompt is about 1,450 tokens of the tiny model's vocabulary (a chat with some context, as a
team sends) and begins with the request's number, so vLLM's prefix cache never answers it and
every first token costs a real prefill.

    python -m tests.support.stream_load BASE_URL MODEL OUT.jsonl [CONCURRENCY]
    (the key in OPENAI_API_KEY)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import openai

PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 160)
MAX_TOKENS = 4  # short answers: more requests, so a steadier p95, in the same load time


@dataclass(frozen=True)
class Streamed:
    sent_at: float  # time.monotonic() when the SDK was asked for the completion
    first_at: float  # ... and when its first chunk came
    ttft_s: float
    completion_tokens: int


def read(path: Path) -> list[Streamed]:
    """The requests a load wrote, a line cut short by the stop left out."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(Streamed(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


async def _stream(
    sdk: openai.AsyncOpenAI, model: str, stop: asyncio.Event, sink: TextIO, stream_id: int
) -> None:
    sent_count = 0
    while not stop.is_set():
        sent_count += 1
        sent = time.monotonic()
        stream = await sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"{stream_id} {sent_count} {PROMPT}"}],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        first: float | None = None
        tokens = 0
        async for chunk in stream:
            if first is None:
                first = time.monotonic()
            if chunk.usage is not None:
                tokens += chunk.usage.completion_tokens
        if first is not None:
            sink.write(json.dumps(asdict(Streamed(sent, first, first - sent, tokens))) + "\n")
            sink.flush()


async def _load(base_url: str, model: str, out: Path, concurrency: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sdk = openai.AsyncOpenAI(base_url=base_url, max_retries=0, timeout=120)
    with out.open("a") as sink:
        await asyncio.gather(*(_stream(sdk, model, stop, sink, i) for i in range(concurrency)))
    await sdk.close()


def main(base_url: str, model: str, out: Path, concurrency: int = 1) -> int:
    with contextlib.suppress(PermissionError):  # not root: the default priority
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    asyncio.run(_load(base_url, model, out, concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), *map(int, sys.argv[4:5])))
