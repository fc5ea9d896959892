"""A bounded fuzz of the `appliance` command line (#13): hostile values in every option.

A few hundred argument vectors, from a fixed seed, each a command's safe base arguments with one
or two option values replaced by something hostile (negative, zero, NaN, infinity, huge, empty,
unicode, a directory, a missing or unwritable path, a broken URL). Each runs in-process through
`cli.run`, and must end in an `ExitCode` with no "unexpected" error and no traceback.

Nothing leaves the box: Docker points at a socket that does not exist, the Hub is offline, every
state and output path is under the test's directory, and the two commands that would run until
Ctrl-C (the gateway, a watch) stop after their first step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import cli
from appliance.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
PROFILE = str(ROOT / "profiles" / "rtx4090-chat.yaml")
SEED = 13
VECTORS_PER_COMMAND = 10

# {tmp}: the test's directory; placeholders are filled in per test.
HOSTILE = [
    "-1",
    "0",
    "-0",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "9" * 40,
    "0.0000001",
    "",
    " ",
    "ünïcødé-名前",
    "\u202e",
    "{tmp}",
    "{tmp}/missing/deeper/file",
    "/proc/no-such-dir/x",
    "/proc/x",
    "http://[::1",
    "notaurl",
    "ftp://host/x",
    "http://127.0.0.1:99999",
    "-x",
    "rtx9999",
    "acme/",
    "a" * 300,
]

# command → (safe base argv, options that take a value). Paths in the base stay under {tmp}.
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "detect": (["detect", "--simulate", "rtx4090"], ["--simulate", "--models-dir"]),
    "validate": (["validate", PROFILE], []),
    "estimate": (
        ["estimate", "qwen2.5-7b-instruct", "--gpu-memory-gib", "24"],
        [
            "--gpu-memory-gib",
            "--gpus",
            "--tp",
            "--quantization",
            "--gpu-memory-utilization",
            "--max-model-len",
            "--max-num-seqs",
            "--max-num-batched-tokens",
            "--kv-cache-dtype",
            "--vllm-version",
        ],
    ),
    "recommend": (
        ["recommend", "--simulate", "rtx4090", "--workload", "chat"],
        [
            "--simulate",
            "--workload",
            "--users",
            "--context",
            "--prompt-tokens",
            "--output-tokens",
            "--prefer",
            "-o",
        ],
    ),
    "status": (["status", "--simulate", "rtx4090"], ["--simulate"]),
    "scrape": (["scrape", "127.0.0.1:9", "--count", "1"], ["--interval", "--count"]),
    "cost": (
        ["cost", PROFILE, "--gpu-cost-per-hour", "2"],
        [
            "--window",
            "--inputs",
            "--gpu-cost-per-hour",
            "--purchase-price",
            "--amortisation-months",
            "--electricity-per-kwh",
            "--overhead-pct",
            "--api",
            "--prices",
        ],
    ),
    "export-prometheus": (["export", "prometheus", PROFILE], ["-o"]),
    "export-grafana": (["export", "grafana"], ["-o"]),
    "export-k8s": (
        ["export", "k8s", PROFILE, "-o", "{tmp}/k8s"],
        ["-o", "--format", "--simulate"],
    ),
    "weights-list": (["weights", "list", "--models-dir", "{tmp}/models"], ["--models-dir"]),
    "weights-rm": (["weights", "rm", "acme/x", "--models-dir", "{tmp}/models"], ["--models-dir"]),
    "weights-import": (
        ["weights", "import", "{tmp}/src", "--as", "acme/x", "--models-dir", "{tmp}/models"],
        ["--as", "--models-dir"],
    ),
    "weights-pull": (
        ["weights", "pull", "acme/x", "--models-dir", "{tmp}/models"],
        ["--revision", "--token-file", "--models-dir"],
    ),
    "bench": (
        ["bench", PROFILE, "--url", "http://127.0.0.1:9/v1", "--no-save", "--requests", "1"],
        [
            "--concurrency",
            "--request-rate",
            "--requests",
            "--input-len",
            "--output-len",
            "--prompts",
            "--slo-ttft",
            "--slo-itl",
            "--key-file",
            "--url",
            "--seed",
            "--report",
            "--state-dir",
        ],
    ),
    "plan": (["plan", PROFILE, "--simulate", "rtx4090"], ["--simulate"]),
    "apply": (["apply", PROFILE, "-y"], []),
    "down": (["down"], []),
    "logs": (["logs", "vllm"], ["--tail"]),
    "compose": (
        ["compose", "export", PROFILE, "--simulate", "rtx4090"],
        ["-o", "--simulate"],
    ),
    "gateway": (
        ["gateway", "--profile", PROFILE, "--state-dir", "{tmp}/state"],
        [
            "--host",
            "--port",
            "--state-dir",
            "--chat-upstream",
            "--embeddings-upstream",
            "--fallback-upstream",
            "--log-level",
        ],
    ),
    "keys-create": (
        ["keys", "create", "ci", "--profile", PROFILE, "--state-dir", "{tmp}/state"],
        ["--rate-limit", "--state-dir", "--profile"],
    ),
    "keys-list": (
        ["keys", "list", "--profile", PROFILE, "--state-dir", "{tmp}/state"],
        ["--state-dir", "--profile"],
    ),
    "keys-revoke": (
        ["keys", "revoke", "nobody", "--profile", PROFILE, "--state-dir", "{tmp}/state"],
        ["--state-dir"],
    ),
    "fallback": (
        ["fallback", "--profile", PROFILE, "--state-dir", "{tmp}/state"],
        ["--state-dir", "--profile"],
    ),
    "models": (["models", PROFILE, "wake", "chat"], []),
}


def _vectors() -> Iterator[tuple[str, list[str]]]:
    rng = random.Random(SEED)
    for name, (base, options) in COMMANDS.items():
        yield name, list(base)
        for _ in range(VECTORS_PER_COMMAND if options else 2):
            argv = list(base)
            for option in rng.sample(options, k=min(len(options), rng.choice((1, 1, 2)))):
                argv += [option, rng.choice(HOSTILE)]
            if not options:  # hostile positional instead
                argv[-1] = rng.choice(HOSTILE)
            yield name, argv
        if PROFILE in base:  # the profile itself: missing, a directory, not YAML, too long
            for _ in range(3):
                yield name, [rng.choice(HOSTILE) if arg == PROFILE else arg for arg in base]


VECTORS = list(_vectors())


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fuzz")
    monkeypatch.delenv("LLM_APPLIANCE_PROFILE", raising=False)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")

    from appliance.gateway import server
    from appliance.operations import status

    monkeypatch.setattr(server, "run_gateway", lambda *a, **k: None)  # would serve forever
    real_watch = status.watch_status

    def one_tick(samplers: Any, on_snapshot: Any, **kwargs: Any) -> Any:
        kwargs["count"] = 1  # `status --watch` runs until Ctrl-C
        return real_watch(samplers, on_snapshot, **kwargs)

    monkeypatch.setattr(status, "watch_status", one_tick)
    return tmp_path


def test_the_vector_set_is_bounded_and_covers_every_command() -> None:
    assert 250 <= len(VECTORS) <= 450
    assert {name for name, _ in VECTORS} == set(COMMANDS)


def test_no_argument_vector_ends_in_an_unexpected_error(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failures: list[str] = []
    for _name, template in VECTORS:
        argv = [arg.replace("{tmp}", str(sandbox)) for arg in template]
        code = cli.run(argv)
        captured = capsys.readouterr()
        output = captured.out + captured.err
        if code not in set(ExitCode) or "unexpected" in output or "Traceback" in output:
            failures.append(f"{argv!r} → {code}: {output.strip().splitlines()[-2:]}")
    assert failures == [], "\n".join(failures)
