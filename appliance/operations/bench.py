"""`bench`: drive the running stack through its gateway and measure it (issue #18).

The load generator streams `/v1/chat/completions` (or `/v1/completions`) with
`stream_options.include_usage`, as `vllm bench serve` does (vllm-project/vllm
`vllm/benchmarks/lib/endpoint_request_func.py`), and times every request with
`time.perf_counter`; the figures are computed in `appliance.benchmark` by vLLM's definitions.

Its transport is the gateway's own `LeanPool` (HTTP/1.1 keep-alive on asyncio protocols with
httptools), one pool sized to the level's concurrency: `bench/loadgen.py` measured it against
httpx, and a generator that costs less per request than what it measures is the point. An event
is parsed as JSON only when it carries no token (the usage event, an error); a token event is
recognised by its `"choices"` not being empty, without decoding it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from appliance.benchmark import (
    BenchRun,
    BoxFacts,
    EngineSetup,
    LevelResult,
    Mode,
    RequestOutcome,
    Slo,
    summarize,
)
from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
)
from appliance.gateway.config import Timeouts
from appliance.gateway.upstream import LeanPool, Upstream, UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    import ssl

    from appliance.hardware.nvml import NvmlSource
    from appliance.profile import Profile

# vLLM's own random dataset defaults (`vllm bench serve --dataset-name random`): 1024 prompt
# tokens, 128 output tokens; shrunk to fit the profile's max_model_len.
DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 128
KEY_ENV = "APPLIANCE_API_KEY"
# Common English words that are one token each (with their leading space) in the BPE
# vocabularies of the usual chat models; a prompt of N of them is about N tokens. The real count
# comes back in the stream's usage and is what the report shows.
_WORDS = (  # noqa: SIM905 - a sentence reads better than 140 quoted words
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more out up into do any your what time can only other new some could these two may first "
    "then see most over such where after also did many before must through back years much way "
    "well down should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take"
).split()

OnProgress = Callable[[int], None]
Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class SamplePrompt:
    """One request of a recorded sample of traffic: its prompt and, when recorded, how many
    tokens its answer had."""

    prompt: str
    output_tokens: int | None = None


@dataclass(frozen=True)
class Workload:
    """What every request of a run asks for."""

    model: str
    input_len: int
    output_len: int
    endpoint: str = "chat"  # chat | completions
    ignore_eos: bool = True
    seed: int = 0
    words: int | None = None  # words per prompt, when the engine's tokenizer was asked
    # A recorded sample (`load_prompts`): its prompts instead of random ones, in file order;
    # each its own output length when it has one, else `output_len`.
    prompts: tuple[SamplePrompt, ...] = ()

    @property
    def path(self) -> bytes:
        return b"/chat/completions" if self.endpoint == "chat" else b"/completions"

    def bodies(self, count: int, start: int = 0) -> list[bytes]:
        """`count` request bodies: each with its own random prompt (no shared prefix to cache),
        or the sample's prompts from the `start`-th on (round again when it has fewer)."""
        if self.prompts:
            picked = [self.prompts[(start + i) % len(self.prompts)] for i in range(count)]
            return [self._body(p.prompt, p.output_tokens or self.output_len) for p in picked]
        rng = random.Random(self.seed)  # noqa: S311 - prompts, not secrets
        return [
            self._body(
                " ".join(rng.choices(_WORDS, k=self.words or self.input_len)), self.output_len
            )
            for _ in range(count)
        ]

    def _body(self, prompt: str, output_len: int) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "stream": True}
        payload["stream_options"] = {"include_usage": True}
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
            payload["max_completion_tokens"] = output_len
        else:
            payload["prompt"] = prompt
            payload["max_tokens"] = output_len
        if self.ignore_eos:
            payload["ignore_eos"] = True  # a vLLM extension: every request runs to length
        return json.dumps(payload, separators=(",", ":")).encode()


MAX_PROMPTS_BYTES = 1 << 30
"""A recorded sample larger than this is refused: it is held in memory whole."""


def load_prompts(path: Path) -> tuple[SamplePrompt, ...]:
    """A recorded sample of traffic in the file `vllm bench serve --dataset-name custom` reads
    (vllm/benchmarks/datasets/datasets.py `CustomDataset`, 0.32): JSON Lines, one object a
    line with the prompt as `prompt` and, optionally, the answer's length as `output_tokens`.

    Raises `BadInputError` naming the line that is not one.
    """
    try:
        size = path.stat().st_size
        if size > MAX_PROMPTS_BYTES:
            raise BadInputError(
                f"--prompts {path} is {size / 2**30:.1f} GiB; a sample of at most 1 GiB is read",
                hint="give a sample of the traffic, not all of it",
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise BadInputError(
            f"cannot read --prompts {path}: {reason}",
            hint='give a JSON Lines file, one {"prompt": "...", "output_tokens": N} a line',
        ) from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompts.append(_sample_prompt(path, number, line))
    if not prompts:
        raise BadInputError(
            f"--prompts {path} holds no prompt",
            hint='write one {"prompt": "...", "output_tokens": N} a line',
        )
    return tuple(prompts)


def _sample_prompt(path: Path, number: int, line: str) -> SamplePrompt:
    where = f"--prompts {path} line {number}"
    try:
        item = json.loads(line)
    except ValueError as error:
        raise BadInputError(
            f"{where} is not JSON ({error})", hint='write {"prompt": "...", "output_tokens": N}'
        ) from None
    prompt = item.get("prompt") if isinstance(item, dict) else None
    if not isinstance(prompt, str) or not prompt:
        raise BadInputError(
            f"{where} has no prompt text", hint='write {"prompt": "...", "output_tokens": N}'
        )
    tokens = item.get("output_tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise BadInputError(
            f"{where}: output_tokens is {tokens!r}, not a whole number of tokens above 0",
            hint="give the answer's length in tokens, or leave output_tokens out",
        )
    return SamplePrompt(prompt, tokens)


def default_lengths(max_model_len: int | None) -> tuple[int, int]:
    """vLLM's random-dataset defaults, scaled down to fit `max_model_len` (with room to spare)."""
    if max_model_len is None or max_model_len // 2 >= DEFAULT_INPUT_LEN + DEFAULT_OUTPUT_LEN:
        return DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN
    budget = max(2, max_model_len // 2)
    output = max(1, min(DEFAULT_OUTPUT_LEN, budget // 4))
    return max(1, budget - output), output


def check_lengths(input_len: int, output_len: int, max_model_len: int | None) -> None:
    if max_model_len is not None and input_len + output_len > max_model_len:
        raise BadInputError(
            f"--input-len {input_len} + --output-len {output_len} is more than the profile's "
            f"max_model_len {max_model_len}",
            hint="shorten them: the engine would refuse every request",
        )


# ---------------------------------------------------------------------------------- one request


def _is_token_event(data: bytes) -> bool:
    """True when the event's `choices` visibly holds an item; False when it is empty or the
    bytes do not say (then the event is decoded to be understood)."""
    at = data.find(b'"choices"')
    if at < 0:
        return False
    at = data.find(b"[", at + 9)
    if at < 0:
        return False
    for byte in data[at + 1 : at + 16]:
        if byte in b" \t\r\n":
            continue
        return byte == 0x7B  # "{"
    return False


class _Stream:
    """The SSE events of one streamed response, timed as they arrive."""

    __slots__ = ("buffer", "last", "outcome", "start", "streamed", "usage_tokens")

    def __init__(self, outcome: RequestOutcome) -> None:
        self.outcome = outcome
        self.start = self.last = outcome.start
        self.buffer = b""
        self.streamed = 0
        self.usage_tokens: int | None = None

    def feed(self, chunk: bytes, now: float) -> str | None:
        """Take the bytes that arrived at `now`; returns an error the stream carried, if any."""
        self.buffer += chunk
        if b"\n\n" not in self.buffer:
            return None
        *events, self.buffer = self.buffer.split(b"\n\n")
        for raw in events:
            event = raw.strip()
            if not event.startswith(b"data:"):
                continue  # a comment (": ping") or another field
            data = event[5:].lstrip()
            if data == b"[DONE]":
                continue
            if not _is_token_event(data):
                decoded = _decode(data)
                if "error" in decoded:
                    return f"error in stream: {_error_message(data)}"
                if not decoded.get("choices"):
                    self._usage(decoded.get("usage"))
                    continue
            self._token(now)
        return None

    def _usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            tokens = usage.get("completion_tokens")
            self.usage_tokens = tokens if isinstance(tokens, int) else None
            if isinstance(usage.get("prompt_tokens"), int):
                self.outcome.prompt_tokens = usage["prompt_tokens"]

    def _token(self, now: float) -> None:
        if self.streamed == 0:
            self.outcome.ttft = now - self.start
        else:
            self.outcome.itl.append(now - self.last)
        self.last = now
        self.streamed += 1

    def finish(self) -> None:
        outcome = self.outcome
        if self.streamed == 0:
            outcome.error = "the stream carried no token"
            return
        outcome.ok = True
        outcome.latency = self.last - self.start
        tokens = self.usage_tokens
        outcome.output_tokens = tokens if tokens is not None else self.streamed


async def _error_body(response: UpstreamResponse) -> str:
    text = b""
    while chunk := await response.next_chunk():
        text += chunk
        if len(text) > 4096:
            break
    return f"HTTP {response.status}: {_error_message(text)}"


async def one_request(
    upstream: Upstream, path: bytes, headers: Headers, body: bytes
) -> RequestOutcome:
    """Send one streamed request and time it by vLLM's definitions (see appliance.benchmark)."""
    outcome = RequestOutcome()
    outcome.start = time.perf_counter()
    try:
        response = await upstream.send(b"POST", path, headers, body)
    except UpstreamError as error:
        outcome.error = str(error)
        return outcome
    try:
        if response.status != 200:
            outcome.error = await _error_body(response)
            return outcome
        stream = _Stream(outcome)
        while chunk := await response.next_chunk():
            carried = stream.feed(chunk, time.perf_counter())
            if carried is not None:
                outcome.error = carried
                return outcome
    except UpstreamError as error:
        outcome.error = str(error)
        return outcome
    finally:
        await response.aclose()
    stream.finish()
    return outcome


def _decode(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(text: bytes) -> str:
    decoded = _decode(text)
    error = decoded.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:200]
    if isinstance(error, str):
        return error[:200]
    return text.decode("utf-8", "replace").strip()[:200] or "(no body)"


# ---------------------------------------------------------------------------------- one level


async def run_level(
    upstream: Upstream,
    workload: Workload,
    headers: Headers,
    bodies: Sequence[bytes],
    *,
    concurrency: int | None,
    request_rate: float | None = None,
    on_done: OnProgress | None = None,
    seed: int = 0,
) -> tuple[list[RequestOutcome], float]:
    """Send every body: at most `concurrency` in flight, arriving as a Poisson process of
    `request_rate` per second when given (vLLM's burstiness 1), else all at once. Returns the
    outcomes and the level's wall-clock duration."""
    path = workload.path
    limit = asyncio.Semaphore(concurrency) if concurrency else None
    done = 0

    async def send(body: bytes) -> RequestOutcome:
        nonlocal done
        if limit is None:
            outcome = await one_request(upstream, path, headers, body)
        else:
            async with limit:
                outcome = await one_request(upstream, path, headers, body)
        done += 1
        if on_done is not None:
            on_done(done)
        return outcome

    started = time.perf_counter()
    if request_rate is None:
        outcomes = await asyncio.gather(*(send(body) for body in bodies))
    else:
        rng = random.Random(seed)  # noqa: S311 - arrival times, not secrets
        tasks = []
        due = started
        for body in bodies:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(send(body)))
            due += rng.expovariate(request_rate)
        outcomes = await asyncio.gather(*tasks)
    return list(outcomes), time.perf_counter() - started


# ---------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class BenchPlan:
    """A whole `appliance bench`: where, what, and which levels."""

    url: str  # the gateway's base URL, ending in /v1
    key: str | None
    workload: Workload
    requests: int
    mode: Mode
    levels: tuple[float, ...]
    slo: Slo = field(default_factory=Slo)
    max_concurrency: int | None = None  # with `mode="rate"`: a cap on requests in flight
    # What an https `url` is checked against: the profile's own gateway's certificate
    # (`gateway_trust`), or True for the system's CAs (a URL the operator gave).
    verify: ssl.SSLContext | Literal[True] = True
    prompts_from: str | None = None  # the recorded sample's file name (`workload.prompts`)

    def __repr__(self) -> str:  # the key never shows up in a log or a traceback
        return f"BenchPlan(url={self.url!r}, levels={self.levels!r}, requests={self.requests})"


@dataclass(frozen=True)
class EngineFacts:
    version: str | None = None
    image: str | None = None
    driver: str | None = None
    setup: EngineSetup | None = None
    box: BoxFacts | None = None


def engine_setup(profile: Profile) -> EngineSetup:
    """What the profile runs, as a kept result records it (for `recommend` and `tune`)."""
    spec = profile.spec
    return EngineSetup(
        repo=spec.model.repo,
        quantization=spec.model.quantization,
        engine=spec.engine.kind,
        tensor_parallel_size=spec.engine.tensor_parallel_size,
        max_num_seqs=spec.engine.max_num_seqs,
        max_num_batched_tokens=spec.engine.max_num_batched_tokens,
        kv_cache_dtype=spec.engine.kv_cache_dtype,
    )


def gateway_url(profile: Profile) -> str:
    """The gateway's OpenAI base URL on this box, from the profile (loopback for 0.0.0.0)."""
    from appliance.gateway.config import gateway_base_url

    return f"{gateway_base_url(profile)}/v1"


def engine_facts(profile: Profile) -> EngineFacts:
    """The engine's version (its /version), the pinned image and the GPU driver, where known."""
    version = None
    try:
        url = f"http://127.0.0.1:{profile.spec.ports.vllm}/version"
        answer = httpx.get(url, timeout=2.0, trust_env=False)
        if answer.status_code == 200:
            version = str(answer.json().get("version")) or None
    except (httpx.HTTPError, ValueError, AttributeError):
        version = None
    image = profile.spec.images.vllm
    if profile.spec.engine.kind == "sglang":
        image = profile.spec.images.sglang
    driver = None
    box = BoxFacts()
    if profile.spec.engine.device == "gpu":
        from appliance.hardware.nvml import LiveNvml, NvmlSystem

        library = LiveNvml()
        system = library.open()
        if isinstance(system, NvmlSystem):
            driver = system.driver_version
            box = _box_facts(library, system.device_count)
            library.close()
    return EngineFacts(
        version=version, image=image, driver=driver, setup=engine_setup(profile), box=box
    )


def _box_facts(library: NvmlSource, count: int) -> BoxFacts:
    """The GPUs' names joined as `fit.gpu_target_from_box` joins them, so `recommend` can
    match a kept result to the box it sizes."""
    names: set[str] = set()
    for index in range(count):
        name = library.device(index).name
        if name:
            names.add(name)
    return BoxFacts(gpu_name=" + ".join(sorted(names)) or None, gpu_count=count)


def prompt_words(profile: Profile, workload: Workload) -> int | None:
    """How many of the prompt's words make `workload.input_len` tokens for the engine's own
    tokenizer, asked through its `/tokenize` (vLLM's bench re-aligns its prompts the same way,
    `_align_prompts_to_server_tokenizer`; the answer's `count` is vLLM 0.32's `TokenizeResponse`,
    vllm/entrypoints/serve/tokenize/protocol.py); None when the engine does not answer it."""
    sample = " ".join(random.Random(7).choices(_WORDS, k=256))  # noqa: S311 - not a secret
    url = f"http://127.0.0.1:{profile.spec.ports.vllm}/tokenize"
    body = {"model": workload.model, "prompt": sample, "add_special_tokens": False}
    try:
        answer = httpx.post(url, json=body, timeout=5.0, trust_env=False)
        count = answer.json().get("count") if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(count, int) or count <= 0:
        return None
    return max(1, round(workload.input_len * 256 / count))


def _headers(key: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")]
    if key:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    return headers


async def _preflight(upstream: Upstream, plan: BenchPlan, headers: Headers) -> None:
    """One request before any level (vLLM's "initial test run"): a missing gateway, a refused
    key or an unknown model is one clear line, not a table of failures."""
    # A sample's prompt after those the levels send, when it has that many.
    body = plan.workload.bodies(1, start=len(plan.levels) * plan.requests)[0]
    outcome = await one_request(upstream, plan.workload.path, headers, body)
    if outcome.ok:
        return
    error = outcome.error
    if error.startswith(("HTTP 401", "HTTP 403")):
        raise BadInputError(
            f"the gateway at {plan.url} refused the API key ({error})",
            hint=f"pass a key from `appliance keys create` with --key-file FILE or ${KEY_ENV}",
        )
    if "cannot connect" in error or "reset the connection" in error:
        raise EnvironmentNotReadyError(
            f"no gateway answers at {plan.url} ({error})",
            hint="start the stack with `appliance apply PROFILE` (or `appliance gateway`)",
        )
    if error.startswith("HTTP 4"):
        raise BadInputError(
            f"the gateway refused the benchmark's request: {error}",
            hint="check the profile's model and max_model_len against --input-len/--output-len",
        )
    raise OperationFailedError(
        f"the first benchmark request failed: {error}",
        hint="see `appliance status PROFILE` and `appliance logs`",
    )


async def _run(
    plan: BenchPlan,
    on_level: Callable[[float, int], OnProgress | None] | None,
    upstream_factory: UpstreamFactory,
) -> list[LevelResult]:
    headers = _headers(plan.key)
    results = []
    biggest = max(
        [int(level) for level in plan.levels] if plan.mode == "concurrency" else [1],
    )
    pool_size = biggest if plan.mode == "concurrency" else (plan.max_concurrency or 1024)
    upstream = upstream_factory(plan.url, pool_size, plan.verify)
    try:
        await _preflight(upstream, plan, headers)
        for index, level in enumerate(plan.levels):
            workload = plan.workload
            # New prompts at every level: random ones from the next seed, or the sample's next.
            bodies = replace(workload, seed=workload.seed + index + 1).bodies(
                plan.requests, start=index * plan.requests
            )
            progress = on_level(level, plan.requests) if on_level is not None else None
            if plan.mode == "concurrency":
                outcomes, duration = await run_level(
                    upstream, workload, headers, bodies, concurrency=int(level), on_done=progress
                )
            else:
                outcomes, duration = await run_level(
                    upstream,
                    workload,
                    headers,
                    bodies,
                    concurrency=plan.max_concurrency,
                    request_rate=level,
                    on_done=progress,
                    seed=workload.seed + index,
                )
            results.append(summarize(outcomes, duration, mode=plan.mode, level=level, slo=plan.slo))
    finally:
        await upstream.aclose()
    return results


UpstreamFactory = Callable[[str, int, "ssl.SSLContext | Literal[True]"], Upstream]
"""The load generator's client for (base URL, connections, what HTTPS is checked against)."""


def lean_upstream(url: str, connections: int, verify: ssl.SSLContext | Literal[True]) -> Upstream:
    """The load generator's client: one keep-alive pool with a connection per stream."""
    return LeanPool(url, Timeouts(connect_s=5.0, first_byte_s=600.0, idle_s=120.0),
                    max_connections=connections,
                    ssl_context=None if verify is True else verify)  # fmt: skip


def run_bench(
    plan: BenchPlan,
    *,
    profile_name: str,
    facts: EngineFacts | None = None,
    on_level: Callable[[float, int], OnProgress | None] | None = None,
    upstream_factory: UpstreamFactory = lean_upstream,
) -> BenchRun:
    """Run every level of `plan` against the gateway and return the report's data.

    Raises `BadInputError` (key refused, bad request), `EnvironmentNotReadyError` (nothing
    answers) or `OperationFailedError` before the first level; later failures are counted.
    """
    started_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    levels = runner(_run(plan, on_level, upstream_factory))
    facts = facts or EngineFacts()
    workload = plan.workload
    input_len, output_len = workload.input_len, workload.output_len
    if workload.prompts:  # a recorded sample: its measured and recorded means
        measured = [level.mean_input_tokens for level in levels if level.mean_input_tokens]
        input_len = round(sum(measured) / len(measured)) if measured else 0
        lengths = [p.output_tokens or workload.output_len for p in workload.prompts]
        output_len = round(sum(lengths) / len(lengths))
    return BenchRun(
        profile=profile_name,
        model=plan.workload.model,
        endpoint=plan.workload.endpoint,
        url=plan.url,
        started_at=started_at,
        input_len=input_len,
        output_len=output_len,
        slo=plan.slo,
        levels=tuple(levels),
        engine_version=facts.version,
        image=facts.image,
        driver=facts.driver,
        setup=facts.setup,
        box=facts.box,
        prompts=plan.prompts_from,
    )


def save_run(state_dir: Path, run: BenchRun) -> Path:
    """Keep the run as state_dir/bench/<profile>/<timestamp>.json, written atomically."""
    from appliance.fileio import atomic_write

    stamp = run.started_at.replace(":", "").replace("+0000", "Z")
    path = state_dir / "bench" / run.profile / f"{stamp}.json"
    data = json.dumps(run.to_json(), indent=2).encode() + b"\n"
    try:
        atomic_write(path, data, mode=0o644)
    except OSError as error:
        raise EnvironmentNotReadyError(
            f"cannot keep the bench result in {path}: {error.strerror or error}",
            hint="check the profile's storage.state_dir is writable, or pass --no-save",
        ) from None
    return path
