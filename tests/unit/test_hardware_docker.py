"""The Docker probe without a real daemon: error mapping, CDI specs, and a stand-in engine API.

The real engine is exercised in tests/integration/test_docker_probe.py; here a tiny HTTP server on
a unix socket answers `/version` and `/info` with documents shaped like Docker's, so the parsing
of runtimes, CDI and versions runs through docker-py itself.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from appliance.hardware import docker_probe
from appliance.hardware.docker_probe import (
    classify_connection_error,
    probe_docker,
    read_cdi_specs,
)

VERSION = {"Version": "27.5.1", "ApiVersion": "1.47", "MinAPIVersion": "1.24", "Os": "linux"}
INFO: dict[str, Any] = {
    "ServerVersion": "27.5.1",
    "Runtimes": {
        "io.containerd.runc.v2": {"path": "runc"},
        "nvidia": {"path": "nvidia-container-runtime"},
        "runc": {"path": "runc"},
    },
    "DefaultRuntime": "runc",
    "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"],
}


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(path: Path, info: dict[str, Any]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = self.path.split("?")[0]
            body = (
                VERSION if route.endswith("/version") else info if route.endswith("/info") else None
            )
            payload = json.dumps(body).encode()
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

        def address_string(self) -> str:  # unix sockets have no client address
            return "unix"

    server = _UnixHTTPServer(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path / "docker.sock", INFO)


def test_a_reachable_engine_with_the_nvidia_runtime(engine: str) -> None:
    docker = probe_docker(engine)
    assert docker.reachable
    assert (docker.version, docker.api_version) == ("27.5.1", "1.47")
    assert docker.runtimes == ("io.containerd.runc.v2", "nvidia", "runc")
    assert docker.default_runtime == "runc"
    assert docker.nvidia_runtime
    assert docker.gpu_containers_possible
    assert docker.cdi_spec_dirs == ("/etc/cdi", "/var/run/cdi")
    assert docker.problem is None


def test_cdi_devices_listed_by_the_daemon_are_used(tmp_path: Path) -> None:
    info = {
        **INFO,
        "Runtimes": {"runc": {"path": "runc"}},
        "DiscoveredDevices": [
            {"Source": "cdi", "ID": "nvidia.com/gpu=0"},
            {"Source": "cdi", "ID": "nvidia.com/gpu=all"},
        ],
    }
    for url in _serve(tmp_path / "docker.sock", info):
        docker = probe_docker(url)
        assert docker.cdi_devices == ("nvidia.com/gpu=0", "nvidia.com/gpu=all")
        assert not docker.nvidia_runtime
        assert docker.gpu_containers_possible


def test_spec_files_count_only_when_the_daemon_has_cdi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker 20.10 (Debian's docker.io) knows no CDI: specs on disk do not make GPUs reachable."""
    calls: list[tuple[str, ...]] = []

    def record(directories: tuple[str, ...]) -> tuple[str, ...]:
        calls.append(directories)
        return ()

    monkeypatch.setattr(docker_probe, "read_cdi_specs", record)
    old = {key: value for key, value in INFO.items() if key != "CDISpecDirs"}
    for url in _serve(tmp_path / "docker.sock", old):
        docker = probe_docker(url)
        assert docker.cdi_spec_dirs == ()
        assert docker.cdi_devices == ()
    assert calls == []


def test_cdi_spec_files_name_their_devices(tmp_path: Path) -> None:
    etc = tmp_path / "etc-cdi"
    etc.mkdir()
    (etc / "nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n"
        "- name: '0'\n  containerEdits: {}\n- name: all\n  containerEdits: {}\n"
    )
    (etc / "broken.yaml").write_text("kind: [unclosed\n")
    (etc / "notes.txt").write_text("kind: ignored/thing\n")
    run = tmp_path / "run-cdi"
    run.mkdir()
    (run / "other.json").write_text('{"kind": "vendor.com/net", "devices": [{"name": "eth0"}]}')
    found = read_cdi_specs((str(etc), str(run), str(tmp_path / "absent")))
    assert found == ("nvidia.com/gpu=0", "nvidia.com/gpu=all", "vendor.com/net=eth0")


def test_a_missing_socket_is_unreachable_not_an_exception(tmp_path: Path) -> None:
    docker = probe_docker(f"unix://{tmp_path}/docker.sock")
    assert not docker.reachable
    assert docker.problem in ("not-running", "not-installed")
    assert docker.error


@pytest.mark.parametrize(
    ("installed", "problem"), [(True, "not-running"), (False, "not-installed")]
)
def test_a_missing_socket_means_installed_or_not_by_the_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool, problem: str
) -> None:
    monkeypatch.setattr(docker_probe, "_docker_installed", lambda: installed)
    assert probe_docker(f"unix://{tmp_path}/docker.sock").problem == problem


def test_a_daemon_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    try:
        docker = probe_docker(f"unix://{path}", timeout_s=1)
    finally:
        listener.close()
    assert not docker.reachable
    assert docker.problem == "unreachable"


def _wrapped(cause: OSError) -> Exception:
    """An error shaped as docker-py raises it: DockerException from requests from the socket."""
    from docker.errors import DockerException  # noqa: TID251 - building docker-py's own error

    try:
        try:
            raise requests.exceptions.ConnectionError(("Connection aborted.", cause))
        except requests.exceptions.ConnectionError as inner:
            message = f"Error while fetching server API version: {inner}"
            raise DockerException(message) from inner
    except DockerException as outer:
        return outer


@pytest.mark.parametrize(
    ("cause", "problem"),
    [
        (PermissionError(13, "Permission denied"), "permission-denied"),
        (ConnectionRefusedError(111, "Connection refused"), "not-running"),
        (TimeoutError("timed out"), "unreachable"),
        (OSError(99, "Cannot assign requested address"), "error"),
    ],
)
def test_docker_py_errors_map_to_the_fix_they_need(cause: OSError, problem: str) -> None:
    assert classify_connection_error(_wrapped(cause), "unix:///var/run/docker.sock") == problem


def test_a_remote_engine_that_fails_oddly_is_unreachable() -> None:
    error = _wrapped(OSError(99, "Cannot assign requested address"))
    assert classify_connection_error(error, "tcp://10.0.0.5:2376") == "unreachable"


def test_permission_denied_wins_over_everything_else() -> None:
    error = _wrapped(PermissionError(13, "Permission denied"))
    error.__context__ = FileNotFoundError(2, "No such file or directory")
    assert classify_connection_error(error, "unix:///var/run/docker.sock") == "permission-denied"
