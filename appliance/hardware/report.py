"""The box as plain text for a terminal: what `appliance detect` prints.

Plain text on purpose (no colour codes, no rich renderables): it reads the same over SSH, in a log
file and in a CI transcript, and `--json` exists for machines. Lines stay under 100 columns except
for the fix commands, which are printed whole so they can be copied.
"""

from __future__ import annotations

import textwrap

from appliance.hardware.box import Box, DockerInfo, Finding, GpuInfo, HostInfo
from appliance.units import gib

_LABEL = {"error": "ERROR", "warning": "WARN ", "info": "INFO "}
_WIDTH = 100
# Fix lines that start with one of these are shell commands: never wrapped, so they copy whole.
_COMMANDS = frozenset(
    {"sudo", "curl", "docker", "nvidia-smi", "apt-get", "systemctl", "newgrp", "journalctl"}
)


def _gib(value: int | None) -> str:
    return gib(value, missing="?")


def _optional(value: object, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value}{suffix}"


def _gpu_lines(gpu: GpuInfo) -> list[str]:
    memory = _gib(gpu.memory_total_bytes)
    if gpu.memory_used_bytes is not None:
        memory += f" ({_gib(gpu.memory_used_bytes)} used)"
    capability = (
        "cc ?" if gpu.compute_capability is None else "cc {}.{}".format(*gpu.compute_capability)
    )
    pcie = "PCIe ?"
    if gpu.pcie_generation is not None and gpu.pcie_width is not None:
        pcie = f"PCIe {gpu.pcie_generation}.0 x{gpu.pcie_width}"
        if (gpu.pcie_generation_max, gpu.pcie_width_max) not in (
            (None, None),
            (gpu.pcie_generation, gpu.pcie_width),
        ):
            pcie += (
                f" (max {_optional(gpu.pcie_generation_max)}.0 x{_optional(gpu.pcie_width_max)})"
            )
    power = "n/a" if gpu.power_draw_w is None else f"{round(gpu.power_draw_w)} W"
    if gpu.power_limit_w is not None:
        power += f" / {round(gpu.power_limit_w)} W"
    first = f"  [{gpu.index}] {gpu.name} · {memory} · {capability} · {pcie}"
    second = (
        f"      temp {_optional(gpu.temperature_c, ' °C')} · power {power} · "
        f"util {_optional(gpu.utilization_gpu_pct, ' %')}"
    )
    if gpu.mig_mode is not None:
        second += f" · MIG {'on' if gpu.mig_mode else 'off'}"
    if gpu.nvlink_active_links is not None:
        second += f" · NVLink {gpu.nvlink_active_links} links"
    third = f"      {gpu.uuid}" + (f" · {gpu.pci_bus_id}" if gpu.pci_bus_id else "")
    third += f" · catalog: {gpu.catalog_key or 'not listed'}"
    lines = [first, second, third]
    for process in gpu.processes or ():
        lines.append(
            f"      pid {process.pid} {process.type} {process.name or '?'} "
            f"{_gib(process.used_memory_bytes)}"
        )
    return lines


def _host_lines(host: HostInfo) -> list[str]:
    cores = (
        f"{_optional(host.cpu_physical_cores)} cores / {_optional(host.cpu_logical_cores)} threads"
    )
    lines = [
        f"  Host  {host.hostname}",
        f"  CPU   {host.cpu_model or '?'} ({cores})",
        f"  RAM   {_gib(host.memory_total_bytes)} total, {_gib(host.memory_available_bytes)} "
        "available",
        f"  OS    {host.os_name or '?'} · kernel {host.kernel or '?'} · {host.architecture or '?'}",
    ]
    free, total = _gib(host.disk_free_bytes), _gib(host.disk_total_bytes)
    disk = f"  Disk  {host.models_dir}: {free} free of {total}"
    if host.disk_measured_at is not None and host.disk_measured_at != host.models_dir:
        disk += f" (measured at {host.disk_measured_at}; the directory does not exist yet)"
    lines.append(disk)
    return lines


def _docker_lines(docker: DockerInfo) -> list[str]:
    if docker.simulated:
        return ["  Engine simulated, NVIDIA runtime assumed ready"]
    where = docker.base_url or "default socket"
    if not docker.reachable:
        return [f"  Engine not reachable at {where} ({docker.problem or 'error'})"]
    runtimes = ", ".join(
        f"{name} (default)" if name == docker.default_runtime else name for name in docker.runtimes
    )
    hook = {True: "found", False: "not found", None: "not checked (remote engine)"}
    cdi = ", ".join(docker.cdi_devices) or ("none" if docker.cdi_spec_dirs else "off")
    return [
        f"  Engine {docker.version or '?'} (API {docker.api_version or '?'}) at {where}",
        f"  Runtimes {runtimes or '?'} · NVIDIA runtime: "
        f"{'yes' if docker.nvidia_runtime else 'no'}",
        f"  NVIDIA hook: {hook[docker.nvidia_hook]} · CDI devices: {cdi}",
        f"  GPU containers: {'possible' if docker.gpu_containers_possible else 'not possible'}",
    ]


def _wrap(text: str, first: str, rest: str) -> list[str]:
    # Flags and paths (--disable-custom-all-reduce, /etc/apt/...) are never split.
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _is_command(line: str) -> bool:
    return line.startswith((" ", "#")) or line.split(" ", 1)[0] in _COMMANDS


def _finding_lines(finding: Finding) -> list[str]:
    """The finding wrapped to the terminal; command lines of the fix are kept whole to copy."""
    label = f"  {_LABEL[finding.severity]} "
    lines = _wrap(finding.what, label, " " * len(label))
    if finding.fix:
        prefix, indent = "        fix: ", " " * 13
        for line in finding.fix.splitlines():
            if _is_command(line):
                lines.append(prefix + line)
            else:
                lines += _wrap(line, prefix, indent) or [prefix]
            prefix = indent
    return lines


def _engine_image_lines(box: Box) -> list[str]:
    """The vLLM build this driver runs (a refusal is a finding, shown below)."""
    if not box.gpus or not box.driver_version:
        return []
    from appliance.engine_images import NoImageRuns, box_vllm_image

    choice = box_vllm_image(box)
    if isinstance(choice, NoImageRuns):
        return []
    return [f"Engine image {choice.image}: {choice.why}"]


def _heading(box: Box) -> str:
    if box.source == "simulated":
        return f"Box: simulated {box.simulated!r} (from the GPU catalog; nothing was probed)"
    if box.source == "recorded" and box.recording and not box.recording.startswith("http"):
        return f"Box: read from {box.recording}"  # another machine's `appliance detect --json`
    if box.source == "recorded":
        return f"Box: recorded NVML reading ({box.recording or 'unknown source'})"
    return "Box: this machine"


def render_box(box: Box) -> str:
    """A readable report of the box: GPUs, links, host, Docker, findings, and the verdict."""
    lines = [_heading(box)]
    if box.driver_version:
        lines.append(f"NVIDIA driver {box.driver_version} · CUDA {box.cuda_driver_version or '?'}")
    elif box.nvml_error:
        lines.append(f"NVIDIA driver: not available ({box.nvml_error})")
    lines += _engine_image_lines(box)
    lines += ["", f"GPUs ({len(box.gpus)})"]
    if not box.gpus:
        lines.append("  none")
    for gpu in box.gpus:
        lines += _gpu_lines(gpu)
    for link in box.gpu_links:
        first, second = link.gpus
        parts = [f"P2P {link.peer_to_peer or 'unknown'}"]
        if link.nvlink is not None:
            parts.append(f"NVLink {'yes' if link.nvlink else 'no'}")
        if link.topology is not None:
            parts.append(f"path {link.topology}")
        lines.append(f"  GPU {first} ↔ GPU {second}: {' · '.join(parts)}")
    lines += ["", "Host", *_host_lines(box.host), "", "Docker", *_docker_lines(box.docker)]
    lines += ["", "Findings"]
    if not box.findings:
        lines.append("  none")
    for finding in box.findings:
        lines += _finding_lines(finding)
    blockers = box.serving_blockers()
    verdict = (
        "Ready to serve: yes"
        if not blockers
        else f"Ready to serve: no ({len(blockers)} blocker{'s' if len(blockers) > 1 else ''})"
    )
    lines += ["", verdict]
    return "\n".join(lines)
