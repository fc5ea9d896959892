"""A model update's plan (issue #19 point 3): the new chat engine beside the old one on the
other chat port when both fit (blue/green), else in place with the gap said in a note; and the
two chat ports taking turns, so a plan after a blue/green update keeps what runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from appliance.hardware import detect_box
from appliance.profile import Profile, parse_profile
from appliance.runtime.apply import plan_profile, with_host_port
from appliance.runtime.model import ContainerSpec, ObservedContainer
from appliance.runtime.specs import container_specs

TEXT = """\
apiVersion: llm-appliance/v1
kind: Profile
metadata: {{name: upd}}
spec:
  model: {{repo: Qwen/Qwen2.5-7B-Instruct-AWQ, quantization: awq, served_model_name: chat}}
  engine: {{max_model_len: {length}, gpu_memory_utilization: {util}}}
  embeddings: {{enabled: false}}
  storage: {{models_dir: /tmp/upd-models, state_dir: {state}}}
{remote}"""

REMOTE = """\
  gateway:
    fallback:
      mode: auto
      remote: {base_url: 'https://api.example/v1', api_key_env: UPD_KEY}
"""


def _profile(tmp_path: Path, util: float, length: int = 4096, remote: bool = False) -> Profile:
    text = TEXT.format(
        util=util, length=length, state=tmp_path / "state", remote=REMOTE if remote else ""
    )
    return parse_profile(text, "upd.yaml")


def _running(spec: ContainerSpec, port: int | None = None) -> ObservedContainer:
    """`spec` running (on `port`, as a blue/green update leaves it)."""
    spec = with_host_port(spec, port) if port is not None else spec
    return ObservedContainer(
        id=f"id-{spec.name}",
        name=spec.name,
        role=spec.role,
        profile=spec.profile,
        spec_hash=spec.spec_hash(),
        appliance_version="0",
        image=spec.image,
        state="running",
        host_ports={p.container_port: p.host_port for p in spec.ports},
        spec_json=spec.model_dump_json(),
    )


def _engine(*containers: ObservedContainer) -> object:
    return SimpleNamespace(managed_containers=lambda: list(containers))


BOX = detect_box(simulate="rtx4090", models_dir=Path("/tmp/upd-models"))


def _chat(profile: Profile) -> ContainerSpec:
    return next(s for s in container_specs(profile, BOX) if s.name == "llm-appliance-upd-vllm")


def test_a_new_model_that_fits_beside_starts_on_the_other_chat_port(tmp_path: Path) -> None:
    old = _running(_chat(_profile(tmp_path, 0.4)))
    plan = plan_profile(_profile(tmp_path, 0.45, length=8192), BOX, _engine(old))  # type: ignore[arg-type]
    (action,) = [a for a in plan.actions if a.role == "vllm"]
    assert (action.kind, action.beside) == ("replace", True)
    assert action.spec is not None
    assert action.spec.ports[0].host_port == 8100
    assert action.spec.health_url == "http://127.0.0.1:8100/health"
    (note,) = plan.notes
    assert note.startswith("model update without an outage: the new chat engine starts on port")
    assert "old 0.40 + new 0.45 of 23.5 GiB = 20.0 GiB per GPU" in note
    assert "[blue/green: beside the old one]" in plan.render()
    assert plan.to_json()["actions"][0]["beside"] is True


def test_after_a_blue_green_update_the_chat_port_stays_where_it_runs(tmp_path: Path) -> None:
    profile = _profile(tmp_path, 0.45)
    chat = _chat(profile)
    moved = chat.model_copy(
        update={
            "ports": (chat.ports[0].model_copy(update={"host_port": 8100}),),
            "health_url": "http://127.0.0.1:8100/health",
        }
    )
    plan = plan_profile(profile, BOX, _engine(_running(moved)))  # type: ignore[arg-type]
    assert [(a.kind, a.role) for a in plan.actions] == [("keep", "vllm")]
    # The next update moves back to spec.ports.vllm.
    plan = plan_profile(_profile(tmp_path, 0.45, length=8192), BOX, _engine(_running(moved)))  # type: ignore[arg-type]
    (action,) = plan.actions
    assert action.beside
    assert action.spec is not None
    assert action.spec.ports[0].host_port == 8000


def test_a_new_model_that_does_not_fit_beside_is_replaced_in_place_and_the_plan_says_how(
    tmp_path: Path,
) -> None:
    old = _running(_chat(_profile(tmp_path, 0.8)))
    plan = plan_profile(_profile(tmp_path, 0.8, length=8192), BOX, _engine(old))  # type: ignore[arg-type]
    (action,) = plan.actions
    assert (action.kind, action.beside) == ("replace", False)
    (note,) = plan.notes
    assert note.startswith("model update in place (both engines do not fit: old 0.80 + new 0.80")
    assert "the gateway holds chat requests (bounded, 503 with Retry-After beyond)" in note
    remote = _profile(tmp_path, 0.8, length=8192, remote=True)
    (note,) = plan_profile(remote, BOX, _engine(old)).notes  # type: ignore[arg-type]
    assert "sends chat requests to the remote API while fallback is auto or always" in note


def test_a_profile_that_moves_the_chat_port_starts_the_new_engine_there(tmp_path: Path) -> None:
    old = _running(_chat(_profile(tmp_path, 0.4)))
    moved = parse_profile(
        TEXT.format(util=0.4, length=4096, state=tmp_path / "state", remote="")
        + "  ports: {vllm: 8200}\n",
        "upd.yaml",
    )
    (action,) = plan_profile(moved, BOX, _engine(old)).actions  # type: ignore[arg-type]
    assert action.beside
    assert action.spec is not None
    assert action.spec.ports[0].host_port == 8200


class _Clock:
    """A blocking clock whose `sleep` only moves the hands."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _blue_green_with_a_stream(
    tmp_path: Path, profile: Profile, stream_s: float
) -> tuple[float, list[str]]:
    """A blue/green update while one stream of `stream_s` seconds runs on the old engine (the
    gateway's /health counts it in `retired_in_flight` until it ends); when the old engine was
    stopped, and what apply said."""
    from appliance.runtime.apply import ApplyEvent, GatewayHandover, _Journal, _replace_beside
    from appliance.runtime.plan import Action

    clock = _Clock()
    stopped_at: list[float] = []
    old = _running(_chat(_profile(tmp_path, 0.4)))
    new = _chat(profile).model_copy(update={"name": old.name})
    url = f"http://127.0.0.1:{new.ports[0].host_port}/v1"

    def status() -> dict[str, object]:
        in_flight = 1 if clock.now < stream_s else 0
        return {"rollout": {"chat_upstream": url, "retired_in_flight": in_flight}}

    base = GatewayHandover.of(profile)
    handover = GatewayHandover(base.rollout_file, status, drain_s=base.drain_s, poll_s=0.5)
    engine = SimpleNamespace(rename=lambda *_: None, stop=lambda _id: stopped_at.append(clock.now))
    events: list[ApplyEvent] = []
    action = Action("replace", "vllm", old.name, spec=new, container=old, beside=True)
    _replace_beside(
        action,
        engine,  # type: ignore[arg-type]
        _Journal(),
        handover,
        start=lambda _spec: None,
        clock=clock,
        progress=events.append,
    )
    (when,) = stopped_at
    return when, [e.message for e in events]


def test_a_stream_longer_than_30_s_on_the_old_engine_finishes_before_it_stops(
    tmp_path: Path,
) -> None:
    """A long answer (minutes of tokens) is not cut by a model update: the old engine stops
    once its last stream ends, within the profile's bound (default 300 s)."""
    when, _ = _blue_green_with_a_stream(tmp_path, _profile(tmp_path, 0.45, 8192), stream_s=45.0)
    assert 45.0 <= when < 46.0


def test_past_the_profiles_drain_bound_the_old_engine_stops_and_apply_says_so(
    tmp_path: Path,
) -> None:
    text = TEXT.format(util=0.45, length=8192, state=tmp_path / "state", remote="")
    profile = parse_profile(text + "  gateway: {update_drain_seconds: 20}\n", "upd.yaml")
    when, said = _blue_green_with_a_stream(tmp_path, profile, stream_s=45.0)
    assert 20.0 <= when < 21.0
    assert said[-2] == (
        "1 request(s) still on the old chat engine after 20 s (gateway.update_drain_seconds): "
        "stopping it ends them"
    )
