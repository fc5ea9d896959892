"""Plan is pure: desired specs against observed containers (found by label) → actions."""

from __future__ import annotations

from appliance.runtime.model import ContainerSpec, ObservedContainer, PortBinding
from appliance.runtime.plan import make_plan


def _spec(role: str = "vllm", seqs: int = 32, port: int = 8000) -> ContainerSpec:
    return ContainerSpec(
        role=role,  # type: ignore[arg-type]
        name=f"llm-appliance-p-{role}",
        image=f"{role}:1",
        command=("--model", "/models/a/b/main", "--max-num-seqs", str(seqs), "--enable-x"),
        ports=(PortBinding(container_port=8000, host_port=port),),
        profile="p",
    )


def _running(
    spec: ContainerSpec, *, state: str = "running", name: str | None = None
) -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{spec.role}-{spec.spec_hash()}",
        name=name or spec.name,
        role=spec.role,
        profile=spec.profile,
        spec_hash=spec.spec_hash(),
        appliance_version="0",
        image=spec.image,
        state=state,  # type: ignore[arg-type]
        host_ports={p.container_port: p.host_port for p in spec.ports},
        spec_json=spec.model_dump_json(),
    )


def test_from_nothing_everything_is_created() -> None:
    plan = make_plan([_spec("vllm"), _spec("tei", port=8001)], [])
    assert [(a.kind, a.role) for a in plan.actions] == [("create", "vllm"), ("create", "tei")]
    assert not plan.is_noop


def test_same_specs_running_is_a_noop() -> None:
    specs = [_spec("vllm"), _spec("tei", port=8001)]
    plan = make_plan(specs, [_running(s) for s in specs])
    assert plan.is_noop
    assert [a.kind for a in plan.actions] == ["keep", "keep"]
    assert "no changes" in plan.render()


def test_a_changed_flag_replaces_only_that_service_and_names_the_flag() -> None:
    old = [_spec("vllm", seqs=32), _spec("tei", port=8001)]
    new = [_spec("vllm", seqs=16), _spec("tei", port=8001)]
    plan = make_plan(new, [_running(s) for s in old])
    kinds = {a.role: a.kind for a in plan.actions}
    assert kinds == {"vllm": "replace", "tei": "keep"}
    [replace] = plan.changes
    [change] = replace.changes
    assert (change.field, change.before, change.after) == ("command --max-num-seqs", "32", "16")
    assert replace.to_json()["changes"] == [
        {"field": "command --max-num-seqs", "before": "32", "after": "16"}
    ]


def test_a_role_no_longer_desired_is_removed() -> None:
    old = [_spec("vllm"), _spec("tei", port=8001)]
    plan = make_plan([_spec("vllm")], [_running(s) for s in old])
    assert [(a.kind, a.role) for a in plan.changes] == [("remove", "tei")]


def test_an_exited_container_with_the_same_spec_is_recreated() -> None:
    spec = _spec()
    plan = make_plan([spec], [_running(spec, state="exited")])
    [action] = plan.actions
    assert action.kind == "replace"
    assert "exited" in action.reason


def test_a_leftover_previous_copy_is_removed() -> None:
    spec = _spec()
    leftover = _running(_spec(seqs=8), state="exited", name=f"{spec.name}-previous-abc")
    plan = make_plan([spec], [_running(spec), leftover])
    assert [(a.kind, a.name) for a in plan.changes] == [("remove", leftover.name)]


def test_without_the_spec_label_the_hash_is_the_change() -> None:
    old = _running(_spec(seqs=8)).model_copy(update={"spec_json": None})
    [action] = make_plan([_spec()], [old]).actions
    assert action.kind == "replace"
    assert action.changes[0].field == "spec-hash"


def test_only_observed_containers_are_ever_in_a_plan() -> None:
    """Plan sees only what the label filter returned: no observed → only creates."""
    plan = make_plan([_spec()], [])
    assert all(a.container is None for a in plan.actions)
