"""One way from raw NVML readings to a `Box`, whatever produced the readings.

The live driver, a recorded fixture and a `--simulate` box all arrive here as an `NvmlRecording`,
so the code that names cards, converts units, matches the catalog and raises findings is the same
for all three; the tests that replay recordings test what runs on a real box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.hardware.box import (
    Box,
    BoxSource,
    DockerInfo,
    GpuInfo,
    GpuLink,
    GpuProcess,
    HostInfo,
    PcieTopology,
    PeerToPeerStatus,
    watts,
)
from appliance.hardware.findings import assess
from appliance.hardware.nvml import (
    MIG_ENABLED,
    P2P_STATUS_OK,
    NvmlDevice,
    NvmlPair,
    NvmlRecording,
)

if TYPE_CHECKING:
    from appliance.catalog import GpuSpec

# NVML_P2P_STATUS_* → words (`nvidia-smi topo -p2p` prints OK, CNS, GNS, TNS, DR, NS, U).
P2P_STATUS: dict[int, PeerToPeerStatus] = {
    0: "ok",
    1: "chipset-not-supported",
    2: "gpu-not-supported",
    3: "topology-not-supported",
    4: "disabled-by-regkey",
    5: "not-supported",
    6: "unknown",
}
# NVML_TOPOLOGY_* → `nvidia-smi topo -m` codes.
TOPOLOGY: dict[int, PcieTopology] = {
    0: "board",
    10: "PIX",
    20: "PXB",
    30: "PHB",
    40: "NODE",
    50: "SYS",
}


def cuda_version_text(value: int | None) -> str | None:
    """NVML's CUDA driver version integer as people write it: 12040 → "12.4"."""
    if value is None:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def gpu_info(
    device: NvmlDevice,
    *,
    spec: GpuSpec | None,
    driver_version: str | None,
    cuda_driver_version: str | None,
) -> GpuInfo:
    """One readable device as the operator sees it (watts, "12.4", catalog key)."""
    return GpuInfo(
        index=device.index,
        name=device.name or f"unnamed NVIDIA GPU {device.index}",
        uuid=device.uuid or f"unknown-uuid-{device.index}",
        pci_bus_id=device.pci_bus_id,
        catalog_key=None if spec is None else spec.key,
        memory_total_bytes=device.memory_total_bytes,
        memory_used_bytes=device.memory_used_bytes,
        memory_free_bytes=device.memory_free_bytes,
        memory_reserved_bytes=device.memory_reserved_bytes,
        compute_capability=device.compute_capability,
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
        pcie_generation=device.pcie_generation,
        pcie_width=device.pcie_width,
        pcie_generation_max=device.pcie_generation_max,
        pcie_width_max=device.pcie_width_max,
        temperature_c=device.temperature_c,
        power_draw_w=watts(device.power_usage_mw),
        power_limit_w=watts(device.enforced_power_limit_mw),
        utilization_gpu_pct=device.utilization_gpu_pct,
        utilization_memory_pct=device.utilization_memory_pct,
        mig_mode=None
        if device.mig_mode_current is None
        else device.mig_mode_current == MIG_ENABLED,
        mig_mode_pending=None
        if device.mig_mode_pending is None
        else device.mig_mode_pending == MIG_ENABLED,
        processes=GpuProcess.all_of(device.processes),
        nvlink_active_links=device.nvlink_active_links,
    )


def gpu_link(pair: NvmlPair) -> GpuLink:
    return GpuLink(
        gpus=pair.gpus,
        peer_to_peer=None
        if pair.p2p_read_status is None
        else P2P_STATUS.get(pair.p2p_read_status, "unknown"),
        nvlink=None if pair.nvlink_status is None else pair.nvlink_status == P2P_STATUS_OK,
        topology=None if pair.topology_level is None else TOPOLOGY.get(pair.topology_level),
    )


def _catalog_specs(devices: tuple[NvmlDevice, ...]) -> dict[int, GpuSpec | None]:
    named = [device for device in devices if device.error is None and device.name]
    if not named:
        return {}
    from appliance.catalog import load_catalog

    catalog = load_catalog()
    return {device.index: catalog.gpu_by_name(device.name or "") for device in named}


def build_box(
    recording: NvmlRecording,
    *,
    host: HostInfo,
    docker: DockerInfo,
    source: BoxSource,
    simulated: str | None = None,
) -> Box:
    """The box these readings describe, with every finding."""
    system = recording.system
    driver_version = None if system is None else system.driver_version
    cuda = None if system is None else cuda_version_text(system.cuda_driver_version)
    specs = _catalog_specs(recording.devices)
    gpus = tuple(
        gpu_info(
            device,
            spec=specs.get(device.index),
            driver_version=driver_version,
            cuda_driver_version=cuda,
        )
        for device in recording.devices
        if device.error is None
    )
    unreadable = {
        device.index: device.error for device in recording.devices if device.error is not None
    }
    links = tuple(gpu_link(pair) for pair in recording.pairs)
    findings = assess(
        gpus=gpus,
        links=links,
        host=host,
        docker=docker,
        unavailable=recording.unavailable,
        unreadable=unreadable,
        specs=specs,
        cuda_driver_version=cuda,
        simulated=simulated,
        driver_version=driver_version,
    )
    label = None
    if source == "recorded" and recording.source is not None:
        label = recording.source.url or recording.source.citation
    return Box(
        source=source,
        simulated=simulated,
        recording=label,
        gpus=gpus,
        gpu_links=links,
        host=host,
        docker=docker,
        nvml_error=None if recording.unavailable is None else recording.unavailable.message,
        driver_version=driver_version,
        cuda_driver_version=cuda,
        findings=findings,
    )
