"""The CPU-engine hook: every Python process of a vLLM CPU engine holds AMX tile permission.

Run for real in fresh interpreters, as vLLM starts its engine core and workers (exec through
multiprocessing "spawn"). Where the kernel offers no AMX (AMD, Arm, old kernels) the hook must
start cleanly and change nothing; where it does, the spawned child must hold the permission that
without the hook it lacks (the SIGILL of issue #22).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from appliance.runtime.cpu_engine import AMX_PERMISSION_HOOK, cpu_engine_env, hook_files

XTILEDATA = 1 << 18

# Prints the XSTATE features the kernel supports and those this process and a spawned child hold.
REPORT = r"""
import ctypes, json, multiprocessing, sys

def held(op):
    value = ctypes.c_uint64(0)
    libc = ctypes.CDLL(None)
    return value.value if libc.syscall(158, op, ctypes.byref(value)) == 0 else 0

def child(queue):
    queue.put(held(0x1022))

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    child_perm = queue.get(timeout=60)
    process.join()
    print(json.dumps({"supported": held(0x1021), "parent": held(0x1022), "child": child_perm,
                      "hook": "sitecustomize" in sys.modules}))
"""


def _report(tmp_path: Path, env: dict[str, str]) -> dict[str, int]:
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stderr == ""
    report: dict[str, int] = json.loads(done.stdout)
    return report


def _write_hook(directory: Path) -> Path:
    directory.mkdir()
    for name, content in hook_files().items():
        (directory / name).write_text(content)
    return directory


def test_the_engine_env_points_python_at_the_hook() -> None:
    assert cpu_engine_env(PurePosixPath("/appliance/cpu-engine")) == {
        "PYTHONPATH": "/appliance/cpu-engine"
    }
    assert hook_files() == {"sitecustomize.py": AMX_PERMISSION_HOOK}
    compile(AMX_PERMISSION_HOOK, "sitecustomize.py", "exec")


@pytest.mark.skipif(sys.platform != "linux", reason="arch_prctl is Linux's")
def test_spawned_engine_processes_hold_tile_permission_wherever_the_kernel_offers_it(
    tmp_path: Path,
) -> None:
    hook = _write_hook(tmp_path / "hook")
    report = _report(tmp_path, cpu_engine_env(hook))
    assert report["hook"]
    if not report["supported"] & XTILEDATA:  # no AMX here: the hook is a silent no-op
        assert report["parent"] == report["child"] == report["supported"]
        return
    assert report["parent"] & XTILEDATA
    assert report["child"] & XTILEDATA


@pytest.mark.skipif(sys.platform != "linux", reason="arch_prctl is Linux's")
def test_without_the_hook_a_spawned_process_lacks_tile_permission(tmp_path: Path) -> None:
    report = _report(tmp_path, {"PYTHONPATH": ""})
    if not report["supported"] & XTILEDATA:
        pytest.skip("this kernel offers no AMX tile data")
    assert not report["child"] & XTILEDATA  # the first tile instruction would be SIGILL
