"""What the gateway adds when it switches between sleeping chat models (issue #19), measured
against the same switch done by hand, in the same run.

Four vLLM engine doubles with sleep mode (`tests/doubles/engine_double.py`, VLLM_SERVER_DEV_MODE=1,
`--enable-sleep-mode`) run on 127.0.0.1, two per side, and the gateway runs in its own process
(uvicorn + uvloop + httptools, a real API key checked on every request) with `spec.switching`
over one pair:

  direct switch   the client itself puts the awake double to sleep, wakes the other one with
                  vLLM's sequence for the level, then sends the request to it
  gateway switch  one request to the gateway for the sleeping model: the gateway holds it,
                  drains and sleeps the awake engine, wakes the wanted one, forwards the request
  direct awake    a request straight to the awake double
  gateway awake   the same request through the gateway to its awake model (no switch)

The switch overhead is the gateway switch minus the direct switch: the engines' own time (the
sleep, the wake, the weights' reload at level 2, the generation) is in both and cancels out,
leaving the gateway's part from the request's arrival to its forwarding (plus its ordinary
proxying, shown on its own by the awake pair). The doubles wake instantly, so what is left is
the gateway's, not the GPU's: how long a real wake takes (0.1-6 s, vLLM's blog) only a GPU can
say. Samples are interleaved (a shuffled order per round) so that drift of a shared machine hits
all four alike. Target: switch overhead <= 5 ms. It prints figures; it asserts nothing.

    .venv/bin/python bench/gateway_switch.py [--rounds 200] [--level 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import random
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.gateway.keys import create_key  # noqa: E402
from appliance.gateway.switching import sleep_calls, wake_calls  # noqa: E402
from appliance.vocabulary import SleepLevel  # noqa: E402
from bench.gateway_overhead import UPSTREAM, _process, quantile  # noqa: E402
from tests.doubles import DOUBLE, free_port  # noqa: E402

NAMES = ("alpha", "beta")

GATEWAY = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from appliance.gateway.app import GatewayApp
    from appliance.gateway.config import GatewayConfig, SwitchingConfig
    from appliance.gateway.server import build_server
    from appliance.gateway.switching import SwitchRules

    alpha, beta, port, state, level = sys.argv[1:6]
    logging.basicConfig(level=logging.WARNING)
    config = GatewayConfig(
        chat_upstream=alpha + "/v1", chat_models=("alpha", "beta"),
        keys_file=Path(state) / "keys.json", state_file=Path(state) / "state.json",
        probe_interval_s=0,
        switching=SwitchingConfig(
            upstreams={"alpha": alpha + "/v1", "beta": beta + "/v1"}, initially_awake="alpha",
            rules=SwitchRules(sleep_level=int(level), hold_timeout_s=60),
        ),
    )
    build_server(GatewayApp(config), "127.0.0.1", int(port), log_level="warning").run()
    """
)


def _body(model: str) -> bytes:
    message = {"role": "user", "content": "hello"}
    return json.dumps({"model": model, "messages": [message], "max_tokens": 1}).encode()


class Connection:
    """One keep-alive connection with the standard library's client (same cost for all)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = headers

    def call(self, method: str, path: str, body: bytes = b"") -> bytes:
        self.connection.request(method, path, body, self.headers)
        response = self.connection.getresponse()
        data = response.read()
        assert response.status == 200, (path, response.status, data[:200])
        return data

    def chat(self, model: str) -> None:
        answer = json.loads(self.call("POST", "/v1/chat/completions", _body(model)))
        assert answer["model"] == model, answer["model"]


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


@contextlib.contextmanager
def doubles(env: dict[str, str]) -> Iterator[dict[str, int]]:
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for side in ("direct", "gateway"):
            for name in NAMES:
                port = free_port()
                argv = [sys.executable, "-c", UPSTREAM, str(DOUBLE), "--role", "vllm"]
                argv += ["--model", f"/m/{name}", "--served-model-name", name]
                argv += ["--host", "127.0.0.1", "--port", str(port), "--enable-sleep-mode"]
                stack.enter_context(_process(argv, port, f"{side} {name} double", env))
                ports[f"{side}-{name}"] = port
        yield ports


def measure(
    ports: dict[str, int], gateway_port: int, key: str, rounds: int, level: SleepLevel
) -> dict[str, list[float]]:
    plain = {"content-type": "application/json"}
    engine = {n: Connection(ports[f"direct-{n}"], plain) for n in NAMES}
    engine_client = {n: Connection(ports[f"direct-{n}"], plain) for n in NAMES}
    gateway = Connection(gateway_port, {**plain, "authorization": f"Bearer {key}"})
    # The direct pair starts like the gateway's: alpha awake, beta asleep.
    for call in sleep_calls(level):
        engine["beta"].call(call.method.decode(), call.path.decode(), call.body)
    awake = {"direct": "alpha"}
    for _ in range(20):  # warm up connections and pools
        engine_client["alpha"].chat("alpha")
        gateway.chat("alpha")

    def direct_switch(wanted: str) -> Callable[[], None]:
        def run() -> None:
            for call in sleep_calls(level):
                engine[awake["direct"]].call(call.method.decode(), call.path.decode(), call.body)
            for call in wake_calls(level):
                engine[wanted].call(call.method.decode(), call.path.decode(), call.body)
            awake["direct"] = wanted
            engine_client[wanted].chat(wanted)

        return run

    results: dict[str, list[float]] = {
        "direct switch": [], "gateway switch": [], "direct awake": [], "gateway awake": []
    }  # fmt: skip
    rng = random.Random(19)
    for index in range(rounds):
        wanted = NAMES[(index + 1) % 2]  # alternate: every round is a switch
        actions: list[tuple[str, Callable[[], None]]] = [
            ("direct switch", direct_switch(wanted)),
            ("gateway switch", functools.partial(gateway.chat, wanted)),
        ]
        rng.shuffle(actions)
        for name, action in actions:
            results[name].append(timed(action))
        awake_actions: list[tuple[str, Callable[[], None]]] = [
            ("direct awake", functools.partial(engine_client[wanted].chat, wanted)),
            ("gateway awake", functools.partial(gateway.chat, wanted)),
        ]
        rng.shuffle(awake_actions)
        for name, action in awake_actions:
            results[name].append(timed(action))
    return results


def report(results: dict[str, list[float]], rounds: int, level: int) -> None:
    ms = 1000.0
    print(f"\nlevel-{level} switches, {rounds} interleaved rounds, 1 client (ms)")
    header = f"{'path':<16} {'p50':>8} {'p90':>8} {'p99':>8}"
    print(header)
    print("-" * len(header))
    for name, series in results.items():
        p50, p90, p99 = (quantile(series, q) * ms for q in (0.5, 0.9, 0.99))
        print(f"{name:<16} {p50:8.3f} {p90:8.3f} {p99:8.3f}")
    q = {name: {p: quantile(s, p) for p in (0.5, 0.99)} for name, s in results.items()}
    switch = {p: (q["gateway switch"][p] - q["direct switch"][p]) * ms for p in (0.5, 0.99)}
    proxy = {p: (q["gateway awake"][p] - q["direct awake"][p]) * ms for p in (0.5, 0.99)}
    print(
        f"\nswitch overhead (gateway switch - direct switch): p50 {switch[0.5]:+.3f} ms, "
        f"p99 {switch[0.99]:+.3f} ms (target <= 5 ms)"
    )
    print(
        f"  of which ordinary proxying (gateway awake - direct awake): p50 {proxy[0.5]:+.3f} ms, "
        f"p99 {proxy[0.99]:+.3f} ms"
    )
    ratio = q["gateway switch"][0.5] / q["direct switch"][0.5]
    print(f"  gateway switch / direct switch at p50: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds (max 1000)")
    parser.add_argument("--level", type=int, choices=(1, 2), default=1, help="vLLM sleep level")
    args = parser.parse_args()
    rounds = min(args.rounds, 1000)
    env = {
        "DOUBLE_TOKEN_DELAY_S": "0",
        "VLLM_SERVER_DEV_MODE": "1",
        "PATH": "/usr/bin:/bin",
    }
    with tempfile.TemporaryDirectory(prefix="gateway-switch-") as workdir, doubles(env) as ports:
        key = create_key(Path(workdir) / "keys.json", "bench").key
        gateway_port = free_port()
        argv = [sys.executable, "-c", GATEWAY]
        argv += [f"http://127.0.0.1:{ports[f'gateway-{n}']}" for n in NAMES]
        argv += [str(gateway_port), workdir, str(args.level)]
        gateway_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with _process(argv, gateway_port, "gateway", gateway_env):
            results = measure(ports, gateway_port, key, rounds, args.level)
    report(results, rounds, args.level)


if __name__ == "__main__":
    main()
