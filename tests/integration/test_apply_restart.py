"""A dockerd crash and restart *without* live-restore: the restarted daemon stops the containers
it finds. Status and plan must still find exactly the same containers by their labels, and apply
must bring the stack back without duplicating anything.

(`test_apply.py` covers the other kind of box, the session daemon with --live-restore.)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.hardware import detect_box
from appliance.profile import parse_profile
from appliance.runtime.apply import apply_profile, plan_profile
from appliance.runtime.containers import down, status
from appliance.runtime.docker import DockerEngine
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import weights_path
from tests.doubles import EngineDoubleImages, build_engine_doubles, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.images import ensure_python_base

pytestmark = pytest.mark.docker

NO_GPU = SpecOptions(gpu_requests=False)
DEADLINES = {"vllm": 120.0, "tei": 120.0}


@pytest.fixture(scope="module")
def plain_daemon() -> Iterator[tuple[PrivateDockerd, EngineDoubleImages]]:
    root = Path(tempfile.mkdtemp(prefix="appliance-dockerd-nolr-", dir="/tmp"))
    daemon = PrivateDockerd(root, live_restore=False)
    daemon.start()
    try:
        client = daemon.client()
        try:
            images = build_engine_doubles(client, ensure_python_base(client), root / "build")
        finally:
            client.close()
        yield daemon, images
    finally:
        client = daemon.client()
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        finally:
            client.close()
            daemon.stop()
            # dockerd leaves its data root bind-mounted onto itself; unmount, then remove.
            subprocess.run(["umount", str(root / "data")], capture_output=True, check=False)
            shutil.rmtree(root, ignore_errors=True)


def test_restart_without_live_restore_finds_the_same_containers(
    plain_daemon: tuple[PrivateDockerd, EngineDoubleImages], tmp_path: Path
) -> None:
    daemon, images = plain_daemon
    models = tmp_path / "models"
    for repo in ("Qwen/Qwen2.5-7B-Instruct-AWQ", "BAAI/bge-m3"):
        weights_path(models, repo, "main").mkdir(parents=True)
    profile = parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: restart-test}\nspec:\n"
        "  model: {repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq}\n"
        "  embeddings: {repo: BAAI/bge-m3, device: cpu}\n"
        f"  images: {{vllm: '{images.vllm['ok']}', tei: '{images.tei}'}}\n"
        f"  ports: {{vllm: {free_port()}, tei: {free_port()}, gateway: {free_port()}}}\n"
        f"  storage: {{models_dir: {models}, state_dir: {tmp_path / 'state'}}}\n",
        "restart-test.yaml",
    )
    box = detect_box(simulate="rtx4090", models_dir=models)
    engine = DockerEngine(daemon.base_url)
    try:
        assert apply_profile(profile, box, engine, options=NO_GPU, deadlines_s=DEADLINES).applied
        before = {c.role: c for c in engine.managed_containers()}
    finally:
        engine.close()

    daemon.kill()
    daemon.start()
    engine = DockerEngine(daemon.base_url)
    try:
        # Docker 20.10 without live-restore kills the containers it finds on restore after a
        # crash and does not start them again, whatever the restart policy. They are still the
        # appliance's, found by label: status shows them stopped, plan recreates exactly them.
        rows = {row.role: row for row in status(engine)}
        assert {r: row.container_id for r, row in rows.items()} == {
            r: c.id for r, c in before.items()
        }
        assert all(row.ready is not True for row in rows.values())
        plan = plan_profile(profile, box, engine, options=NO_GPU)
        assert [(a.kind, a.container.id if a.container else None) for a in plan.actions] == [
            ("replace", before["vllm"].id),
            ("replace", before["tei"].id),
        ]
        assert all("unchanged but exited" in a.reason for a in plan.actions)

        assert apply_profile(profile, box, engine, options=NO_GPU, deadlines_s=DEADLINES).applied
        rows = {row.role: row for row in status(engine)}
        assert len(engine.managed_containers()) == 2
        assert all(row.ready for row in rows.values())
        again = apply_profile(profile, box, engine, options=NO_GPU, deadlines_s=DEADLINES)
        assert not again.applied
        assert {c.role for c in down(engine)} == {"vllm", "tei"}
    finally:
        engine.close()
