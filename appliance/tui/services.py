"""What the TUI needs from the world, handed to `ApplianceApp(services=...)` (STYLE 10).

The app never probes, never talks to Docker, NVML, the Hub or the gateway's files by itself: it
calls what a `Services` holds, in workers. `simulated_services` and `live_services` build the two
real sets (`--simulate NAME`, and this machine); the tests build their own with fixed clocks and
fixed data, so the pictures they snapshot are stable.

This module imports no Textual (it is plain data and core calls) and imports the heavier core
modules only inside the functions that use them.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from appliance.vocabulary import COST_WINDOWS, DEFAULT_MODELS_DIR, DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from appliance.benchmark import BenchRun
    from appliance.clock import AsyncClock
    from appliance.gateway.keys import CreatedKey, KeyInfo
    from appliance.hardware.box import Box
    from appliance.monitor.monitor import Monitor
    from appliance.operations.deploy import Deployment, GatewayInstaller
    from appliance.profile import Profile
    from appliance.recommend import Recommendation, Workload
    from appliance.runtime.plan import Plan
    from appliance.runtime.specs import SpecOptions

# One progress report of a deploy: a weights `DownloadProgress` or a runtime `ApplyEvent`. They
# come from worker threads; the Deploy screen posts them as messages.
DeployReport = Callable[[object], None]


class Deployer(Protocol):
    """Deploy a profile: weights, apply (after `confirm` with the plan), the gateway's unit.
    `source` is the profile's file when it has one (the gateway runs its text)."""

    def __call__(
        self,
        profile: Profile,
        box: Box,
        report: DeployReport,
        cancel: threading.Event,
        confirm: Callable[[Plan], bool],
        *,
        source: Path | None = None,
    ) -> Deployment: ...


NO_PROFILE_COST = (
    "No profile is applied here, so there is no recorded usage to price. Start "
    "`llm-appliance --profile PROFILE` on the box, or run `appliance cost PROFILE`."
)
NO_COST_INPUTS = (
    "The profile says nothing about what the box costs: add spec.cost to the profile (see "
    "docs/profile-reference.md) or run `appliance cost PROFILE --gpu-cost-per-hour X`."
)
SIMULATED_COST = (
    "Cost needs recorded usage from a real box: a simulated one records none. On the box, "
    "`llm-appliance --profile PROFILE` shows it here, and `appliance cost PROFILE` prints it."
)


@dataclass(frozen=True)
class CostView:
    """`appliance cost` over one window, as text: the report, or why there is none (`ok` False)."""

    window: str
    text: str
    ok: bool = True


CostSource = Callable[[str], CostView]


class FallbackControl(Protocol):
    """The gateway's fallback mode: read it, switch it (`appliance fallback` does the same)."""

    @property
    def remote_configured(self) -> bool:
        """The profile names a remote API: only then can the mode be auto or always."""
        ...

    def read(self) -> str: ...

    def switch(self, mode: str) -> str: ...


ModelOrders = Callable[[str, str], str]
"""Several chat models: `orders(model, action)` pins, unpins, sleeps or wakes one through the
gateway's admin route (`appliance.operations.models`); its outcome in one line, or an
`ApplianceError`."""


class KeyStore(Protocol):
    """The gateway's API keys (`appliance keys …`)."""

    def list(self) -> Sequence[KeyInfo]: ...

    def create(self, name: str) -> CreatedKey: ...

    def revoke(self, name: str) -> KeyInfo: ...


class LogSource(Protocol):
    """Container logs of the appliance's services (`appliance logs SERVICE --follow`)."""

    def services(self) -> Sequence[str]: ...

    def follow(self, service: str, stop: threading.Event) -> Iterator[str]:
        """Lines as they come until `stop` is set; must return soon after it is."""
        ...


@dataclass(frozen=True)
class GatewayFiles:
    """`FallbackControl` and `KeyStore` over the gateway's own state and keys files."""

    state_file: Path
    keys_file: Path
    remote_configured: bool
    default_mode: str = "off"

    def read(self) -> str:
        from appliance.gateway.state import read_fallback
        from appliance.vocabulary import FallbackMode

        return read_fallback(self.state_file, FallbackMode(self.default_mode)).mode.value

    def switch(self, mode: str) -> str:
        from appliance.gateway.state import set_fallback

        state = set_fallback(
            self.state_file, mode, remote_configured=self.remote_configured, changed_by="tui"
        )
        return state.mode.value

    def list(self) -> Sequence[KeyInfo]:
        from appliance.gateway.keys import list_keys

        return list_keys(self.keys_file)

    def create(self, name: str) -> CreatedKey:
        from appliance.gateway.keys import create_key

        return create_key(self.keys_file, name)

    def revoke(self, name: str) -> KeyInfo:
        from appliance.gateway.keys import revoke_key

        return revoke_key(self.keys_file, name)


@dataclass(frozen=True)
class DockerLogs:
    """`LogSource` over the Docker engine: the roles of the managed containers."""

    base_url: str | None = None

    def services(self) -> Sequence[str]:
        from appliance.operations.containers import running_services

        return running_services(self.base_url)

    def follow(self, service: str, stop: threading.Event) -> Iterator[str]:
        from appliance.operations.containers import follow_service_logs

        return follow_service_logs(service, stop, tail=200, base_url=self.base_url)


@dataclass(frozen=True)
class SimulatedLogs:
    """`LogSource` for `--simulate`: vLLM- and TEI-like lines, the same every run."""

    interval_s: float = 0.5
    limit: int | None = None  # stop after this many lines (tests)

    def services(self) -> Sequence[str]:
        return ("vllm", "tei")

    def follow(self, service: str, stop: threading.Event) -> Iterator[str]:
        count = 0
        while not stop.is_set() and (self.limit is None or count < self.limit):
            count += 1
            if service == "vllm":
                running, waiting = 4 + count % 7, count % 3
                prompt, generation = 900 + 37 * (count % 11), 210 + 13 * (count % 9)
                line = (
                    f"INFO [loggers.py:123] Engine 000: Avg prompt throughput: {prompt}.0 "
                    f"tokens/s, Avg generation throughput: {generation}.0 tokens/s, Running: "
                    f"{running} reqs, Waiting: {waiting} reqs, GPU KV cache usage: "
                    f"{30 + count % 40}.0%, Prefix cache hit rate: {55 + count % 20}.0%"
                )
                if count % 5 == 0:
                    request = '"POST /v1/chat/completions HTTP/1.1" 200 OK'
                    line = f"INFO:     127.0.0.1:{40000 + count} - {request}"
            else:
                line = (
                    f"INFO text_embeddings_router::http::server: embed request {count}: "
                    f"tokenization {1 + count % 3}ms, queue {count % 2}ms, "
                    f"inference {8 + count % 5}ms"
                )
            yield line
            if stop.wait(self.interval_s):
                return


@dataclass(frozen=True)
class Services:
    """Everything the app calls. Each callable may block: the app runs them in workers.

    - `detect_box`: the Box screen's probe (`appliance detect`).
    - `monitor`: a new `Monitor` over the deployed (or simulated) services; None when nothing
      is deployed, so the Monitor screen says how to deploy instead.
    - `monitor_ticks`: stop the monitor after this many ticks (tests); None runs until quit.
    - `recommend`: `appliance recommend` for a box and a workload.
    - `plan`: `appliance plan` for a profile on a box.
    - `deploy`: download the weights, then `appliance apply` with progress; `deploy_disabled`
      says why Deploy cannot apply here (a simulated box), or None.
    - `fallback`, `keys`, `logs`: the gateway and log views; None when not configured.
    - `models`: pin, sleep or wake one of several chat models; None when not configured.
    - `cost`: `appliance cost` for a window name (hour, day, 7d); None when no profile is
      applied, so the Monitor's cost view says so.
    - `profiles_dir`: where Recommend saves profiles.
    - `deployed_profile`, `profile`: the applied profile's file (`--profile`, or the one
      `apply` keeps) and its contents; the app opens on its Monitor and Deploy shows it.
    """

    detect_box: Callable[[], Box]
    simulate: str | None = None
    monitor: Callable[[], Monitor] | None = None
    monitor_ticks: int | None = None
    recommend: Callable[[Box, Workload], Recommendation] | None = None
    plan: Callable[[Profile, Box], Plan] | None = None
    deploy: Deployer | None = None
    deploy_disabled: str | None = None
    fallback: FallbackControl | None = None
    models: ModelOrders | None = None
    keys: KeyStore | None = None
    logs: LogSource | None = None
    cost: CostSource | None = None
    profiles_dir: Path = field(default_factory=Path.cwd)
    deployed_profile: Path | None = None
    profile: Profile | None = None
    docker_url: str | None = None  # the Docker engine the Monitor reads container states from
    last_bench: Callable[[], BenchRun | None] | None = None  # the newest kept `appliance bench`


def core_recommend(box: Box, workload: Workload) -> Recommendation:
    from appliance.recommend import recommend

    return recommend(box, workload)


def last_bench(state_dir: Path) -> Callable[[], BenchRun | None]:
    """The newest `appliance bench` run kept under `state_dir`, or None."""

    def read() -> BenchRun | None:
        from appliance.operations.calibration import kept_runs

        runs = kept_runs(state_dir)
        return max(runs, key=lambda run: run.started_at) if runs else None

    return read


def measured_recommend(state_dir: Path) -> Callable[[Box, Workload], Recommendation]:
    """The recommender with what `appliance bench` kept under `state_dir` (#18 point 4)."""

    def recommend(box: Box, workload: Workload) -> Recommendation:
        from appliance.operations.calibration import recommend_measured

        return recommend_measured(box, workload, state_dir=state_dir)

    return recommend


def docker_planner(
    base_url: str | None = None, *, options: SpecOptions | None = None
) -> Callable[[Profile, Box], Plan]:
    """`appliance plan PROFILE` against a Docker engine (this machine's by default)."""

    def planner(profile: Profile, box: Box) -> Plan:
        from appliance.operations.plan import plan

        return plan(profile, box, base_url=base_url, options=options).plan

    return planner


def docker_deployer(
    base_url: str | None = None,
    *,
    options: SpecOptions | None = None,
    deadlines_s: dict[str, float] | None = None,
    gateway: GatewayInstaller | None = None,
) -> Deployer:
    """The core's deploy (weights, apply under its lock, the gateway's unit) on a Docker engine,
    the one `appliance apply` runs. The profile's file, when Deploy shows one, is what the
    gateway runs."""

    def deploy(
        profile: Profile,
        box: Box,
        report: DeployReport,
        cancel: threading.Event,
        confirm: Callable[[Plan], bool],
        *,
        source: Path | None = None,
    ) -> Deployment:
        from appliance.operations.deploy import deploy_profile, install_gateway

        return deploy_profile(
            profile,
            box,
            base_url=base_url,
            source=source,
            confirm=confirm,
            progress=report,
            weights_progress=report,
            cancel=cancel,
            options=options,
            deadlines_s=deadlines_s,
            gateway=gateway or install_gateway,
        )

    return deploy


def simulated_services(
    name: str,
    *,
    profile_path: Path | None = None,
    clock: AsyncClock | None = None,
    seed: int = 0,
    state_dir: Path | None = None,
    profiles_dir: Path | None = None,
    monitor_ticks: int | None = None,
    log_interval_s: float = 0.5,
) -> Services:
    """`--simulate NAME|FILE`: a catalog box (or one another machine's `appliance detect --json`
    wrote), simulated engines, and a gateway state in a temp dir.

    With `profile_path` (`--profile`), the simulation is of that profile on that box: its model
    name, TEI only when it has embeddings, its alert thresholds, its fallback — and, when the
    profile cannot run there (sizing says it does not fit), nothing running and why.
    Raises `BadInputError` for a name the GPU catalog does not know or a file that is not a
    detect file of catalog GPUs, and `ProfileError` for a bad profile (before any screen opens).
    """
    from appliance.hardware import detect_box
    from appliance.hardware.simulate import catalog_name, resolve

    # A detect file gives the box; its catalog GPU drives the simulated engines.
    engines = catalog_name(name)
    resolve(engines)
    profile = None
    if profile_path is not None:
        from appliance.profile import load_profile

        profile = load_profile(profile_path)
    state = state_dir
    if state is None:
        state = Path(tempfile.mkdtemp(prefix="llm-appliance-sim-"))
        # Keys and the fallback mode of a simulated box are make-believe: gone with the process.
        atexit.register(shutil.rmtree, state, ignore_errors=True)

    def monitor() -> Monitor:
        from appliance.monitor.monitor import Monitor, MonitorConfig
        from appliance.operations.status import simulated

        if profile is None:
            samplers, used_clock = simulated(
                engines, clock=clock, seed=seed, fallback_mode=gateway.read
            )
            return Monitor(samplers, clock=used_clock)
        samplers, used_clock = simulated(
            engines,
            clock=clock,
            seed=seed,
            fallback_mode=gateway.read,
            embeddings=profile.spec.embeddings_enabled,
            model=profile.spec.model.served_name,
            not_running=why_not_running(profile, detect_box(simulate=name)),
            engine=profile.spec.engine.kind,
        )
        config = MonitorConfig.from_profile(profile)
        return Monitor(samplers, config=config, clock=used_clock)

    from appliance.operations.plan import plan_from_nothing

    remote = True if profile is None else _profile_gateway(profile).remote_configured
    gateway = GatewayFiles(state / "fallback.json", state / "keys.json", remote_configured=remote)
    return Services(
        detect_box=lambda: detect_box(simulate=name),
        simulate=name,
        monitor=monitor,
        monitor_ticks=monitor_ticks,
        recommend=measured_recommend(state),
        last_bench=last_bench(state),
        plan=plan_from_nothing,
        deploy_disabled=(
            f"the box is simulated ({name}): nothing here can run a GPU container. The plan "
            "below is what `appliance apply` would do on a real box of this kind, where "
            "nothing runs yet."
        ),
        fallback=gateway,
        keys=gateway,
        logs=SimulatedLogs(interval_s=log_interval_s),
        cost=lambda window: CostView(window, SIMULATED_COST, ok=False),
        profiles_dir=profiles_dir or Path.cwd(),
        deployed_profile=profile_path,
        profile=profile,
    )


def why_not_running(profile: Profile, box: Box) -> str | None:
    """Why `apply` would start nothing of `profile` on `box` (its refusal, e.g. sizing's "does
    not fit", with the nearest settings), or None when it would run."""
    from appliance.errors import ApplianceError
    from appliance.runtime.apply import check_box_can_run

    try:
        check_box_can_run(profile, box)
    except ApplianceError as error:
        reason = error.message.removesuffix("; nothing was changed")
        hint = f" → {error.hint}" if error.hint else ""
        return f"{reason}{hint}"
    return None


def live_services(
    profile_path: Path | None = None, *, profiles_dir: Path | None = None
) -> Services:
    """This machine. With the applied profile, the Monitor, fallback and keys come alive."""
    from appliance.hardware import detect_box

    profile = None
    if profile_path is not None:
        from appliance.profile import load_profile

        profile = load_profile(profile_path)
    # The disk that matters is the one the profile keeps its weights on.
    models_dir = DEFAULT_MODELS_DIR if profile is None else profile.spec.storage.models_dir
    state_dir = DEFAULT_STATE_DIR if profile is None else profile.spec.storage.state_dir
    services = Services(
        detect_box=lambda: detect_box(models_dir=models_dir),
        recommend=measured_recommend(state_dir),
        last_bench=last_bench(state_dir),
        plan=docker_planner(),
        deploy=docker_deployer(),
        logs=DockerLogs(),
        profiles_dir=profiles_dir or Path.cwd(),
    )
    if profile is None:
        return services
    applied = dataclasses.replace(services, deployed_profile=profile_path, profile=profile)
    return watching(applied, profile)


def watching(services: Services, profile: Profile) -> Services:
    """`services` with the Monitor, fallback, keys and cost of a deployed profile."""

    def make_monitor() -> Monitor:
        from appliance.monitor.monitor import Monitor, MonitorConfig
        from appliance.operations.status import DockerRuntime, profile_samplers

        runtime = DockerRuntime(profile.metadata.name, services.docker_url)
        samplers = profile_samplers(profile, runtime=runtime)
        return Monitor(samplers, config=MonitorConfig.from_profile(profile))

    def order_model(model: str, action: str) -> str:
        from appliance.operations.models import ModelControl

        return ModelControl.of(profile).order(model, action)

    gateway = _profile_gateway(profile)
    return dataclasses.replace(
        services,
        monitor=make_monitor,
        models=order_model if profile.spec.switching is not None else None,
        fallback=gateway,
        keys=gateway,
        cost=profile_cost(profile),
    )


def profile_cost(profile: Profile) -> CostSource:
    """`appliance cost PROFILE --window W` with the profile's own `spec.cost` (as the CLI does)."""

    def cost(window: str) -> CostView:
        from appliance.cost import api_for_profile, cost_for_window, cost_inputs_from, render_cost
        from appliance.errors import ApplianceError

        base = profile.spec.cost
        if base is None:
            return CostView(window, NO_COST_INPUTS, ok=False)
        if window not in COST_WINDOWS:
            return CostView(window, f"unknown window {window!r}", ok=False)
        try:
            inputs = cost_inputs_from(base, api=None if base.api else api_for_profile(profile))
            report = cost_for_window(
                profile.spec.storage.state_dir,
                inputs,
                window="hour" if window == "hour" else "day" if window == "day" else "7d",
            )
        except ApplianceError as error:
            return CostView(window, error.render(), ok=False)
        return CostView(window, render_cost(report))

    return cost


def _profile_gateway(profile: Profile) -> GatewayFiles:
    """The gateway's files where the gateway itself finds them (its config from the profile)."""
    from appliance.gateway.config import GatewayConfig

    config = GatewayConfig.from_profile(profile)
    return GatewayFiles(
        state_file=config.state_file,
        keys_file=config.keys_file,
        remote_configured=config.remote is not None,
        default_mode=config.default_fallback_mode.value,
    )
