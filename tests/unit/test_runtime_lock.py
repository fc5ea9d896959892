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


def test_one_engine_has_one_lock_however_it_is_spelled(tmp_path: Path) -> None:
    from appliance.runtime.lock import engine_endpoint, engine_lock_path

    socket_dir = tmp_path / "run"
    socket_dir.mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(socket_dir)
    spellings = [
        f"unix://{socket_dir}/docker.sock",
        f"unix://{tmp_path}/var/run/docker.sock",
        f"http+unix://{socket_dir}/docker.sock",
        f"{socket_dir}/docker.sock",
    ]
    endpoints = {engine_endpoint(s) for s in spellings}
    assert endpoints == {f"unix://{socket_dir}/docker.sock"}
    assert engine_endpoint(None, {"DOCKER_HOST": "tcp://10.0.0.5:2376/"}) == "tcp://10.0.0.5:2376"
    assert engine_endpoint(None, {}) == engine_endpoint("unix:///var/run/docker.sock")

    locks = tmp_path / "locks"
    one = engine_lock_path(endpoints.pop(), tmp_path / "fallback", lock_dir=locks)
    other = engine_lock_path("tcp://10.0.0.5:2376", tmp_path / "fallback", lock_dir=locks)
    assert one.parent == other.parent == locks
    assert one != other
    assert "docker-sock" in one.name


def test_the_lock_falls_back_when_the_shared_directory_cannot_be_written(tmp_path: Path) -> None:
    from appliance.runtime.lock import engine_lock_path

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    path = engine_lock_path("unix:///x.sock", tmp_path / "models-parent", lock_dir=blocked / "d")
    assert path.parent == tmp_path / "models-parent"
