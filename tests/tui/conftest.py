"""Services for the TUI tests: the core's simulated box and samplers on a fixed clock, and fakes
for the gateway and the logs, so every picture is the same on every run."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.clock import ManualClock
from appliance.errors import BadInputError
from appliance.gateway.keys import CreatedKey, KeyInfo, Scope
from appliance.hardware import detect_box
from appliance.hardware.box import Box, Finding
from appliance.monitor.monitor import Monitor
from appliance.monitor.samplers import Endpoint, EndpointReading, EndpointSampler, SamplerSet
from appliance.monitor.scrape import MODEL_WAKES_KEY, SwitchedModelReading
from appliance.operations.plan import plan_from_nothing
from appliance.operations.status import simulated
from appliance.tui.services import (
    CostView,
    Services,
    core_recommend,
)
from appliance.vocabulary import EngineKind

MONITOR_TICKS = 40


def fake_deploy(fail: bool = False):  # type: ignore[no-untyped-def]
    """A deployer that reports like the real one (bytes, image pull, steps) and finishes at once."""
    from appliance.runtime.apply import ApplyEvent, ApplyFailedError, ApplyResult
    from appliance.runtime.diagnosis import Diagnosis
    from appliance.runtime.engine import PullProgress
    from appliance.weights import DownloadProgress

    def deploy(profile, box, report, cancel, confirm, *, source=None):  # type: ignore[no-untyped-def]
        from appliance.operations.deploy import Deployment
        from appliance.runtime.plan import make_plan
        from appliance.runtime.specs import container_specs

        plan = make_plan(container_specs(profile, box), [])
        assert confirm(plan)
        repo = profile.spec.model.repo
        total = 19_327_352_832
        for done in (0, total // 2, total):
            report(
                DownloadProgress(
                    repo,
                    "0" * 40,
                    "download",
                    "model.safetensors",
                    1 if done == total else 0,
                    4,
                    done,
                    total,
                    104_857_600.0,
                    (total - done) / 104_857_600,
                )
            )
        image = "vllm/vllm-openai:v0.32.0"
        report(ApplyEvent("pull", f"pulling {image}"))
        report(
            ApplyEvent(
                "pull",
                "Downloading",
                pull=PullProgress(image, "Downloading", 6_000_000_000, 8_000_000_000),
            )
        )
        for action in plan.actions:
            assert action.spec is not None
            report(
                ApplyEvent("create", f"creating {action.name} ({action.spec.image})", action.role)
            )
            report(ApplyEvent("start", f"starting {action.name}", action.role))
            report(ApplyEvent("wait", f"waiting for {action.name} to turn healthy", action.role))
            if fail:
                report(ApplyEvent("rollback", "removing what was started", action.role))
                raise ApplyFailedError(
                    f"{action.name} did not turn healthy within 600 s",
                    "set spec.engine.max_model_len: 12000",
                    role=action.role,
                    log_tail="ValueError: The model's max seq len (16384) is larger than the "
                    "maximum number of tokens that can be stored in KV cache (12000).",
                    diagnosis=Diagnosis(
                        "max_model_len 16384 does not fit in the KV cache",
                        "set spec.engine.max_model_len: 12000",
                        12000,
                    ),
                    restored=True,
                )
            report(ApplyEvent("healthy", f"{action.name} is healthy", action.role))
        report(ApplyEvent("done", "applied"))
        return Deployment(ApplyResult(plan, applied=True), gateway_note=None)

    return deploy


@dataclass
class FakeModels:
    """Several chat models behind the gateway, in memory: the admin's orders change their
    states as the gateway would (one awake; a pinned one is neither slept nor switched from)."""

    states: dict[str, str] = field(
        default_factory=lambda: {"qwen-7b": "awake", "llama-8b": "asleep-1", "phi-4": "asleep-1"}
    )
    pinned: str | None = None
    wakes: dict[str, int] = field(default_factory=lambda: {"qwen-7b": 0, "llama-8b": 3, "phi-4": 1})
    orders: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, model: str, action: str) -> str:
        self.orders.append((model, action))
        if action == "unpin":
            self.pinned = None
        elif self.pinned not in (None, model) or (action == "sleep" and self.pinned == model):
            raise BadInputError(f"{action} {model}: {self.pinned} is pinned awake: unpin it first")
        elif action == "sleep":
            self.states[model] = "asleep-1"
        else:  # wake, pin
            for name, state in self.states.items():
                if state == "awake" and name != model:
                    self.states[name] = "asleep-1"
            if self.states[model] != "awake":
                self.wakes[model] += 1
            self.states[model] = "awake"
            self.pinned = model if action == "pin" else self.pinned
        return f"{action} {model}: done"

    def readings(self) -> tuple[SwitchedModelReading, ...]:
        return tuple(
            SwitchedModelReading(
                name,
                state,
                0.0,
                2.0 if state != "awake" and name == "phi-4" else 0.0,
                self.pinned == name,
                1.8 if self.wakes[name] else None,
            )
            for name, state in self.states.items()
        )


@dataclass
class SwitchingGatewaySampler:
    """The simulated gateway's readings, with the fake's switched chat models added."""

    inner: EndpointSampler
    models: FakeModels

    @property
    def endpoint(self) -> Endpoint:
        return self.inner.endpoint

    async def sample(self) -> EndpointReading:
        reading = await self.inner.sample()
        if reading.metrics is None:
            return reading
        counters = {
            **reading.metrics.counters,
            "model_switches": float(sum(self.models.wakes.values())),
            **{f"{MODEL_WAKES_KEY}{n}": float(w) for n, w in self.models.wakes.items()},
        }
        metrics = dataclasses.replace(
            reading.metrics, counters=counters, switched=self.models.readings()
        )
        return dataclasses.replace(reading, metrics=metrics)


def with_switched_models(samplers: SamplerSet, models: FakeModels) -> SamplerSet:
    services = tuple(
        SwitchingGatewaySampler(s, models) if s.endpoint.kind == "gateway" else s
        for s in samplers.services
    )
    return dataclasses.replace(samplers, services=services)


@dataclass
class FakeGateway:
    """Fallback and keys in memory, with fixed timestamps."""

    mode: str = "off"
    keys: list[KeyInfo] = field(
        default_factory=lambda: [
            KeyInfo("wiki-bot", "k_7f3a9c", Scope.API, "2026-01-05T09:12:00+00:00", None),
            KeyInfo("ci-runner", "k_02be41", Scope.API, "2026-01-09T17:40:00+00:00", 120),
        ]
    )
    switches: list[str] = field(default_factory=list)
    remote_configured: bool = True  # the profile names a remote API for auto and always

    def read(self) -> str:
        return self.mode

    def switch(self, mode: str) -> str:
        self.switches.append(mode)
        self.mode = mode
        return mode

    def list(self) -> Sequence[KeyInfo]:
        return tuple(self.keys)

    def create(self, name: str) -> CreatedKey:
        info = KeyInfo(name, "k_new000", Scope.API, "2026-01-10T08:00:00+00:00", None)
        self.keys.append(info)
        return CreatedKey(info, "sk-appliance-test-0123456789abcdef")

    def revoke(self, name: str) -> KeyInfo:
        info = next(key for key in self.keys if key.name == name)
        self.keys.remove(info)
        return info


@dataclass
class FakeLogs:
    """A few fixed lines, then silence until stopped (like a quiet container)."""

    lines: tuple[str, ...] = (
        "INFO 01-10 08:00:00 api_server.py:1024] vLLM API server version 0.32.0",
        "INFO 01-10 08:00:01 loggers.py:123] Avg prompt throughput: 912.0 tokens/s, 4 reqs",
        'INFO:     127.0.0.1:40005 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "WARNING 01-10 08:00:02 scheduler.py:88] Sequence group 17 is preempted by RECOMPUTE",
        "INFO 01-10 08:00:03 loggers.py:123] Avg prompt throughput: 1011.0 tokens/s, 9 reqs",
    )
    stopped: threading.Event = field(default_factory=threading.Event)

    def services(self) -> Sequence[str]:
        return ("vllm", "tei")

    def follow(self, service: str, stop: threading.Event) -> Iterator[str]:
        yield from (f"[{service}] {line}" for line in self.lines)
        stop.wait()
        self.stopped.set()


@dataclass
class FakeCost:
    """`appliance cost` on fixed usage (a day of a busy L40S), real report and rendering."""

    asked: list[str] = field(default_factory=list)

    def __call__(self, window: str) -> CostView:
        from appliance.cost import render_cost, resolve_price
        from appliance.economics import CostInputs, Usage, cost_report

        self.asked.append(window)
        hours = {"hour": 1, "day": 24, "7d": 168}[window]
        usage = Usage.model_validate(
            {
                "window": window,
                "observed_seconds": hours * 3600.0,
                "prompt_tokens": hours * 2.4e6,
                "generation_tokens": hours * 6.0e5,
                "engine_requests": hours * 900.0,
                "gpu_count": 1,
                "gpu_utilization_pct": 41.0,
                "gpu_power_w": 190.0,
                "gpu_power_limit_w": 350.0,
                "local_requests": hours * 880.0,
                "fallback_requests": hours * 20.0,
            }
        )
        inputs = CostInputs(
            gpu_cost_per_hour=1.1,
            api="openai/gpt-4o",
            api_input_per_million=2.5,
            api_output_per_million=10.0,
        )
        report = cost_report(usage, inputs, resolve_price(inputs))
        return CostView(window, render_cost(report))


def no_gpu_box() -> Box:
    """This machine as a laptop without an NVIDIA GPU or Docker would report it."""
    box = detect_box(simulate="l40s")
    return box.model_copy(
        update={
            "source": "nvml",
            "simulated": None,
            "gpus": (),
            "driver_version": None,
            "cuda_driver_version": None,
            "nvml_error": "NVML Shared Library Not Found",
            "findings": (
                Finding(
                    code="no-driver",
                    severity="error",
                    what="no NVIDIA driver found, and no NVIDIA GPU on the PCI bus",
                    fix="Run the appliance on the GPU box (to plan for one from here: "
                    "`appliance detect --simulate l40s`).",
                ),
            ),
        }
    )


def fake_services(
    tmp: Path | None = None,
    *,
    box: str = "l40s",
    no_gpu: bool = False,
    ticks: int | None = None,
    deploy: bool | str = False,
    engine: EngineKind = "vllm",
    models: FakeModels | None = None,
) -> Services:
    """The monitor ticks MONITOR_TICKS times at once, then holds (still "running"); `engine`
    is the chat server the simulated profile runs (it names the chat service)."""
    clock = ManualClock(hold_after=MONITOR_TICKS)

    def monitor() -> Monitor:
        samplers, used = simulated(
            box, clock=clock, seed=7, fallback_mode=gateway.read, engine=engine
        )
        if models is not None:
            samplers = with_switched_models(samplers, models)
        return Monitor(samplers, clock=used)

    gateway = FakeGateway()
    return Services(
        detect_box=(no_gpu_box if no_gpu else lambda: detect_box(simulate=box)),
        simulate=None if no_gpu else box,
        monitor=None if no_gpu else monitor,
        monitor_ticks=ticks,
        recommend=core_recommend,
        plan=plan_from_nothing,
        deploy=fake_deploy(fail=deploy == "fail") if deploy else None,
        deploy_disabled=None if (no_gpu or deploy) else f"the box is simulated ({box}).",
        fallback=None if no_gpu else gateway,
        models=models,
        keys=None if no_gpu else gateway,
        logs=FakeLogs(),
        cost=None if no_gpu else FakeCost(),
        profiles_dir=tmp or Path("/nonexistent"),
    )


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return fake_services(tmp_path)
