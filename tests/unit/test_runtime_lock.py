"""The apply lock: one holder, and the second is told who it is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import RefusedError
from appliance.runtime.lock import apply_lock


def test_second_holder_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "apply.lock"
    with apply_lock(path) as holder:
        assert holder.pid == os.getpid()
        with pytest.raises(RefusedError) as refused, apply_lock(path):
            pass
    message = refused.value.message
    assert f"pid {os.getpid()}" in message
    assert socket.gethostname() in message
    assert "since" in message
    with apply_lock(path):  # released: free again
        pass


def test_another_process_is_refused_and_a_dead_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "apply.lock"
    code = (
        "import sys; from pathlib import Path; from appliance.runtime.lock import apply_lock\n"
        "from appliance.errors import RefusedError\n"
        "try:\n"
        "    with apply_lock(Path(sys.argv[1])): print('got it')\n"
        "except RefusedError as e: print(e.message)\n"
    )
    with apply_lock(path):
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        ).stdout
        assert "another apply is running" in out
        assert f"pid {os.getpid()}" in out
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "got it" in out
