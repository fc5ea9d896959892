"""What `appliance detect` knows about this machine: frozen snapshots that print as JSON.

Every probe (NVML, host, Docker) ends in one of these models, and so does `--simulate`; the CLI,
the TUI and the recommender read nothing else. They are snapshots taken in one pass, never updated
in place: to see a change, probe again.

What must stay true:
- A reading NVML or the host cannot give (NVML's "Not Supported", a card without a power sensor,
  a unified-memory system without a memory size) is `None`, never 0 and never a guess.
- A problem is a `Finding` with the fix an operator can type; `Box.serving_blockers()` are the
  findings of severity "error", and nothing else decides whether the box can serve.
- A `Box` dumped to JSON validates back into an equal `Box` (recorded boxes rely on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from appliance.vocabulary import FindingSeverity

BoxSource = Literal["nvml", "simulated", "recorded"]

# What `nvidia-smi topo -p2p r` prints, in words: whether one GPU can read another's memory
# directly. NVIDIA's stock driver reports "gpu-not-supported" or "not-supported" on GeForce cards.
PeerToPeerStatus = Literal[
    "ok",
    "chipset-not-supported",
    "gpu-not-supported",
    "topology-not-supported",
    "disabled-by-regkey",
    "not-supported",
    "unknown",
]

# The path between two GPUs, in `nvidia-smi topo -m`'s own codes (operators know these):
# "board" two GPUs on one board, PIX one PCIe switch, PXB several switches, PHB through the CPU's
# host bridge, NODE across host bridges in one NUMA node, SYS across CPU sockets.
PcieTopology = Literal["board", "PIX", "PXB", "PHB", "NODE", "SYS"]

# nvidia-smi's process "Type" column: C compute, G graphics (a desktop's Xorg), C+G both.
ProcessType = Literal["C", "G", "C+G"]

DockerProblem = Literal["not-installed", "not-running", "permission-denied", "unreachable", "error"]


class _Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessReading(Protocol):
    """What NVML says of one process (`nvml.NvmlProcess`), read-only."""

    @property
    def pid(self) -> int: ...
    @property
    def name(self) -> str | None: ...
    @property
    def used_memory_bytes(self) -> int | None: ...
    @property
    def type(self) -> ProcessType: ...


class GpuProcess(_Snapshot):
    """A process holding memory on a GPU, as NVML lists it (host PIDs; empty inside a container)."""

    pid: int
    name: str | None = None
    used_memory_bytes: int | None = None
    type: ProcessType = "C"

    @classmethod
    def all_of(cls, readings: Iterable[ProcessReading] | None) -> tuple[GpuProcess, ...] | None:
        """NVML's process readings (any objects with these fields) as snapshots; None stays
        None ("not supported" is not "no processes")."""
        if readings is None:
            return None
        return tuple(
            cls(pid=r.pid, name=r.name, used_memory_bytes=r.used_memory_bytes, type=r.type)
            for r in readings
        )


def watts(milliwatts: int | None) -> float | None:
    """NVML reports power in milliwatts."""
    return None if milliwatts is None else milliwatts / 1000


class GpuInfo(_Snapshot):
    """One GPU as NVML reported it. Every field NVML can answer "Not Supported" for is optional."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str | None = None
    # The card's entry in the appliance's GPU catalog, or None for a card it does not know (it
    # still works: sizing then uses the NVML figures below).
    catalog_key: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_reserved_bytes: int | None = None  # held by the driver itself (NVML memory v2)
    compute_capability: tuple[int, int] | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # the newest CUDA the driver supports, e.g. "12.4"
    pcie_generation: int | None = None  # current link; drops at idle on many cards
    pcie_width: int | None = None
    pcie_generation_max: int | None = None
    pcie_width_max: int | None = None
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None  # the enforced limit
    utilization_gpu_pct: int | None = None
    utilization_memory_pct: int | None = None
    mig_mode: bool | None = None  # None: the card has no MIG
    mig_mode_pending: bool | None = None  # differs from mig_mode until the GPU is reset
    processes: tuple[GpuProcess, ...] | None = None  # None: NVML could not list them
    nvlink_active_links: int | None = None  # None: no NVLink on this card


class GpuLink(_Snapshot):
    """How two GPUs reach each other; tensor parallelism lives or dies by this."""

    gpus: tuple[int, int]
    peer_to_peer: PeerToPeerStatus | None = None
    nvlink: bool | None = None
    topology: PcieTopology | None = None


class HostInfo(_Snapshot):
    """The machine around the GPUs: CPU, RAM, OS, and the disk the weights will live on."""

    hostname: str
    cpu_model: str | None = None
    cpu_physical_cores: int | None = None
    cpu_logical_cores: int | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    os_name: str | None = None  # /etc/os-release PRETTY_NAME
    os_id: str | None = None  # "debian", "ubuntu", …: picks the install commands in fixes
    os_like: tuple[str, ...] = ()  # ID_LIKE: Linux Mint and Pop!_OS are "ubuntu debian"
    os_version_id: str | None = None
    kernel: str | None = None
    architecture: str | None = None
    models_dir: Path
    # The directory the free space was measured at: models_dir, or its nearest existing parent
    # when models_dir does not exist yet (it is created on the first download).
    disk_measured_at: Path | None = None
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    # NVIDIA display/3D controllers on the PCI bus (sysfs), whether or not a driver is loaded:
    # tells "no driver" apart from "no GPU at all". None when sysfs cannot be read.
    nvidia_pci_devices: int | None = None
    nouveau_loaded: bool | None = None


class DockerInfo(_Snapshot):
    """The Docker engine as seen from here, and whether its containers can be given a GPU."""

    base_url: str | None = None
    reachable: bool
    simulated: bool = False
    version: str | None = None
    api_version: str | None = None
    runtimes: tuple[str, ...] = ()
    default_runtime: str | None = None
    nvidia_runtime: bool = False  # "nvidia" is registered in the daemon's runtimes
    # nvidia-container-runtime-hook on this host: what makes `--gpus` work without the runtime.
    # None when the engine is not local, so the host's files say nothing about it.
    nvidia_hook: bool | None = None
    cdi_spec_dirs: tuple[str, ...] = ()  # empty: CDI is off in this daemon (or too old to say)
    cdi_devices: tuple[str, ...] = ()  # e.g. "nvidia.com/gpu=0", "nvidia.com/gpu=all"
    problem: DockerProblem | None = None
    error: str | None = None  # the raw error, for the log and the curious

    @property
    def gpu_containers_possible(self) -> bool:
        """Whether a container started here can be handed an NVIDIA GPU at all."""
        if self.simulated:
            return self.nvidia_runtime
        return (
            self.nvidia_runtime
            or bool(self.nvidia_hook)
            or any(device.startswith("nvidia.com/gpu=") for device in self.cdi_devices)
        )


class Finding(_Snapshot):
    """Something the operator should know, with what to do about it.

    `code` is stable (scripts and the TUI key on it); `what` and `fix` are for people.
    """

    code: str
    severity: FindingSeverity
    what: str
    fix: str | None = None
    gpus: tuple[int, ...] = ()  # the GPU indexes it concerns, if any


class Box(_Snapshot):
    """Everything `appliance detect` found, in one snapshot."""

    source: BoxSource
    simulated: str | None = None  # the --simulate name
    recording: str | None = None  # where a recorded NVML reading came from
    gpus: tuple[GpuInfo, ...] = ()
    gpu_links: tuple[GpuLink, ...] = ()
    host: HostInfo
    docker: DockerInfo
    nvml_error: str | None = None  # why NVML could not be read at all, as NVML said it
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    findings: tuple[Finding, ...] = ()

    def serving_blockers(self) -> tuple[Finding, ...]:
        """Findings that stop this box from serving: no driver, GPU, Docker or toolkit."""
        return tuple(finding for finding in self.findings if finding.severity == "error")

    @property
    def can_serve(self) -> bool:
        return not self.serving_blockers()

    @property
    def peer_to_peer(self) -> bool | None:
        """True: every GPU pair has P2P; False: one lacks it; None: unknown or < 2 GPUs."""
        statuses = [link.peer_to_peer for link in self.gpu_links]
        if len(self.gpus) < 2 or not statuses or None in statuses:
            return None
        return all(status == "ok" for status in statuses)

    @property
    def gpu_memory_total_bytes(self) -> int | None:
        """Memory of all GPUs together; None when any GPU does not report its size."""
        sizes = [gpu.memory_total_bytes for gpu in self.gpus]
        if not sizes or None in sizes:
            return None
        return sum(size for size in sizes if size is not None)

    def finding(self, code: str) -> Finding | None:
        """The first finding with this code, or None."""
        return next((finding for finding in self.findings if finding.code == code), None)
