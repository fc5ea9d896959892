"""A client load in its own process: streamed chat completions through the official `openai` SDK,
one after another, each written as a JSON line (when its first chunk came, its TTFT, the tokens
its usage reported) as soon as it ends, until SIGTERM; the request in flight then finishes.

Its own process because a client thread that shares an interpreter with the TUI (or anything
else busy in Python) waits for the GIL between chunks, and that wait lands in its TTFT: the
full-stack test once measured 45 ms at the client against 14 ms at the gateway for that reason.

    python -m tests.support.stream_load BASE_URL MODEL OUT.jsonl   (the key in OPENAI_API_KEY)
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai


@dataclass(frozen=True)
class Streamed:
    first_at: float  # time.monotonic() when the first chunk came
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


def main(base_url: str, model: str, out: Path) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sdk = openai.OpenAI(base_url=base_url, max_retries=0, timeout=120)
    with out.open("a") as sink:
        while not stop.is_set():
            sent = time.monotonic()
            stream = sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "hello world"}],
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            first: float | None = None
            tokens = 0
            for chunk in stream:
                if first is None:
                    first = time.monotonic()
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
            if first is not None:
                line = {"first_at": first, "ttft_s": first - sent, "completion_tokens": tokens}
                sink.write(json.dumps(line) + "\n")
                sink.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
