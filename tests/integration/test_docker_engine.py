"""The private engine works end to end: label, publish on 127.0.0.1, answer HTTP, remove."""

from __future__ import annotations

import time
from pathlib import Path

import docker  # noqa: TID251 - this test checks the engine itself
import httpx
import pytest

from tests.support.images import build_image

pytestmark = pytest.mark.docker

_SERVER = """\
import http.server, json

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""


def _wait_for_http(url: str, deadline_s: float = 20.0) -> httpx.Response:
    # Readiness is polled with a bound; the test asserts the answer, never the time it took.
    end = time.monotonic() + deadline_s
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def test_labelled_container_serves_on_loopback_and_is_removed(
    docker_client: docker.DockerClient, python_base_image: str, tmp_path: Path
) -> None:
    (tmp_path / "server.py").write_text(_SERVER)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {python_base_image}\nCOPY server.py /srv/server.py\n"
        'CMD ["/usr/bin/python3", "/srv/server.py"]\n'
    )
    image = build_image(docker_client, "appliance-test/http-echo:1", tmp_path)

    container = docker_client.containers.run(
        image,
        detach=True,
        name="appliance-test-echo",
        labels={"io.llm-appliance.test": "echo"},
        ports={"8000/tcp": ("127.0.0.1", None)},
    )
    try:
        container.reload()
        binding = container.ports["8000/tcp"][0]
        assert binding["HostIp"] == "127.0.0.1"
        response = _wait_for_http(f"http://127.0.0.1:{binding['HostPort']}/health")
        assert response.status_code == 200
        assert response.json() == {"path": "/health"}

        found = docker_client.containers.list(filters={"label": "io.llm-appliance.test=echo"})
        assert [c.id for c in found] == [container.id]
    finally:
        container.remove(force=True)

    assert docker_client.containers.list(all=True, filters={"label": "io.llm-appliance.test"}) == []
