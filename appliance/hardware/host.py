"""The machine around the GPUs: CPU, RAM, OS, and free disk where the weights will be stored.

psutil is imported inside `probe_host`, so importing the hardware package stays cheap. The small
readers below take their paths as arguments: tests point them at files of their own.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from appliance.hardware.box import HostInfo

NVIDIA_PCI_VENDOR = "0x10de"
# PCI class 0x03xxxx is "display controller": 0x0300 VGA (GeForce, workstation), 0x0302 3D (data
# centre cards). NVIDIA's audio functions (0x0403) and bridges must not count as GPUs.
DISPLAY_CONTROLLER_CLASS = "0x03"


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    """The KEY=value pairs of os-release(5), unquoted; empty when the file is absent."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields[key] = value
    return fields


def read_cpu_model(path: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's marketing name (x86 "model name", Arm "Model"/"Hardware"), or None."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None
    wanted = ("model name", "Model", "Hardware", "cpu model")
    for key in wanted:
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or None


def count_nvidia_pci_devices(devices_dir: Path = Path("/sys/bus/pci/devices")) -> int | None:
    """NVIDIA display controllers on the PCI bus, driver or not; None when sysfs is unreadable."""
    try:
        entries = list(devices_dir.iterdir())
    except OSError:
        return None
    count = 0
    for entry in entries:
        try:
            vendor = (entry / "vendor").read_text().strip().lower()
            device_class = (entry / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and device_class.startswith(DISPLAY_CONTROLLER_CLASS):
            count += 1
    return count


def nearest_existing_directory(path: Path) -> Path:
    """`path` itself or its closest existing ancestor: where free space can be measured now."""
    candidate = path.absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def probe_host(
    models_dir: Path,
    *,
    os_release: Path = Path("/etc/os-release"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    pci_devices: Path = Path("/sys/bus/pci/devices"),
    modules_dir: Path = Path("/sys/module"),
) -> HostInfo:
    """Read the host in one pass. Never raises for a missing file: that field is None."""
    import psutil

    release = read_os_release(os_release)
    memory = psutil.virtual_memory()
    measured_at = nearest_existing_directory(models_dir)
    try:
        disk = psutil.disk_usage(str(measured_at))
        disk_free: int | None = int(disk.free)
        disk_total: int | None = int(disk.total)
    except OSError:
        disk_free = disk_total = None
    uname = platform.uname()
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_model=read_cpu_model(cpuinfo),
        cpu_physical_cores=psutil.cpu_count(logical=False),
        cpu_logical_cores=psutil.cpu_count(logical=True) or os.cpu_count(),
        memory_total_bytes=int(memory.total),
        memory_available_bytes=int(memory.available),
        os_name=release.get("PRETTY_NAME") or f"{uname.system} {uname.release}",
        os_id=release.get("ID"),
        os_like=tuple(release.get("ID_LIKE", "").split()),
        os_version_id=release.get("VERSION_ID"),
        kernel=uname.release,
        architecture=uname.machine,
        models_dir=models_dir,
        disk_measured_at=measured_at,
        disk_free_bytes=disk_free,
        disk_total_bytes=disk_total,
        nvidia_pci_devices=count_nvidia_pci_devices(pci_devices),
        nouveau_loaded=(modules_dir / "nouveau").exists() if modules_dir.exists() else None,
    )
