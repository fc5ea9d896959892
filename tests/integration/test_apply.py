"""Apply, for real: the private dockerd, the engine doubles, labels as the only state.

Every test starts from a box without managed containers and leaves it so. The profiles use the
doubles' images through `spec.images`, and `SpecOptions(gpu_requests=False)` — the one test
switch — because this machine has no GPU. Nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import docker  # noqa: TID251 - the test makes a foreign container behind the appliance's back
import httpx
import pytest

from appliance.errors import (
    EnvironmentNotReadyError,
    ExitCode,
    OperationFailedError,
    RefusedError,
)
from appliance.hardware import detect_box
from appliance.hardware.box import Box
from appliance.profile import Profile, parse_profile
from appliance.runtime.apply import ApplyEvent, ApplyFailedError, apply_profile, plan_profile
from appliance.runtime.containers import down, service_logs, status
from appliance.runtime.docker import DockerEngine
from appliance.runtime.lock import apply_lock, engine_lock_path
from appliance.runtime.model import ObservedContainer
from appliance.runtime.specs import SpecOptions
from appliance.vocabulary import weights_path
from tests.doubles import EngineDoubleImages, free_port
from tests.support.dockerd import PrivateDockerd
from tests.support.images import build_image

pytestmark = pytest.mark.docker

NO_GPU = SpecOptions(gpu_requests=False)
DEADLINES = {"vllm": 120.0, "tei": 120.0}  # generous: a loaded CI machine must not flake
CHAT_REPO = "Qwen/Qwen2.5-7B-Instruct-AWQ"
EMBED_REPO = "BAAI/bge-m3"


@dataclass
class Stack:
    """One test's box: its directories, ports and images, and a way to write profiles."""

    root: Path
    vllm_port: int
    tei_port: int
    doubles: EngineDoubleImages
    box: Box

    def profile(
        self,
        *,
        max_num_seqs: int = 32,
        embeddings: bool = True,
        vllm_image: str | None = None,
        vllm_port: int | None = None,
    ) -> Profile:
        embeddings_block = (
            f"  embeddings: {{repo: {EMBED_REPO}, served_model_name: bge-m3, device: cpu}}\n"
            if embeddings
            else ""
        )
        text = (
            "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: apply-test}\n"
            "spec:\n"
            f"  model: {{repo: {CHAT_REPO}, quantization: awq, served_model_name: chat}}\n"
            f"  engine: {{max_model_len: 4096, max_num_seqs: {max_num_seqs}}}\n"
            f"{embeddings_block}"
            f"  images: {{vllm: '{vllm_image or self.doubles.vllm['ok']}', "
            f"tei: '{self.doubles.tei}'}}\n"
            f"  ports: {{vllm: {vllm_port or self.vllm_port}, tei: {self.tei_port}, "
            f"gateway: {free_port()}}}\n"
            f"  storage: {{models_dir: {self.root / 'models'}, state_dir: {self.root / 'state'}}}\n"
        )
        return parse_profile(text, "apply-test.yaml")


@pytest.fixture
def stack(tmp_path: Path, engine_doubles: EngineDoubleImages) -> Stack:
    models = tmp_path / "models"
    for repo in (CHAT_REPO, EMBED_REPO):
        weights = weights_path(models, repo, "main")
        weights.mkdir(parents=True)
        (weights / "config.json").write_text("{}")
    box = detect_box(simulate="rtx4090", models_dir=models)
    return Stack(tmp_path, free_port(), free_port(), engine_doubles, box)


def _apply(stack: Stack, engine: DockerEngine, profile: Profile, **kwargs: object) -> object:
    return apply_profile(
        profile,
        stack.box,
        engine,
        options=NO_GPU,
        deadlines_s=DEADLINES,
        **kwargs,  # type: ignore[arg-type]
    )


def _by_role(engine: DockerEngine) -> dict[str, ObservedContainer]:
    containers = engine.managed_containers()
    roles = [c.role for c in containers]
    assert len(roles) == len(set(roles)), f"duplicate containers: {containers}"
    return {c.role: c for c in containers}


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def test_apply_from_nothing_then_again_changes_nothing(engine: DockerEngine, stack: Stack) -> None:
    events: list[ApplyEvent] = []
    profile = stack.profile()
    result = apply_profile(
        profile, stack.box, engine, options=NO_GPU, deadlines_s=DEADLINES, progress=events.append
    )
    assert result.applied
    assert [(a.kind, a.role) for a in result.plan.actions] == [
        ("create", "vllm"),
        ("create", "tei"),
    ]
    assert {"preflight", "create", "healthy", "done"} <= {e.step for e in events}
    first = _by_role(engine)
    assert {role: c.state for role, c in first.items()} == {"vllm": "running", "tei": "running"}
    assert first["vllm"].name == "llm-appliance-apply-test-vllm"
    assert _answers(f"http://127.0.0.1:{stack.vllm_port}/health")
    assert _answers(f"http://127.0.0.1:{stack.tei_port}/health")
    models = httpx.get(f"http://127.0.0.1:{stack.vllm_port}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["chat"]

    again = apply_profile(profile, stack.box, engine, options=NO_GPU, deadlines_s=DEADLINES)
    assert not again.applied
    assert again.plan.is_noop
    second = _by_role(engine)
    for role in ("vllm", "tei"):
        assert second[role].id == first[role].id
        assert second[role].started_at == first[role].started_at
        assert second[role].restart_count == 0

    rows = {row.role: row for row in status(engine)}
    assert rows["vllm"].ready is True
    assert rows["tei"].ready is True
    assert "double" in service_logs(engine, "vllm", tail=20)


def test_changing_max_num_seqs_replaces_only_vllm(engine: DockerEngine, stack: Stack) -> None:
    _apply(stack, engine, stack.profile(max_num_seqs=32))
    before = _by_role(engine)
    plan = plan_profile(stack.profile(max_num_seqs=16), stack.box, engine, options=NO_GPU)
    [change] = plan.changes
    assert change.kind == "replace"
    assert change.role == "vllm"
    assert [(c.field, c.before, c.after) for c in change.changes] == [
        ("command --max-num-seqs", "32", "16")
    ]

    _apply(stack, engine, stack.profile(max_num_seqs=16))
    after = _by_role(engine)
    assert after["vllm"].id != before["vllm"].id
    assert after["tei"].id == before["tei"].id
    assert after["tei"].started_at == before["tei"].started_at
    assert all("-previous" not in c.name for c in after.values())
    assert _answers(f"http://127.0.0.1:{stack.vllm_port}/health")


def test_removing_embeddings_removes_only_tei(engine: DockerEngine, stack: Stack) -> None:
    _apply(stack, engine, stack.profile())
    before = _by_role(engine)
    _apply(stack, engine, stack.profile(embeddings=False))
    after = _by_role(engine)
    assert set(after) == {"vllm"}
    assert after["vllm"].id == before["vllm"].id
    assert after["vllm"].started_at == before["vllm"].started_at


def test_an_engine_that_crashes_at_start_is_rolled_back(engine: DockerEngine, stack: Stack) -> None:
    _apply(stack, engine, stack.profile(max_num_seqs=32))
    before = _by_role(engine)

    broken = stack.profile(max_num_seqs=16, vllm_image=stack.doubles.vllm["exit-on-start"])
    with pytest.raises(ApplyFailedError) as failed:
        _apply(stack, engine, broken)
    error = failed.value
    assert error.exit_code == ExitCode.FAILED
    assert error.restored
    assert error.diagnosis is not None
    assert error.diagnosis.suggested_max_model_len == 12288
    assert "larger than the available KV cache memory" in error.log_tail
    rendered = error.render()
    assert "max_model_len: 12288" in rendered
    assert "last log lines of vllm" in rendered
    assert "previous containers run again" in rendered

    after = _by_role(engine)
    assert {role: c.id for role, c in after.items()} == {r: c.id for r, c in before.items()}
    assert {c.name for c in after.values()} == {c.name for c in before.values()}
    assert all(c.state == "running" for c in after.values())
    assert _answers(f"http://127.0.0.1:{stack.vllm_port}/health")
    # The box is exactly as before, so the original profile is a no-op again.
    assert plan_profile(stack.profile(max_num_seqs=32), stack.box, engine, options=NO_GPU).is_noop


def test_an_engine_that_never_turns_healthy_is_rolled_back(
    engine: DockerEngine, stack: Stack
) -> None:
    _apply(stack, engine, stack.profile())
    before = _by_role(engine)
    never = stack.profile(vllm_image=stack.doubles.vllm["never-healthy"])
    with pytest.raises(ApplyFailedError, match="not healthy after"):
        apply_profile(
            never, stack.box, engine, options=NO_GPU, deadlines_s={"vllm": 3.0, "tei": 60.0}
        )
    after = _by_role(engine)
    assert {role: c.id for role, c in after.items()} == {r: c.id for r, c in before.items()}


def test_a_taken_port_is_refused_before_anything_changes(
    engine: DockerEngine, stack: Stack
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.vllm_port))
        squatter.listen()
        with pytest.raises(RefusedError, match=f"port already in use.*{stack.vllm_port}"):
            _apply(stack, engine, stack.profile())
        assert engine.managed_containers() == []

        # With a stack running, moving vLLM onto a taken port changes nothing either.
        other = free_port()
        _apply(stack, engine, stack.profile(vllm_port=other))
        before = _by_role(engine)
        with pytest.raises(RefusedError, match="nothing was changed"):
            _apply(stack, engine, stack.profile(vllm_port=stack.vllm_port))
        after = _by_role(engine)
        assert {r: (c.id, c.started_at) for r, c in after.items()} == {
            r: (c.id, c.started_at) for r, c in before.items()
        }


def test_a_second_apply_is_refused_while_one_holds_the_lock(
    engine: DockerEngine, stack: Stack
) -> None:
    profile = stack.profile()
    with (
        apply_lock(
            engine_lock_path(engine.endpoint, stack.root / "models"), "a test holding the lock"
        ),
        pytest.raises(RefusedError, match="a test holding the lock"),
    ):
        _apply(stack, engine, profile)
    assert engine.managed_containers() == []


def test_two_profiles_with_their_own_state_dirs_cannot_apply_at_once_on_one_engine(
    engine: DockerEngine, stack: Stack, tmp_path: Path
) -> None:
    """#13 item 15: the lock was per state dir, so two profiles applied at once on one engine
    and stopped each other's set-aside containers. It is per Docker engine now."""
    import threading

    first = stack.profile(embeddings=False)
    other_state = tmp_path / "other-state"
    second = first.model_copy(
        update={
            "metadata": first.metadata.model_copy(update={"name": "other-team"}),
            "spec": first.spec.model_copy(
                update={
                    "storage": first.spec.storage.model_copy(update={"state_dir": other_state}),
                    "ports": first.spec.ports.model_copy(update={"vllm": free_port()}),
                }
            ),
        }
    )
    assert first.spec.storage.state_dir != second.spec.storage.state_dir
    holding, release = threading.Event(), threading.Event()

    def hold(_plan: object) -> bool:  # apply asks `confirm` under its lock
        holding.set()
        release.wait(timeout=120)
        return False

    worker = threading.Thread(target=lambda: _apply(stack, engine, first, confirm=hold))
    worker.start()
    try:
        assert holding.wait(timeout=120)
        with pytest.raises(RefusedError, match="another apply is running") as refused:
            _apply(stack, engine, second)
        assert "Docker engine" in refused.value.message
        assert f"pid {os.getpid()}" in refused.value.message
    finally:
        release.set()
        worker.join(timeout=120)
    assert engine.managed_containers() == []


def test_status_and_plan_survive_a_dockerd_restart(
    docker_engine: PrivateDockerd, engine: DockerEngine, stack: Stack
) -> None:
    profile = stack.profile()
    _apply(stack, engine, profile)
    before = _by_role(engine)

    docker_engine.kill()  # hard: no clean shutdown
    docker_engine.start()
    restarted = DockerEngine(docker_engine.base_url)
    try:
        after = _by_role(restarted)
        assert {r: c.id for r, c in after.items()} == {r: c.id for r, c in before.items()}
        assert all(c.state == "running" for c in after.values())  # --live-restore
        assert plan_profile(profile, stack.box, restarted, options=NO_GPU).is_noop
        result = apply_profile(profile, stack.box, restarted, options=NO_GPU, deadlines_s=DEADLINES)
        assert not result.applied
        assert len(restarted.managed_containers()) == 2
        rows = {row.role: row for row in status(restarted)}
        assert rows["vllm"].container_id == before["vllm"].id
    finally:
        restarted.close()


def test_down_removes_managed_containers_and_nothing_else(
    engine: DockerEngine, stack: Stack, docker_client: docker.DockerClient
) -> None:
    foreign = docker_client.containers.run(
        stack.doubles.vllm["ok"],
        ["--model", "/x", "--port", "8000"],
        name="someone-elses-vllm",
        labels={"io.example.owner": "not-the-appliance"},
        detach=True,
    )
    try:
        _apply(stack, engine, stack.profile())
        assert foreign.id not in {c.id for c in engine.managed_containers()}
        removed = down(engine, state_dir=stack.root / "state")
        assert {c.role for c in removed} == {"vllm", "tei"}
        assert engine.managed_containers() == []
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)


def test_no_gpu_in_docker_and_missing_weights_are_refused_before_any_change(
    engine: DockerEngine, stack: Stack
) -> None:
    # Real specs (GPU requests on) on a box whose Docker has no NVIDIA runtime.
    no_toolkit = stack.box.model_copy(
        update={"docker": stack.box.docker.model_copy(update={"nvidia_runtime": False})}
    )
    with pytest.raises(EnvironmentNotReadyError, match="cannot give containers a GPU"):
        apply_profile(stack.profile(), no_toolkit, engine, deadlines_s=DEADLINES)
    assert engine.managed_containers() == []

    shutil.rmtree(weights_path(stack.root / "models", EMBED_REPO, "main"))
    with pytest.raises(EnvironmentNotReadyError, match="weights are not on this box"):
        _apply(stack, engine, stack.profile())
    assert engine.managed_containers() == []


def test_gpus_all_on_a_box_without_a_visible_gpu_is_refused_before_any_change(
    engine: DockerEngine, stack: Stack
) -> None:
    """#13 item 16: `gpus: all` used to start vLLM with no GPU request at all."""
    no_gpu = stack.box.model_copy(update={"gpus": []})
    profile = stack.profile(embeddings=False)
    assert profile.spec.gpus == "all"
    with pytest.raises(EnvironmentNotReadyError, match="no GPU") as refused:
        apply_profile(profile, no_gpu, engine, deadlines_s=DEADLINES)
    assert "nothing was changed" in refused.value.message
    assert "appliance detect" in (refused.value.hint or "")
    assert engine.managed_containers() == []
    # The test switch that turns GPU requests off is the one way past it.
    assert apply_profile(profile, no_gpu, engine, options=NO_GPU, deadlines_s=DEADLINES).applied


def test_an_image_that_cannot_be_pulled_stops_apply_before_any_change(
    engine: DockerEngine, stack: Stack
) -> None:
    _apply(stack, engine, stack.profile())
    before = _by_role(engine)
    missing = stack.profile(vllm_image="appliance-test/not-on-this-box:1", max_num_seqs=8)
    with pytest.raises(OperationFailedError, match="cannot pull") as failed:
        _apply(stack, engine, missing)
    assert "docker load" in (failed.value.hint or "")
    after = _by_role(engine)
    assert {r: (c.id, c.started_at) for r, c in after.items()} == {
        r: (c.id, c.started_at) for r, c in before.items()
    }


def test_a_profile_vllm_would_refuse_is_refused_before_any_change(
    engine: DockerEngine, stack: Stack
) -> None:
    # Qwen2.5-7B AWQ at its full 32k context in 30 % of a 24 GB card: no room for the KV cache.
    profile = stack.profile()
    engine_flags = profile.spec.engine.model_copy(
        update={"gpu_memory_utilization": 0.3, "max_model_len": 32768}
    )
    tight = profile.model_copy(
        update={"spec": profile.spec.model_copy(update={"engine": engine_flags})}
    )
    with pytest.raises(RefusedError, match="vLLM would refuse") as refused:
        _apply(stack, engine, tight)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert engine.managed_containers() == []


def test_a_new_commit_behind_the_same_revision_replaces_the_engine(
    engine: DockerEngine, stack: Stack
) -> None:
    """The weights module keeps `<revision>` as a link to `<sha>/`; engines mount the commit."""
    main = weights_path(stack.root / "models", CHAT_REPO, "main")
    shutil.rmtree(main)
    for sha in ("a" * 40, "b" * 40):
        (main.parent / sha).mkdir()
        (main.parent / sha / "config.json").write_text("{}")
    main.symlink_to("a" * 40)
    _apply(stack, engine, stack.profile())
    assert plan_profile(stack.profile(), stack.box, engine, options=NO_GPU).is_noop

    main.unlink()
    main.symlink_to("b" * 40)  # a pull of `main` found a new commit
    plan = plan_profile(stack.profile(), stack.box, engine, options=NO_GPU)
    [change] = plan.changes
    assert (change.kind, change.role) == ("replace", "vllm")
    assert [c.field for c in change.changes] == ["mounts"]
    assert "b" * 40 in (change.changes[0].after or "")


def test_an_image_not_on_the_box_is_pulled_with_byte_progress(
    stack: Stack, engine: DockerEngine, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    from tests.support.registry import private_registry

    # A layer of its own (every other layer is already on the box, shared with the doubles).
    context = tmp_path / "unique"
    context.mkdir()
    (context / "blob").write_bytes(os.urandom(2 * 1024 * 1024))
    (context / "Dockerfile").write_text(f"FROM {stack.doubles.vllm['ok']}\nCOPY blob /srv/blob\n")
    with private_registry(tmp_path / "registry") as registry:
        remote = f"{registry}/appliance-test/vllm-double"
        build_image(docker_client, f"{remote}:pulled", context)
        for line in docker_client.images.push(remote, tag="pulled", stream=True, decode=True):
            assert "error" not in line, line
        docker_client.images.remove(f"{remote}:pulled")
        assert not engine.image_present(f"{remote}:pulled")

        events: list[ApplyEvent] = []
        result = _apply(
            stack,
            engine,
            stack.profile(embeddings=False, vllm_image=f"{remote}:pulled"),
            progress=events.append,
        )
    assert result.applied  # type: ignore[attr-defined]
    assert engine.image_present(f"{remote}:pulled")
    pulls = [event.pull for event in events if event.pull is not None]
    assert pulls, "no pull progress was reported"
    assert max(p.downloaded_bytes for p in pulls) > 0
    assert any(p.total_bytes for p in pulls)
