"""Box: the GPUs, the host, Docker and the NVIDIA toolkit, and every finding with its fix.

It draws the `Box` that `appliance detect` prints. With no GPU and no simulation it says what is
missing and offers a simulated box (`s`), so the rest of the app can be explored from a laptop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from appliance.tui.screens.base import ApplianceScreen, this_screen
from appliance.units import EN_DASH as DASH
from appliance.units import gib

if TYPE_CHECKING:
    from appliance.hardware.box import Box, DockerInfo, Finding, GpuInfo, HostInfo


def simulated_boxes() -> tuple[tuple[str, str], ...]:
    """Every box `--simulate` knows, as (name, what it is): the README's examples first (the
    boxes most people plan for), then every other GPU of the catalog, one card each."""
    from appliance.catalog import load_catalog
    from appliance.hardware.simulate import EXAMPLES, resolve

    def what(name: str) -> str:
        count, spec = resolve(name)
        card = spec.name.removeprefix("NVIDIA ").removeprefix("GeForce ")
        text = f"{count} x {card} · {gib(spec.memory_total_bytes, 0)}"
        if count > 1:
            return f"{text} each · {'P2P' if spec.p2p_default else 'no P2P'}"
        return text

    examples = {resolve(name)[1].key for name in EXAMPLES if resolve(name)[0] == 1}
    names = [*EXAMPLES, *(gpu.key for gpu in load_catalog().gpus if gpu.key not in examples)]
    return tuple((name, what(name)) for name in names)


_SEVERITY_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
_SEVERITY_LABEL = {"error": "ERROR", "warning": "WARN", "info": "INFO"}


def gpu_table(gpus: tuple[GpuInfo, ...]) -> RenderableType:
    if not gpus:
        return Text("No NVIDIA GPU is visible.", style="bold red")
    table = Table(expand=True, box=None, padding=(0, 1), header_style="bold")
    for column in ("#", "GPU", "VRAM", "cc", "driver", "temp", "power", "util"):
        table.add_column(column, no_wrap=column != "GPU")
    for gpu in gpus:
        power = DASH if gpu.power_draw_w is None else f"{gpu.power_draw_w:.0f} W"
        if gpu.power_limit_w is not None:
            power += f" / {gpu.power_limit_w:.0f} W"
        table.add_row(
            str(gpu.index),
            gpu.name,
            gib(gpu.memory_total_bytes, 0),
            DASH if gpu.compute_capability is None else "{}.{}".format(*gpu.compute_capability),
            gpu.driver_version or DASH,
            DASH if gpu.temperature_c is None else f"{gpu.temperature_c} °C",
            power,
            DASH if gpu.utilization_gpu_pct is None else f"{gpu.utilization_gpu_pct} %",
        )
    return table


def host_table(host: HostInfo) -> RenderableType:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    cores = f"{host.cpu_physical_cores or '?'} cores / {host.cpu_logical_cores or '?'} threads"
    table.add_row("CPU", f"{host.cpu_model or '?'} ({cores})")
    table.add_row(
        "RAM",
        f"{gib(host.memory_total_bytes)} total, {gib(host.memory_available_bytes)} available",
    )
    table.add_row("OS", f"{host.os_name or '?'} · kernel {host.kernel or '?'}")
    table.add_row(
        "Disk",
        f"{gib(host.disk_free_bytes)} free of {gib(host.disk_total_bytes)} at {host.models_dir}",
    )
    return table


def docker_text(docker: DockerInfo) -> RenderableType:
    def mark(ok: bool) -> Text:
        return Text("✔ ", style="bold green") if ok else Text("✘ ", style="bold red")

    if docker.simulated:
        return Text.assemble(mark(True), "simulated engine; NVIDIA runtime assumed ready")
    if not docker.reachable:
        where = docker.base_url or "the default socket"
        return Text.assemble(mark(False), f"engine not reachable at {where} ({docker.problem})")
    lines = [
        Text.assemble(
            mark(True), f"engine {docker.version or '?'} (API {docker.api_version or '?'})"
        ),
        Text.assemble(
            mark(docker.gpu_containers_possible),
            "NVIDIA toolkit: "
            + ("containers can be given a GPU" if docker.gpu_containers_possible else "missing")
            + f" (runtime {'yes' if docker.nvidia_runtime else 'no'}, CDI "
            + f"{len(docker.cdi_devices)} device(s))",
        ),
    ]
    return Group(*lines)


def finding_text(finding: Finding) -> RenderableType:
    """Severity in its own column, so the finding and its fix line up beside it."""
    label = _SEVERITY_LABEL[finding.severity]
    body = Text(finding.what)
    if finding.fix:
        body.append("\nfix: ", style="bold")
        body.append(finding.fix)
    table = Table.grid(padding=(0, 1))
    table.add_column(width=5, no_wrap=True)
    table.add_column(ratio=1)
    table.add_row(Text(label, style=_SEVERITY_STYLE[finding.severity]), body)
    return table


def box_heading(box: Box) -> Text:
    if box.source == "simulated":
        text = Text.assemble(
            ("Simulated ", "bold reverse"),
            f" {box.simulated}: built from the GPU catalog, nothing here was probed",
        )
    elif box.source == "recorded":
        text = Text(f"Recorded NVML reading ({box.recording or 'unknown source'})")
    else:
        text = Text(f"This machine: {box.host.hostname}")
    if box.driver_version:
        text.append(
            f" · NVIDIA driver {box.driver_version} · CUDA {box.cuda_driver_version or '?'}"
        )
    elif box.nvml_error:
        text.append(f" · NVIDIA driver not available ({box.nvml_error})")
    return text


def verdict_text(box: Box) -> Text:
    blockers = box.serving_blockers()
    if not blockers:
        return Text("● Ready to serve", style="bold green")
    return Text(
        f"✘ Not ready to serve: {len(blockers)} blocker{'s' if len(blockers) > 1 else ''} below",
        style="bold red",
    )


class SimulatePicker(ModalScreen[str | None]):
    """Choose a simulated box; Escape keeps the current one."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("Simulate which box? Nothing on this machine is changed.", classes="title")
            yield OptionList(
                *(Option(f"{name:<11} {what}", id=name) for name, what in simulated_boxes())
            )

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class BoxScreen(ApplianceScreen):
    """What this box has and what stands between it and serving."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "redetect", "Detect", tooltip="Probe the GPUs, host and Docker again"),
        Binding("s", "simulate", "Simulate", tooltip="Explore a simulated GPU box"),
        this_screen("b", "box", "Box"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="box-body"):
            yield Static("Detecting the GPUs, the host and Docker…", id="box-heading")
            yield Static(id="box-verdict")
            yield Static("", id="box-no-gpu", classes="callout")
            with Vertical(classes="panel", id="box-gpus") as panel:
                panel.border_title = "GPUs"
                yield Static(id="gpus")
            with Vertical(classes="panel", id="box-host") as panel:
                panel.border_title = "Host"
                yield Static(id="host")
            with Vertical(classes="panel", id="box-docker") as panel:
                panel.border_title = "Docker and NVIDIA toolkit"
                yield Static(id="docker")
            with Vertical(classes="panel", id="box-findings") as panel:
                panel.border_title = "Findings"
                yield Static(id="findings")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.watch(self.app, "box", self.show_box)

    def show_box(self, box: Box | None) -> None:
        if box is None:
            self.query_one("#box-heading", Static).update(
                "Detecting the GPUs, the host and Docker…"
            )
            return
        self.query_one("#box-heading", Static).update(box_heading(box))
        self.query_one("#box-verdict", Static).update(verdict_text(box))
        no_gpu = self.query_one("#box-no-gpu", Static)
        no_gpu.display = not box.gpus and box.source != "simulated"
        if no_gpu.display:
            no_gpu.update(
                Text.assemble(
                    ("No NVIDIA GPU here, so nothing can be deployed on this machine. ", "bold"),
                    "Press ",
                    ("s", "bold reverse"),
                    " to simulate a GPU box (RTX 4090, L40S, A100, H100…) and see what the "
                    "appliance would recommend, plan and monitor there.",
                )
            )
        self.query_one("#gpus", Static).update(gpu_table(box.gpus))
        self.query_one("#host", Static).update(host_table(box.host))
        self.query_one("#docker", Static).update(docker_text(box.docker))
        findings: list[RenderableType] = [finding_text(f) for f in box.findings]
        self.query_one("#findings", Static).update(Group(*findings) if findings else "none")

    def action_redetect(self) -> None:
        self.app.box = None  # type: ignore[attr-defined]
        self.appliance.detect_box()

    def action_simulate(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self.appliance.restart_simulated(name)

        self.app.push_screen(SimulatePicker(), chosen)
