"""Apply: the only part of the runtime that changes the box (STYLE 4).

`apply_profile` holds the box's apply lock, computes the plan (pure, from labels), refuses before
changing anything when the box cannot run it (ports taken, weights or GPU missing, images that
cannot be had), then executes it blue/green-safe:

1. every container that goes away or is replaced is first *set aside*: renamed to
   `<name>-previous-<id>` and stopped, never removed yet (engines cannot run side by side: they
   share the GPU memory and the host port);
2. each new container is created, started and waited for (health URL with a deadline, and an
   early end when the container dies);
3. only when all of them are healthy are the set-aside containers removed.

On any failure the new containers are removed and the set-aside ones get their names back and are
started again if they were running before, so the box runs exactly what it ran before; the error
(`ApplyFailedError`, exit 1) carries a diagnosis of the engine's log and its last lines.

Interruptions: Ctrl-C, SIGTERM and SIGHUP (an SSH session that drops) roll back the same way
(`ApplyInterrupted`, exit 130). While containers change they are acted on at the next safe
point, never in the middle of a Docker call, so a container created half-way is never missed.
A SIGKILL or a power cut cannot roll back: the set-aside container keeps its mark in its name
(`-previous-<id>`, plus `-stopped` when it was not running; Docker cannot change a container's
labels, and its spec hash label says what it runs), and the next apply, before planning,
restores it unless the container that replaced it answers healthy. It is never removed as "an
extra copy" while its replacement is not healthy.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from appliance.catalog import Catalog, load_catalog
from appliance.clock import BlockingClock, SystemClock
from appliance.errors import (
    ApplianceError,
    EnvironmentNotReadyError,
    OperationFailedError,
    RefusedError,
)
from appliance.gateway.switching import wake_calls
from appliance.hardware.box import Box
from appliance.profile import Profile
from appliance.runtime.diagnosis import Diagnosis, diagnose
from appliance.runtime.engine import ContainerEngine, PullProgress
from appliance.runtime.health import engine_sleeping, http_call, http_ok, wait_until_healthy
from appliance.runtime.interrupts import SignalGuard
from appliance.runtime.lock import (
    apply_lock,
    engine_lock_path,
)
from appliance.runtime.model import SET_ASIDE_MARK, ContainerSpec, ObservedContainer
from appliance.runtime.plan import Action, Plan, make_plan
from appliance.runtime.specs import SpecOptions, container_name, container_specs
from appliance.vocabulary import SleepLevel

if TYPE_CHECKING:
    from appliance.gateway.rollout import Rollout
    from appliance.sizing import SwitchingFit

__all__ = [
    "DEFAULT_HEALTH_DEADLINES_S",
    "ApplyEvent",
    "ApplyFailedError",
    "ApplyInterrupted",
    "ApplyResult",
    "apply_profile",
    "plan_profile",
    "port_in_use",
    "resolved_weights",
]

# How long an engine may take to turn healthy: vLLM loading 70B from disk and capturing CUDA
# graphs takes many minutes on a cold page cache; TEI is quick.
DEFAULT_HEALTH_DEADLINES_S: Final[dict[str, float]] = {"vllm": 1800.0, "tei": 600.0}
LOG_LINES: Final = 40
# Several chat models, every one asleep (`_awake_engine`): apply leaves them so.
ALL_ASLEEP: Final = ""

Step = Literal[
    "recover", "plan", "preflight", "pull", "set-aside", "create", "start", "wait", "healthy",
    "sleep", "wake", "remove", "rollback", "handover", "done",
]  # fmt: skip


@dataclass(frozen=True)
class ApplyEvent:
    """One step of an apply, for progress displays (CLI on stderr, the TUI's Deploy screen)."""

    step: Step
    message: str
    role: str | None = None
    pull: PullProgress | None = None


Progress = Callable[[ApplyEvent], None]


def _quiet(_: ApplyEvent) -> None:
    return None


def _tolerant(progress: Progress) -> Progress:
    """A display that cannot be written (the SSH session behind SIGHUP is gone: EIO, EPIPE)
    must never stop an apply or its rollback half-way."""

    def report(event: ApplyEvent) -> None:
        with contextlib.suppress(OSError):
            progress(event)

    return report


class ApplyInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP ended an apply; what it had changed was rolled back."""


class _Interrupts(SignalGuard):
    """The signals that end an apply (`runtime.interrupts`).

    Before anything changes they raise at once. While containers change (`deferred`), one is
    only noted, and `check` raises it at the next safe point (between Docker calls, in the health
    wait), so the rollback knows every container that exists. A second signal during the
    rollback is ignored: the rollback finishes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._deferring = False

    def _handle(self, signum: int, _frame: object) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum).name
        if not self._deferring:
            raise ApplyInterrupted(self.received)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def stopping(self) -> bool:
        return self.received is not None

    def check(self) -> None:
        if self.received is not None:
            raise ApplyInterrupted(self.received)


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    applied: bool  # False: nothing to do, or the confirmation was declined
    containers: tuple[ObservedContainer, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "plan": self.plan.to_json(),
            "containers": [
                c.model_dump(mode="json", exclude={"spec_json"}) for c in self.containers
            ],
        }


# ------------------------------------------------------------------------------------ diagnosis


class ApplyFailedError(OperationFailedError):
    """An engine did not come up; the box was restored to what ran before."""

    def __init__(
        self,
        message: str,
        hint: str | None,
        *,
        role: str,
        log_tail: str,
        diagnosis: Diagnosis | None,
        restored: bool,
    ) -> None:
        super().__init__(message, hint)
        self.role = role
        self.log_tail = log_tail
        self.diagnosis = diagnosis
        self.restored = restored

    def render(self) -> str:
        text = super().render()
        if self.log_tail.strip():
            lines = "\n".join(f"    {line}" for line in self.log_tail.rstrip().splitlines())
            text += f"\n  last log lines of {self.role}:\n{lines}"
        return text


# ------------------------------------------------------------------------------------ preflight


def port_in_use(port: int) -> bool:
    """True when something on this host already listens on `port` (127.0.0.1 or 0.0.0.0)."""
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 - probing, not serving
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
                raise
    return False


def _starting(plan: Plan) -> list[ContainerSpec]:
    return [a.spec for a in plan.actions if a.kind in ("create", "replace") and a.spec is not None]


def _preflight(
    plan: Plan,
    profile: Profile,
    box: Box,
    engine: ContainerEngine,
    *,
    options: SpecOptions | None,
    ports_busy: Callable[[int], bool],
    progress: Progress,
    check_fit: bool = True,
) -> None:
    specs = _starting(plan)
    if not specs:
        return
    _check_gpus_visible(profile, box, options)
    progress(ApplyEvent("preflight", "checking ports, GPU, weights and images"))
    freed = {
        port
        for action in plan.actions
        if action.kind in ("replace", "remove") and action.container is not None
        for port in action.container.host_ports.values()
    }
    taken = [
        (spec.role, binding.host_port)
        for spec in specs
        for binding in spec.ports
        if binding.host_port not in freed and ports_busy(binding.host_port)
    ]
    if taken:
        listed = ", ".join(f"{port} ({role})" for role, port in taken)
        raise RefusedError(
            f"port already in use on this host: {listed}; nothing was changed",
            hint="stop what listens there (ss -ltnp shows it), or choose other ports in spec.ports",
        )
    _check_gpu_containers(specs, box)
    missing = sorted(
        {mount.source for spec in specs for mount in spec.mounts if not Path(mount.source).is_dir()}
    )
    if missing:
        raise EnvironmentNotReadyError(
            "weights are not on this box: " + ", ".join(missing) + "; nothing was changed",
            hint="download them first (appliance weights pull PROFILE), or import them on an "
            "air-gapped box (appliance weights import PATH --as owner/name)",
        )
    if check_fit:  # a deploy checked it before downloading the weights: once is enough
        check_fits(profile, box)
    for image in sorted({spec.image for spec in specs}):
        if engine.image_present(image):
            continue
        progress(ApplyEvent("pull", f"pulling {image}"))
        engine.pull(image, lambda step: progress(ApplyEvent("pull", step.status, pull=step)))


def _check_gpus_visible(profile: Profile, box: Box, options: SpecOptions | None) -> None:
    """`gpus: all` (or embeddings on the GPU) on a box where NVML sees no GPU would start the
    engines with no GPU request at all; named GPUs are refused the same way by the specs."""
    if (options or SpecOptions()).gpu_requests is False or box.gpus:
        return
    embeddings = profile.spec.embeddings
    on_gpu = profile.spec.engine.device == "gpu"
    wanted = ["spec.gpus is all"] if on_gpu and profile.spec.gpus == "all" else []
    if profile.spec.embeddings_enabled and embeddings is not None and embeddings.device == "gpu":
        wanted.append("spec.embeddings.device is gpu")
    if wanted:
        raise EnvironmentNotReadyError(
            f"{' and '.join(wanted)}, but this box has no GPU that NVML can see; "
            "nothing was changed",
            hint="run `appliance detect` for what is missing (driver, GPU), or plan for another "
            "box with --simulate NAME",
        )


def _check_gpu_containers(specs: Sequence[ContainerSpec], box: Box) -> None:
    if any(spec.gpu_device_ids is not None for spec in specs) and not (
        box.docker.gpu_containers_possible
    ):
        raise EnvironmentNotReadyError(
            "Docker on this box cannot give containers a GPU; nothing was changed",
            hint="install the NVIDIA Container Toolkit: apt-get install -y "
            "nvidia-container-toolkit && nvidia-ctk runtime configure --runtime=docker && "
            "systemctl restart docker",
        )


def check_box_can_run(profile: Profile, box: Box, options: SpecOptions | None = None) -> None:
    """What apply would refuse for reasons weights cannot fix: no GPU for containers, or a
    configuration vLLM would refuse. Run before a long download, so nobody waits an hour to
    learn the box could never have run it."""
    _check_gpus_visible(profile, box, options)
    _check_gpu_containers(container_specs(profile, box, options=options), box)
    check_fits(profile, box)


def check_fits(profile: Profile, box: Box) -> SwitchingFit | None:
    """vLLM's refusals that sizing predicts (`fit.fit_profile`): hard rules (TP vs heads,
    quantization vs GPU) and a KV cache too small for one max_model_len sequence, on the GPUs
    the profile gives vLLM with TEI's share taken out (or in RAM on the CPU target). `plan`
    and apply's preflight run it; the nearest settings that fit are profile keys."""
    from appliance.fit import fit_profile, fit_switching
    from appliance.local_model import resolve_profile_model

    switching = profile.spec.switching
    # Several chat models (spec.switching): each must fit alone, then all of them together.
    views = [profile.as_switched(m) for m in switching.models] if switching else []
    try:
        for view in (profile, *views):
            fit_profile(view, box, resolve_profile_model(view))
    except RefusedError as error:
        # SGLang profiles are sized by SGLang's own mem_fraction_static budget
        # (`fit.fit_sglang`, issue #21 point 3).
        engine = "SGLang" if profile.spec.engine.kind == "sglang" else "vLLM"
        error.message = f"{engine} would refuse this profile on this box: {error.message}"
        error.message += "; nothing was changed"
        error.args = (error.message,)
        raise
    if switching is None:
        return None
    models = [resolve_profile_model(view) for view in (profile, *views)]
    try:
        return fit_switching(profile, box, models)
    except RefusedError as error:
        error.message = f"the chat models do not fit together: {error.message}"
        error.message += "; nothing was changed"
        error.args = (error.message,)
        raise


# ------------------------------------------------------------------------------------ execution


@dataclass
class _Journal:
    """What execution has changed so far, so that rollback can undo exactly that."""

    set_aside: list[ObservedContainer] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    # A model update told the gateway (blue/green: the new engine serves; in place: hold):
    # rollback must tell it the old engine serves again.
    handed_over: bool = False
    old_chat_url: str | None = None


_NOT_RUNNING: Final = "-stopped"


def _base_name(name: str) -> str:
    return name.split(SET_ASIDE_MARK, maxsplit=1)[0]


def _aside_name(container: ObservedContainer) -> str:
    """`<name>-previous-<id>`: the last good one; `…-stopped` when it was not running."""
    suffix = "" if container.state == "running" else _NOT_RUNNING
    return f"{_base_name(container.name)}{SET_ASIDE_MARK}{container.id[:12]}{suffix}"


def _set_aside(engine: ContainerEngine, container: ObservedContainer, journal: _Journal) -> None:
    aside = _aside_name(container)
    if container.name != aside:
        engine.rename(container.id, aside)
    journal.set_aside.append(container)
    engine.stop(container.id)


def _start_new(
    engine: ContainerEngine,
    spec: ContainerSpec,
    journal: _Journal,
    *,
    deadline_s: float,
    clock: BlockingClock | None,
    probe: Callable[[str], bool],
    progress: Progress,
    interrupts: _Interrupts,
    after_healthy: Callable[[ContainerSpec], None] | None = None,
) -> None:
    progress(ApplyEvent("create", f"creating {spec.name} ({spec.image})", spec.role))
    container_id = engine.create(spec)
    journal.created.append(container_id)
    interrupts.check()
    progress(ApplyEvent("start", f"starting {spec.name}", spec.role))
    engine.start(container_id)
    interrupts.check()
    progress(ApplyEvent("wait", f"waiting for {spec.name} to turn healthy", spec.role))
    outcome = wait_until_healthy(
        engine,
        container_id,
        spec.health_url,
        deadline_s=deadline_s,
        clock=clock,
        probe=probe,
        stop=interrupts.stopping,
    )
    if outcome.healthy:
        progress(ApplyEvent("healthy", f"{spec.name} is healthy", spec.role))
        if after_healthy is not None:
            after_healthy(spec)
        return
    interrupts.check()
    log_tail = engine.logs(container_id, tail=LOG_LINES)
    diagnosis = diagnose(log_tail, outcome)
    raise ApplyFailedError(
        f"{spec.role} ({spec.name}) did not turn healthy: {outcome.reason}"
        + (f" — {diagnosis.cause}" if diagnosis else ""),
        diagnosis.hint if diagnosis else f"see `appliance logs {spec.role}` after fixing",
        role=spec.role,
        log_tail=log_tail,
        diagnosis=diagnosis,
        restored=False,
    )


def _rollback(
    engine: ContainerEngine,
    journal: _Journal,
    *,
    clock: BlockingClock | None,
    probe: Callable[[str], bool],
    deadlines: dict[str, float],
    progress: Progress,
) -> list[str]:
    """Undo `journal`; returns the problems met on the way (empty: fully restored)."""
    problems: list[str] = []
    for container_id in reversed(journal.created):
        try:
            engine.remove(container_id)
        except ApplianceError as error:
            problems.append(error.message)
    for container in reversed(journal.set_aside):
        progress(ApplyEvent("rollback", f"restoring {container.name}", container.role))
        try:
            if container.name != _aside_name(container):
                engine.rename(container.id, container.name)
            if container.state != "running":
                continue
            engine.start(container.id)
            url = container.health_url
            outcome = wait_until_healthy(
                engine,
                container.id,
                url,
                deadline_s=deadlines.get(container.role, 600.0),
                clock=clock,
                probe=probe,
            )
            if not outcome.healthy:
                problems.append(f"{container.name} did not turn healthy again: {outcome.reason}")
        except ApplianceError as error:
            problems.append(f"{container.name}: {error.message}")
    return problems


@dataclass(frozen=True)
class GatewayHandover:
    """A model update's word to the running gateway (`gateway.rollout`): which chat engine
    serves, or that it is being replaced in place; then a bounded wait until the gateway's
    /health (`status`, None when no gateway answers: nothing to wait for) shows it took it up
    and the old engine's requests are through. A gateway that cannot be told never stops an
    apply: the update then goes on as before rollouts existed."""

    rollout_file: Path
    status: Callable[[], Mapping[str, Any] | None]
    drain_s: float = 300.0  # spec.gateway.update_drain_seconds
    poll_s: float = 0.05

    @classmethod
    def of(cls, profile: Profile) -> GatewayHandover:
        from appliance.gateway.config import gateway_base_url, gateway_state_dir, gateway_trust
        from appliance.gateway.rollout import ROLLOUT_FILE

        gateway = profile.spec.gateway
        url = gateway_base_url(profile)
        try:
            trust = gateway_trust(profile)
        except ApplianceError:
            trust = None  # an unreadable certificate: no gateway to wait for, as before

        def status() -> Mapping[str, Any] | None:
            if trust is None:
                return None
            import httpx  # here, not at the top: it costs 0.2 s of `appliance` start-up

            try:
                # The gateway is on this box, never behind the operator's HTTP proxy.
                answer = httpx.get(f"{url}/health", timeout=2.0, verify=trust, trust_env=False)
                body = answer.json()
            except (httpx.HTTPError, ValueError):
                return None
            return body if isinstance(body, dict) else None

        return cls(gateway_state_dir(profile) / ROLLOUT_FILE, status, gateway.update_drain_seconds)

    def tell(self, chat_upstream: str | None, *, updating: bool, progress: Progress) -> bool:
        from appliance.gateway.rollout import Rollout

        return self.write(Rollout(chat_upstream, updating), progress)

    def write(self, rollout: Rollout, progress: Progress) -> bool:
        """Write what the gateway follows; False (said) when it cannot be written."""
        from appliance.gateway.rollout import write_rollout

        try:
            write_rollout(self.rollout_file, rollout)
        except (OSError, ApplianceError) as error:
            progress(ApplyEvent("handover", f"could not tell the gateway: {error}", "vllm"))
            return False
        return True

    def wait(
        self,
        check: Callable[[Mapping[str, Any]], bool],
        clock: BlockingClock | None,
        *,
        left: str,
        progress: Progress,
    ) -> bool:
        """Until `check(rollout report)` holds, the gateway stops answering, or `drain_s`.

        Past the bound the old engine is stopped with requests still on it (the key `left`
        of the report counts them); apply says so, since their clients see them cut."""
        clock = clock or SystemClock()
        end = clock.monotonic() + self.drain_s
        while True:
            report = self.status()
            if report is None:
                return False
            rollout = report.get("rollout")
            if not isinstance(rollout, Mapping):
                return False  # not a gateway that follows rollouts: nothing to wait for
            if check(rollout):
                return True
            if clock.monotonic() >= end:
                progress(
                    ApplyEvent(
                        "handover",
                        f"{rollout.get(left)} request(s) still on the old chat engine after "
                        f"{self.drain_s:g} s (gateway.update_drain_seconds): stopping it ends "
                        "them",
                        "vllm",
                    )
                )
                return False
            clock.sleep(self.poll_s)


@dataclass
class SwitchedHandover:
    """A model update of several chat models, told to the running gateway (`gateway.rollout`):
    before anything changes, the models whose engines stop or sleep are held and switching
    pauses (no wake may take the memory a new engine starts in) until their requests are
    through; a blue/green engine takes its model over once healthy; at the end each model's
    engine URL is written and the gateway serves again (after a rollback, the URLs before)."""

    handover: GatewayHandover
    served: dict[str, str]  # container name -> served model name
    before: dict[str, str]  # served name -> its engine's OpenAI base URL before apply
    held: tuple[str, ...]
    progress: Progress
    upstreams: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        profile: Profile,
        plan: Plan,
        awake: str | None,
        handover: GatewayHandover,
        progress: Progress,
    ) -> SwitchedHandover | None:
        if profile.spec.switching is None:
            return None
        served = {name: e.served_name for name, e in chat_engines(profile).items()}
        chat = [a for a in plan.actions if a.name in served]
        starting = [a for a in chat if a.kind in ("create", "replace")]
        if not starting:
            return None
        before = {
            served[a.name]: url
            for a in chat
            if a.container is not None and (url := _old_chat_url(a.container)) is not None
        }
        held = [served[a.name] for a in starting if _is_update(a, a.name) and not a.beside]
        if any(not a.beside for a in starting):  # the awake kept engine sleeps meanwhile
            kept = [a.name for a in chat if a.kind == "keep"]
            held += [served[n] for n in kept if awake is None or n == awake]
        return cls(handover, served, before, tuple(held), progress, dict(before))

    def _write(self, *, paused: bool) -> bool:
        from appliance.gateway.rollout import Rollout

        held = self.held if paused else ()
        rollout = Rollout(upstreams=dict(self.upstreams), held=held, switching_paused=paused)
        return self.handover.write(rollout, self.progress)

    def pause(self, clock: BlockingClock | None) -> None:
        held = ", ".join(self.held) or "no model"
        self.progress(
            ApplyEvent("handover", f"the gateway holds {held} and wakes no model", "vllm")
        )
        if self._write(paused=True):
            self.handover.wait(
                lambda r: (
                    bool(r.get("switching_paused"))
                    and all(not _model_report(r, m).get("in_flight") for m in self.held)
                ),
                clock,
                left="in_flight",
                progress=self.progress,
            )

    def mover(self, container: str, clock: BlockingClock | None) -> Callable[[str], bool]:
        """Blue/green (`_replace_beside`): the model's requests and sleep/wake calls to the
        new engine at the URL given, then its requests on the old one through."""
        name = self.served[container]

        def move(url: str) -> bool:
            self.upstreams[name] = url
            if not self._write(paused=True):
                return False
            self.handover.wait(
                lambda r: (
                    _model_report(r, name).get("upstream") == url and not r.get("retired_in_flight")
                ),
                clock,
                left="retired_in_flight",
                progress=self.progress,
            )
            return True

        return move

    def release(self, plan: Plan) -> None:
        for action in plan.actions:
            if action.name in self.served and action.spec is not None and action.spec.ports:
                self.upstreams[self.served[action.name]] = _chat_url(action.spec)
        self.progress(ApplyEvent("handover", "the gateway serves every model again", "vllm"))
        self._write(paused=False)

    def restore(self) -> None:
        self.upstreams = dict(self.before)
        self._write(paused=False)


def _model_report(rollout: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    models = rollout.get("models")
    model = models.get(name) if isinstance(models, Mapping) else None
    return model if isinstance(model, Mapping) else {}


def _chat_url(spec: ContainerSpec) -> str:
    return f"http://127.0.0.1:{spec.ports[0].host_port}/v1"


def _old_chat_url(container: ObservedContainer) -> str | None:
    ports = list(container.host_ports.values())
    return f"http://127.0.0.1:{ports[0]}/v1" if ports else None


def _replace_beside(
    action: Action,
    engine: ContainerEngine,
    journal: _Journal,
    handover: GatewayHandover,
    *,
    start: Callable[[ContainerSpec], None],
    clock: BlockingClock | None,
    progress: Progress,
    move: Callable[[str], bool] | None = None,
) -> None:
    """Blue/green: the old engine keeps serving (set aside under its new name) while the new
    one starts on the other port; once it is healthy the gateway moves to it, the old one's
    requests finish, and only then is the old one stopped. `move(url)` tells the gateway and
    waits (default: spec.model's engine, `GatewayHandover`); True when the gateway was told
    and a rollback must tell it again."""
    old, spec = action.container, action.spec
    assert old is not None
    assert spec is not None
    aside = _aside_name(old)
    if old.name != aside:
        engine.rename(old.id, aside)
    journal.set_aside.append(old)
    start(spec)
    url = _chat_url(spec)
    progress(ApplyEvent("handover", f"moving the gateway to {spec.name} ({url})", spec.role))
    if move is not None:
        move(url)
    else:
        journal.handed_over = handover.tell(url, updating=False, progress=progress)
        if journal.handed_over:
            handover.wait(
                lambda r: r.get("chat_upstream") == url and not r.get("retired_in_flight"),
                clock,
                left="retired_in_flight",
                progress=progress,
            )
    progress(ApplyEvent("set-aside", f"stopping {aside}", action.role))
    engine.stop(old.id)


def _is_update(action: Action, chat: str | None) -> bool:
    """Whether `action` replaces spec.model's running chat engine (a model update)."""
    return (
        action.kind == "replace"
        and action.name == chat
        and action.container is not None
        and action.container.state == "running"
    )


def _hold_for_update(
    handover: GatewayHandover, journal: _Journal, clock: BlockingClock | None, progress: Progress
) -> None:
    """In place: the gateway holds chat requests (or sends them remote) before the old engine
    stops, and its requests in flight finish first (up to the drain bound)."""
    progress(ApplyEvent("handover", "the gateway holds chat requests", "vllm"))
    journal.handed_over = handover.tell(journal.old_chat_url, updating=True, progress=progress)
    if journal.handed_over:
        handover.wait(
            lambda r: bool(r.get("updating")) and not r.get("in_flight"),
            clock,
            left="in_flight",
            progress=progress,
        )


def _execute(
    plan: Plan,
    engine: ContainerEngine,
    *,
    deadlines: dict[str, float],
    clock: BlockingClock | None,
    probe: Callable[[str], bool],
    progress: Progress,
    interrupts: _Interrupts,
    after_healthy: Callable[[ContainerSpec], None] | None = None,
    handover: GatewayHandover | None = None,
    chat: str | None = None,
    switched: SwitchedHandover | None = None,
) -> None:
    """`chat`: the name of spec.model's chat container, whose replacement is a model update
    the gateway is told about through `handover`; `switched`: the same for several chat
    models (a blue/green engine's model moves through it)."""
    journal = _Journal()
    order: Sequence[Action] = [a for a in plan.actions if a.kind == "remove"] + [
        a for a in plan.actions if a.kind in ("replace", "create")
    ]

    def start(spec: ContainerSpec) -> None:
        _start_new(
            engine,
            spec,
            journal,
            deadline_s=deadlines.get(spec.role, 600.0),
            clock=clock,
            probe=probe,
            progress=progress,
            interrupts=interrupts,
            after_healthy=after_healthy,
        )

    try:
        for action in order:
            interrupts.check()
            if action.beside:  # a model update, blue/green (`_planned`)
                assert action.container is not None
                assert handover is not None
                journal.old_chat_url = _old_chat_url(action.container)
                _replace_beside(
                    action,
                    engine,
                    journal,
                    handover,
                    start=start,
                    clock=clock,
                    progress=progress,
                    move=switched.mover(action.name, clock) if switched is not None else None,
                )
                continue
            update = handover if _is_update(action, chat) else None
            if update is not None:
                assert action.container is not None
                journal.old_chat_url = _old_chat_url(action.container)
                _hold_for_update(update, journal, clock, progress)
            if action.container is not None:
                progress(ApplyEvent("set-aside", f"stopping {action.container.name}", action.role))
                _set_aside(engine, action.container, journal)
                interrupts.check()
            if action.spec is not None:
                start(action.spec)
                if update is not None and journal.handed_over:
                    update.tell(_chat_url(action.spec), updating=False, progress=progress)
    except BaseException as error:
        problems = _rollback(
            engine, journal, clock=clock, probe=probe, deadlines=deadlines, progress=progress
        )
        if handover is not None and journal.handed_over:  # the old engine serves again
            handover.tell(journal.old_chat_url, updating=False, progress=progress)
        restored = not problems
        note = (
            "the previous containers run again"
            if restored
            else "rolling back failed too: " + "; ".join(problems)
        )
        if isinstance(error, ApplyFailedError):
            raise ApplyFailedError(
                f"{error.message}; {note}",
                error.hint,
                role=error.role,
                log_tail=error.log_tail,
                diagnosis=error.diagnosis,
                restored=restored,
            ) from error
        if isinstance(error, ApplianceError):
            error.message = f"{error.message}; {note}"
            error.args = (error.message,)
        if isinstance(error, ApplyInterrupted):
            raise ApplyInterrupted(f"{error}: apply interrupted; {note}") from None
        raise
    for container in journal.set_aside:
        progress(ApplyEvent("remove", f"removing {_aside_name(container)}", container.role))
        engine.remove(container.id)


# ------------------------------------------------------------------------------------ the faces


def resolved_weights(path: Path) -> Path:
    """The directory a revision's weights path leads to: the weights module keeps
    `<org>/<name>/<revision>` as a link to `<sha>/`, and the engines mount the commit itself."""
    return path.resolve() if path.exists() else path


def plan_profile(
    profile: Profile,
    box: Box,
    engine: ContainerEngine | None,
    *,
    options: SpecOptions | None = None,
    catalog: Catalog | None = None,
    sleeping: Callable[[str], bool | None] = engine_sleeping,
) -> Plan:
    """`appliance plan PROFILE`: what apply would do now. Changes nothing.

    First the fit check apply's preflight runs (`check_fits`: RefusedError, exit 4, with the
    nearest settings), so nobody learns after a 70 GB download that vLLM would refuse. With no
    engine, the plan is against a box where nothing runs yet (a simulated box on a laptop).
    `sleeping(origin)`: an engine's /is_sleeping (spec.switching: which one is awake).
    """
    together = check_fits(profile, box)
    observed = engine.managed_containers() if engine is not None else []
    awake = _awake_engine(profile, observed, sleeping)
    plan = _planned(profile, box, catalog, options, observed, awake=awake)
    if together is not None and together.sleep_reason:
        plan = replace(plan, notes=(*plan.notes, together.sleep_reason))
    return plan


def _desired(
    profile: Profile,
    box: Box,
    catalog: Catalog | None,
    options: SpecOptions | None,
    observed: Sequence[ObservedContainer] = (),
) -> tuple[ContainerSpec, ...]:
    """The containers the profile asks for, mounting the weights' commit directories. A chat
    engine keeps the port it runs on (its own or, after a blue/green update,
    spec.ports.vllm_update): the two take turns."""
    specs = container_specs(
        profile, box, catalog=catalog, options=options, weights_source=resolved_weights
    )
    spare = profile.spec.ports.vllm_update
    moved = {
        c.name
        for c in observed
        if c.name in chat_engines(profile) and spare in c.host_ports.values()
    }
    return tuple(with_host_port(s, spare) if s.name in moved else s for s in specs)


@dataclass(frozen=True)
class ChatEngine:
    """One chat engine the profile runs: spec.model's, or (spec.switching) a further model's,
    with the profile as that engine sees it (`Profile.as_switched`)."""

    container: str
    view: Profile
    service: str  # the monitor's name for it: "vllm", "vllm-2", … (`specs.service_name`)

    @property
    def port(self) -> int:
        """Its own host port (spec.ports.vllm, or the switched model's port)."""
        return self.view.spec.ports.vllm

    @property
    def served_name(self) -> str:
        return self.view.spec.model.served_name


def chat_engines(profile: Profile) -> dict[str, ChatEngine]:
    """The profile's chat engines by container name, spec.model's first."""
    name = profile.metadata.name
    main = container_name(name, "vllm")
    engines = {main: ChatEngine(main, profile, "vllm")}
    switching = profile.spec.switching
    for n, model in enumerate(switching.models if switching else (), start=2):
        container = container_name(name, f"vllm-{n}")
        engines[container] = ChatEngine(container, profile.as_switched(model), f"vllm-{n}")
    return engines


def _origin(container: ObservedContainer) -> str | None:
    ports = list(container.host_ports.values())
    return f"http://127.0.0.1:{ports[0]}" if ports else None


def _awake_engine(
    profile: Profile,
    observed: Sequence[ObservedContainer],
    sleeping: Callable[[str], bool | None],
) -> str | None:
    """Several chat models: the container whose engine answers that it is awake; ALL_ASLEEP
    when every running one answers that it sleeps (an idle TTL put the last one to sleep);
    None when that is not known (none runs, one does not answer, one chat model)."""
    if profile.spec.switching is None:
        return None
    engines = chat_engines(profile)
    answers = []
    for container in observed:
        origin = _origin(container)
        if container.name in engines and container.state == "running" and origin is not None:
            answer = sleeping(origin)
            if answer is False:
                return container.name
            answers.append(answer)
    return ALL_ASLEEP if answers and all(answers) else None


def with_host_port(spec: ContainerSpec, port: int) -> ContainerSpec:
    """`spec` published on another host port (its health URL with it)."""
    if not spec.ports or spec.ports[0].host_port == port:
        return spec
    old = spec.ports[0].host_port
    bindings = (spec.ports[0].model_copy(update={"host_port": port}), *spec.ports[1:])
    health = spec.health_url.replace(f":{old}/", f":{port}/", 1) if spec.health_url else None
    return spec.model_copy(update={"ports": bindings, "health_url": health})


def _planned(
    profile: Profile,
    box: Box,
    catalog: Catalog | None,
    options: SpecOptions | None,
    observed: Sequence[ObservedContainer],
    *,
    awake: str | None = None,
) -> Plan:
    """The plan, with a model update's way decided (issue #19 point 3): when the running chat
    engine is replaced and the new one fits beside it, it starts on the other chat port and
    the gateway moves to it once healthy (blue/green); otherwise the plan says how the gateway
    serves the gap. `awake`: spec.switching's awake engine (`_switched_updates`)."""
    plan = make_plan(_desired(profile, box, catalog, options, observed), observed)
    if profile.spec.switching is not None:
        return _switched_updates(plan, profile, box, observed, awake)
    main = container_name(profile.metadata.name, "vllm")
    index = next(
        (
            i
            for i, a in enumerate(plan.actions)
            if a.kind == "replace"
            and a.name == main
            and a.container is not None
            and a.container.state == "running"
            and a.spec is not None
        ),
        None,
    )
    if index is None:
        return plan
    action = plan.actions[index]
    assert action.container is not None
    assert action.spec is not None
    from appliance.fit import fits_beside
    from appliance.runtime.plan import utilization_of

    old_utilization = utilization_of(action.container)
    fits, why = (
        fits_beside(profile, box, old_utilization)
        if old_utilization is not None
        else (False, "the running engine's memory share is not known")
    )
    ports = profile.spec.ports
    if fits:
        running = set(action.container.host_ports.values())
        # The port it does not run on; the profile's own when it runs on neither (the
        # profile moved spec.ports.vllm).
        other = ports.vllm_update if ports.vllm in running else ports.vllm
        spec = with_host_port(action.spec, other)
        beside = replace(action, spec=spec, beside=True)
        actions = (*plan.actions[:index], beside, *plan.actions[index + 1 :])
        note = (
            f"model update without an outage: the new chat engine starts on port {other} "
            f"beside the old one ({why}); the gateway moves to it once healthy, then the old "
            "one stops"
        )
        return replace(plan, actions=actions, notes=(*plan.notes, note))
    note = (
        f"model update in place ({why}): the old chat engine stops before the new one starts; "
        f"meanwhile the gateway {_gap(profile, 'chat requests')}"
    )
    return replace(plan, notes=(*plan.notes, note))


def _gap(profile: Profile, requests: str) -> str:
    """What the gateway does with `requests` while their engine cannot answer."""
    if profile.spec.gateway.fallback.remote is not None:
        return (
            f"sends {requests} to the remote API while fallback is auto or always, else holds "
            "them (bounded, 503 with Retry-After beyond)"
        )
    return f"holds {requests} (bounded, 503 with Retry-After beyond)"


def _switched_updates(
    plan: Plan,
    profile: Profile,
    box: Box,
    observed: Sequence[ObservedContainer],
    awake: str | None,
) -> Plan:
    """Several chat models (spec.switching): how each replaced running engine's clients get
    through it. The awake one goes blue/green on spec.ports.vllm_update when the new engine
    fits beside it with what the sleeping ones keep, the spare port is free and no other chat
    engine starts in place; else in place, the gateway holding (or sending remote) that model.
    A sleeping one is replaced in place: its clients wait for a wake later, and the awake one
    sleeps while the new engine starts (vLLM takes its whole budget when it starts). The
    gateway makes no switch until apply is done (`gateway.rollout`)."""
    engines = chat_engines(profile)
    replaced = [
        a
        for a in plan.actions
        if a.kind == "replace"
        and a.name in engines
        and a.container is not None
        and a.container.state == "running"
        and a.spec is not None
    ]
    if not replaced:
        return plan
    starting = [
        a.name for a in plan.actions if a.kind in ("create", "replace") and a.name in engines
    ]
    kept_awake = next((a.name for a in plan.actions if a.kind == "keep" and a.name == awake), None)
    actions, notes = list(plan.actions), list(plan.notes)
    for action in replaced:
        assert action.container is not None
        assert action.spec is not None
        served = engines[action.name].served_name
        requests = f"{served}'s requests"
        if action.name != awake:
            note = (
                f"{served} is asleep: its engine is replaced in place and meanwhile the gateway "
                f"{_gap(profile, requests)}; the next request for {served} waits for the new "
                "engine to wake"
            )
            if kept_awake is not None:
                other = engines[kept_awake].served_name
                note += (
                    f"; {other}, awake, sleeps while the new engine starts (vLLM takes its whole "
                    f"gpu_memory_utilization when it starts) and the gateway "
                    f"{_gap(profile, 'its requests')} until it is awake again"
                )
            notes.append(note)
            continue
        way = _beside_way(
            action,
            engines[action.name],
            profile=profile,
            box=box,
            observed=observed,
            starting=starting,
        )
        if isinstance(way, Action):
            actions[actions.index(action)] = way
            assert way.spec is not None
            notes.append(
                f"{served} is awake: its update runs without an outage: the new engine starts "
                f"on port {way.spec.ports[0].host_port} beside the old one ({way.reason}); the "
                f"gateway moves {served} to it once healthy, then the old one stops"
            )
            continue
        notes.append(
            f"{served} is awake: its update is in place ({way}): the old engine stops before "
            f"the new one starts; meanwhile the gateway {_gap(profile, requests)}, and no "
            "other model is woken until it is done"
        )
    return replace(plan, actions=tuple(actions), notes=tuple(notes))


def _beside_way(
    action: Action,
    chat: ChatEngine,
    *,
    profile: Profile,
    box: Box,
    observed: Sequence[ObservedContainer],
    starting: Sequence[str],
) -> Action | str:
    """The awake switched engine's replacement started beside it (its reason says why it
    fits), or why it cannot be."""
    from appliance.fit import fits_beside, sleeping_residuals
    from appliance.runtime.plan import utilization_of

    assert action.container is not None
    assert action.spec is not None
    old_utilization = utilization_of(action.container)
    if old_utilization is None:
        return "the running engine's memory share is not known"
    from appliance.local_model import resolve_profile_model

    views = [e.view for e in chat_engines(profile).values()]
    residuals = sleeping_residuals(profile, box, [resolve_profile_model(v) for v in views])
    asleep = [b for name, b in residuals.items() if name != chat.served_name]
    fits, why = fits_beside(chat.view, box, old_utilization, asleep)
    if not fits:
        return why
    spare = profile.spec.ports.vllm_update
    other = chat.port if spare in action.container.host_ports.values() else spare
    holder = next(
        (c.name for c in observed if c.name != action.name and other in c.host_ports.values()),
        None,
    )
    if holder is not None:
        return f"port {other} is taken by {holder}"
    if len(starting) > 1:
        return "another chat engine starts in place in the same apply"
    spec = with_host_port(action.spec, other)
    return replace(action, spec=spec, beside=True, reason=why)


def apply_profile(
    profile: Profile,
    box: Box,
    engine: ContainerEngine,
    *,
    options: SpecOptions | None = None,
    catalog: Catalog | None = None,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Progress | None = None,
    deadlines_s: dict[str, float] | None = None,
    clock: BlockingClock | None = None,
    probe: Callable[[str], bool] = http_ok,
    ports_busy: Callable[[int], bool] = port_in_use,
    lock_file: Path | None = None,
    fit_checked: bool = False,
    engine_call: Callable[[str, str, bytes], bool] = http_call,
    handover: GatewayHandover | None = None,
    sleeping: Callable[[str], bool | None] = engine_sleeping,
) -> ApplyResult:
    """`appliance apply PROFILE`: make the box run exactly this profile, or leave it as it was.

    `confirm` is asked with the plan (under the lock) before anything changes; returning False
    applies nothing. Raises `RefusedError` (another apply holds the lock, a port is taken),
    `EnvironmentNotReadyError` (no GPU in Docker, weights missing) before any change, and
    `ApplyFailedError` after a rollback. `fit_checked`: the caller already ran `check_fits` on
    this profile and box (a deploy does, before downloading), so preflight does not size again.
    `engine_call(method, url, body)` reaches the engines' sleep-mode routes (spec.switching).
    `handover` tells the running gateway about a model update (default: the profile's own
    gateway, through its rollout file and /health). `sleeping(origin)` reads an engine's
    /is_sleeping: which of several chat models is awake decides how its update runs.
    """
    catalog = catalog or load_catalog()
    report = _tolerant(progress or _quiet)
    deadlines = {**DEFAULT_HEALTH_DEADLINES_S, **(deadlines_s or {})}
    path = lock_file or engine_lock_path(engine.endpoint, profile.spec.storage.models_dir.parent)
    with _Interrupts() as interrupts, apply_lock(path, endpoint=engine.endpoint):
        with interrupts.deferred():
            _recover_set_aside(
                engine, deadlines=deadlines, clock=clock, probe=probe, progress=report
            )
        interrupts.check()
        current = engine.managed_containers()
        awake = _awake_engine(profile, current, sleeping)
        plan = _planned(profile, box, catalog, options, current, awake=awake)
        report(ApplyEvent("plan", plan.render()))
        if plan.is_noop:
            report(ApplyEvent("done", "no changes"))
            return ApplyResult(plan, applied=False, containers=tuple(current))
        if confirm is not None and not confirm(plan):
            return ApplyResult(plan, applied=False, containers=tuple(current))
        _preflight(
            plan,
            profile,
            box,
            engine,
            options=options,
            ports_busy=ports_busy,
            progress=report,
            check_fit=not fit_checked,
        )
        handover = handover or GatewayHandover.of(profile)
        main = container_name(profile.metadata.name, "vllm")
        turns = SleepTurns.of(
            profile, plan, engine_call, report, box.host.memory_total_bytes, awake=awake
        )
        switched = SwitchedHandover.of(profile, plan, awake, handover, report)
        with interrupts.deferred():
            if switched is not None:
                switched.pause(clock)
            if turns is not None:
                turns.before(plan)
            try:
                _execute(
                    plan,
                    engine,
                    deadlines=deadlines,
                    clock=clock,
                    probe=probe,
                    progress=report,
                    interrupts=interrupts,
                    after_healthy=turns.after_healthy if turns is not None else None,
                    handover=handover,
                    chat=None if turns is not None else main,
                    switched=switched,
                )
            except BaseException:
                if turns is not None:
                    turns.settle(plan)
                if switched is not None:
                    switched.restore()
                raise
            if turns is not None:
                turns.finish(plan)
            if switched is not None:
                switched.release(plan)
        report(ApplyEvent("done", "applied"))
        return ApplyResult(plan, applied=True, containers=tuple(engine.managed_containers()))


@dataclass(frozen=True)
class SleepTurns:
    """Apply's part in several chat models (spec.switching): they take turns on the same GPUs,
    and vLLM takes its whole gpu_memory_utilization when it starts, so a new engine can start
    in place only while the others sleep. Before a chat engine starts in place, the awake one
    the plan keeps goes to sleep (every kept one when none is known awake); each new engine
    goes to sleep once healthy, unless it is the last to start and the one to be awake at the
    end: the engine awake before apply (`awake`, read from /is_sleeping) or, when none was,
    spec.model's. That one is woken at the end if apply put it to sleep, so the gateway's
    switcher, which holds or pauses meanwhile (`SwitchedHandover`), stays right."""

    origins: dict[str, str]  # container name -> the engine's origin on 127.0.0.1, after apply
    main: str  # spec.model's container
    level: SleepLevel
    call: Callable[[str, str, bytes], bool]
    progress: Progress
    awake: str | None = None  # the engine awake before apply (ALL_ASLEEP: none), when known
    last: str | None = None  # the last chat engine apply starts
    slept: set[str] = field(default_factory=set)  # the ones this apply put to sleep

    @classmethod
    def of(
        cls,
        profile: Profile,
        plan: Plan,
        call: Callable[[str, str, bytes], bool],
        progress: Progress,
        host_memory_bytes: int | None = None,
        *,
        awake: str | None = None,
    ) -> SleepTurns | None:
        switching = profile.spec.switching
        if switching is None:
            return None
        engines = chat_engines(profile)
        origins = {name: f"http://127.0.0.1:{e.port}" for name, e in engines.items()}
        for action in plan.actions:
            if action.name in engines and action.spec is not None and action.spec.ports:
                origins[action.name] = f"http://127.0.0.1:{action.spec.ports[0].host_port}"
        starting = [a.name for a in plan.actions if a.kind in ("create", "replace")]
        last = next((n for n in reversed(starting) if n in engines), None)
        level = switching.sleep_level
        if level == "auto":
            from appliance.local_model import profile_sleep_level

            level = profile_sleep_level(profile, host_memory_bytes)[0]
        main = container_name(profile.metadata.name, "vllm")
        known = awake if awake in origins or awake == ALL_ASLEEP else None
        return cls(origins, main, level, call, progress, known, last)

    @property
    def ends_awake(self) -> str | None:
        """The engine awake after apply: the one awake before; none when all slept; else
        spec.model's."""
        if self.awake == ALL_ASLEEP:
            return None
        return self.awake if self.awake is not None else self.main

    def _starts_in_place(self, plan: Plan) -> bool:
        return any(
            a.kind in ("create", "replace") and a.name in self.origins and not a.beside
            for a in plan.actions
        )

    def _kept(self, plan: Plan) -> list[str]:
        return [a.name for a in plan.actions if a.kind == "keep" and a.name in self.origins]

    def _sleep(self, name: str, origin: str | None = None) -> bool:
        self.progress(ApplyEvent("sleep", f"putting {name} to sleep (level {self.level})", "vllm"))
        self.slept.add(name)
        return self.call("POST", f"{origin or self.origins[name]}/sleep?level={self.level}", b"")

    def before(self, plan: Plan) -> None:
        """Free the GPUs for the engines about to start in place: the awake kept one sleeps
        (best effort: one that does not answer is reported, and a new engine that then cannot
        start rolls the apply back)."""
        if not self._starts_in_place(plan):
            return
        for name in self._kept(plan):
            if self.awake is not None and name != self.awake:
                continue  # asleep already
            if not self._sleep(name):
                self.progress(ApplyEvent("sleep", f"{name} did not go to sleep", "vllm"))

    def after_healthy(self, spec: ContainerSpec) -> None:
        if spec.name not in self.origins:
            return
        if spec.name == self.ends_awake and spec.name == self.last:
            return
        if not self._sleep(spec.name):
            raise ApplyFailedError(
                f"{spec.name} started but did not go to sleep, so the next chat engine would "
                "find its GPU memory taken",
                f"see `appliance logs vllm` and {self.origins[spec.name]}/is_sleeping",
                role="vllm",
                log_tail="",
                diagnosis=None,
                restored=False,  # `_execute` rolls back and says whether it could
            )

    def finish(self, plan: Plan) -> None:
        """The engine to be awake at the end woken with vLLM's sequence, when this apply put
        it to sleep."""
        del plan  # the states apply changed are in `slept`
        name = self.ends_awake
        if name is not None and name in self.slept:
            self._wake(name, self.origins[name])

    def _wake(self, name: str, origin: str) -> None:
        self.progress(ApplyEvent("wake", f"waking {name}", "vllm"))
        for call in wake_calls(self.level):
            if not self.call(call.method.decode(), origin + call.path.decode(), call.body):
                self.progress(ApplyEvent("wake", f"{name} did not wake", "vllm"))
                return

    def settle(self, plan: Plan) -> None:
        """After a rollback: the engines as they were, so the gateway's switcher is right
        again. A restored engine that was replaced in place starts afresh, awake: it sleeps
        again unless it was the awake one; the awake one, put to sleep for the new engine,
        wakes (best effort: apply is failing already)."""
        if self.awake is None:
            return
        awake_origin = self.origins.get(self.awake)
        for action in plan.actions:
            old = action.container
            if action.name not in self.origins or old is None or old.state != "running":
                continue
            origin = _origin(old)
            if action.kind != "replace" or action.beside or origin is None:
                continue
            if action.name == self.awake:
                awake_origin = origin
                self.slept.discard(action.name)  # restarted awake
            else:
                self._sleep(action.name, origin)
        if self.awake in self.slept and awake_origin is not None:
            self._wake(self.awake, awake_origin)


def _answers_healthy(container: ObservedContainer, probe: Callable[[str], bool]) -> bool:
    if container.state != "running":
        return False
    url = container.health_url
    return probe(url) if url is not None else container.health == "healthy"


def _recover_set_aside(
    engine: ContainerEngine,
    *,
    deadlines: dict[str, float],
    clock: BlockingClock | None,
    probe: Callable[[str], bool],
    progress: Progress,
) -> None:
    """Undo what an apply that was killed (SIGKILL, power cut) left half-done, before planning.

    A set-aside container is the last good one. Its replacement, when there is one, is kept only
    if it answers healthy now (then the set-aside one is the extra copy the plan removes);
    otherwise the replacement is removed and the set-aside container gets its name back, and is
    started again when it was running. The plan then starts from what ran before the
    interrupted apply, as a rollback would have left it.
    """
    for aside in [c for c in engine.managed_containers() if c.set_aside]:
        base = _base_name(aside.name)
        current = next((c for c in engine.managed_containers() if c.name == base), None)
        if current is not None and _answers_healthy(current, probe):
            continue
        progress(
            ApplyEvent(
                "recover",
                f"restoring {base}: an apply that did not finish left it set aside as "
                f"{aside.name}" + (f" and {base} is not healthy" if current else ""),
                aside.role,
            )
        )
        if current is not None:
            engine.remove(current.id)
        engine.rename(aside.id, base)
        if aside.name.endswith(_NOT_RUNNING):
            continue
        if aside.state != "running":
            engine.start(aside.id)
        outcome = wait_until_healthy(
            engine,
            aside.id,
            aside.health_url,
            deadline_s=deadlines.get(aside.role, 600.0),
            clock=clock,
            probe=probe,
        )
        if not outcome.healthy:
            progress(ApplyEvent("recover", f"{base} did not turn healthy: {outcome.reason}"))
