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

from pathlib import PurePath
from typing import Final

__all__ = ["AMX_PERMISSION_HOOK", "cpu_engine_env", "hook_files"]

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
