"""`--simulate NAME|FILE`: a box built from the GPU catalog, or read from a file `appliance detect
--json` wrote on another machine, so everything up to `plan` runs on a laptop.

NAME is `[Nx]<gpu>`: `rtx4090`, `2x4090`, `l40s`, `a100-80g`, `4xh100`, … where <gpu> is a catalog
key, with or without its "rtx" prefix. The simulated GPUs are NVML readings made from the catalog
entry and go through the same assembly as a real reading: names, memory, compute capability and
the P2P caveat come out exactly as a real box of those cards would show them. UUIDs are
deterministic, so plans and snapshots built on a simulated box are stable. Readings that only a
real card has (temperature, power draw) are None, not invented.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.catalog import GpuSpec, load_catalog
from appliance.errors import BadInputError
from appliance.hardware.box import Box, DockerInfo, HostInfo
from appliance.hardware.nvml import NvmlDevice, NvmlPair, NvmlRecording, NvmlSystem

EXAMPLES = ("rtx4090", "2x4090", "l40s", "a100-80g", "h100")
MAX_GPUS = 8
# A current long-term-support driver (R580, CUDA 13.0), as a freshly installed GPU box runs it:
# the version a real H200 reported (shared reference h200-detect.json). It runs every pinned
# engine build natively, so a simulated box plans what a well-kept box would run.
SIMULATED_DRIVER = "580.159.04"
SIMULATED_CUDA_DRIVER = 13000
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/llm-appliance/simulated-gpu")
_NAME = re.compile(r"^(?:(?P<count>\d+)\s*x\s*)?(?P<gpu>[a-z0-9][a-z0-9.\-]*)$")
# NVML_P2P_STATUS_*: what the stock driver reports for cards with and without P2P.
_P2P_OK = 0
_P2P_GPU_NOT_SUPPORTED = 2
_P2P_NOT_SUPPORTED = 5


@dataclass(frozen=True)
class SimulatedBox:
    """The parts of a simulated box, before assembly: NVML readings, a host, a Docker engine."""

    name: str
    recording: NvmlRecording
    host: HostInfo
    docker: DockerInfo


def _normalise(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def resolve(name: str) -> tuple[int, GpuSpec]:
    """How many GPUs of which catalog entry `name` means; BadInputError naming valid names."""
    gpus = load_catalog().gpus
    match = _NAME.match(name.strip().lower())
    spec: GpuSpec | None = None
    count = 0
    if match:
        count = int(match["count"] or 1)
        wanted = _normalise(match["gpu"])
        spec = next(
            (gpu for gpu in gpus if _normalise(gpu.key) in (wanted, f"rtx{wanted}")),
            None,
        )
    if spec is None or not 1 <= count <= MAX_GPUS:
        problem = (
            f"{count} GPUs is outside 1-{MAX_GPUS}"
            if spec is not None
            else "no such GPU in the catalog"
        )
        raise BadInputError(
            f"cannot simulate {name!r}: {problem}",
            hint=f"use [Nx]<gpu>, e.g. {', '.join(EXAMPLES)}; "
            f"GPUs in the catalog: {', '.join(gpu.key for gpu in gpus)}",
        )
    return count, spec


def simulated_uuid(canonical: str, index: int) -> str:
    """A stable, well-formed NVML-style UUID for GPU `index` of a simulated box."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{canonical}/{index}')}"


def _device(spec: GpuSpec, index: int, canonical: str) -> NvmlDevice:
    return NvmlDevice(
        index=index,
        name=spec.name,
        uuid=simulated_uuid(canonical, index),
        pci_bus_id=f"00000000:{index + 1:02X}:00.0",
        memory_total_bytes=spec.memory_total_bytes,
        memory_used_bytes=0,
        memory_free_bytes=spec.memory_total_bytes,
        compute_capability=spec.compute_capability,
        pcie_generation=spec.pcie_generation,
        pcie_width=16,
        pcie_generation_max=spec.pcie_generation,
        pcie_width_max=16,
        enforced_power_limit_mw=spec.tdp_watts * 1000,
        utilization_gpu_pct=0,
        utilization_memory_pct=0,
        processes=(),
    )


def _pair(spec: GpuSpec, first: int, second: int) -> NvmlPair:
    return NvmlPair(
        gpus=(first, second),
        p2p_read_status=_P2P_OK if spec.p2p_default else _P2P_GPU_NOT_SUPPORTED,
        nvlink_status=_P2P_OK if spec.nvlink else _P2P_NOT_SUPPORTED,
    )


def simulated_recording(count: int, spec: GpuSpec) -> NvmlRecording:
    canonical = f"{count}x{spec.key}"
    return NvmlRecording(
        system=NvmlSystem(
            driver_version=SIMULATED_DRIVER,
            cuda_driver_version=SIMULATED_CUDA_DRIVER,
            device_count=count,
        ),
        devices=tuple(_device(spec, index, canonical) for index in range(count)),
        pairs=tuple(
            _pair(spec, first, second)
            for first in range(count)
            for second in range(first + 1, count)
        ),
    )


def simulated_host(name: str, models_dir: Path, *, gpus: int, gpu_memory_bytes: int) -> HostInfo:
    """A server that fits the GPUs: RAM at least twice their memory (vLLM loads through RAM)."""
    memory = max(64 << 30, 2 * gpu_memory_bytes)
    memory = -(-memory // (64 << 30)) * (64 << 30)  # round up to whole 64 GiB
    return HostInfo(
        hostname=f"simulated-{name}",
        cpu_model="simulated 32-core server CPU",
        cpu_physical_cores=32,
        cpu_logical_cores=64,
        memory_total_bytes=memory,
        memory_available_bytes=memory * 9 // 10,
        os_name="Ubuntu 24.04 LTS (simulated)",
        os_id="ubuntu",
        os_version_id="24.04",
        kernel="simulated",
        architecture="x86_64",
        models_dir=models_dir,
        disk_measured_at=models_dir,
        disk_free_bytes=1600 << 30,
        disk_total_bytes=1800 << 30,
        nvidia_pci_devices=gpus,
        nouveau_loaded=False,
    )


def simulated_docker() -> DockerInfo:
    return DockerInfo(
        reachable=True,
        simulated=True,
        version="simulated",
        runtimes=("nvidia", "runc"),
        default_runtime="runc",
        nvidia_runtime=True,
        nvidia_hook=True,
    )


def simulate(name: str, models_dir: Path) -> SimulatedBox:
    """Everything `detect_box(simulate=name)` needs, from the catalog alone."""
    count, spec = resolve(name)
    label = name.strip().lower()
    return SimulatedBox(
        name=label,
        recording=simulated_recording(count, spec),
        host=simulated_host(
            label, models_dir, gpus=count, gpu_memory_bytes=count * spec.memory_total_bytes
        ),
        docker=simulated_docker(),
    )


# --- `--simulate FILE`: a box another machine detected ---------------------------------------


def is_detect_file(name: str) -> bool:
    """Whether `--simulate` names a file (`appliance detect --json` output) rather than a box
    from the catalog: catalog names never hold a path separator or a `.json` suffix."""
    if "/" in name or name.lower().endswith(".json"):
        return True
    try:
        return Path(name).is_file()
    except OSError:  # a name no file can have (too long): a box name, refused as unknown
        return False


def read_detect_file(path: Path) -> Box:
    """The box in a file written by `appliance detect --json` on another machine, so a GPU box
    can be planned for from a laptop. The GPUs are matched against this catalog and the findings
    are made again by this version's rules (a driver fine for older images may not be now)."""
    from pydantic import ValidationError

    from appliance.hardware.findings import assess

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise BadInputError(
            f"cannot read {path}: {error.strerror or error}",
            hint="give a file written by `appliance detect --json > box.json` on the GPU box",
        ) from None
    try:
        box = Box.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise BadInputError(
            f"{path} is not `appliance detect --json` output ({where}: {first['msg']})",
            hint="write it on the GPU box with `appliance detect --json > box.json`",
        ) from None
    catalog = load_catalog()
    gpus = tuple(
        gpu.model_copy(update={"catalog_key": spec.key if spec else None})
        for gpu in box.gpus
        for spec in [catalog.gpu_by_name(gpu.name)]
    )
    findings = box.findings
    if box.nvml_error is None:
        findings = assess(
            gpus=gpus,
            links=box.gpu_links,
            host=box.host,
            docker=box.docker,
            unavailable=None,
            unreadable={},
            specs={gpu.index: catalog.gpu_by_name(gpu.name) for gpu in gpus},
            cuda_driver_version=box.cuda_driver_version,
            driver_version=box.driver_version,
        )
    return box.model_copy(
        update={
            "source": "recorded",
            "simulated": None,
            "recording": f"{path}, written by `appliance detect --json` on {box.host.hostname}",
            "gpus": gpus,
            "findings": findings,
        }
    )


def catalog_name(name: str) -> str:
    """The `[Nx]<gpu>` catalog name for `--simulate NAME|FILE` (a file: its GPUs' entry), for
    what only the catalog can simulate (the TUI's engines)."""
    if not is_detect_file(name):
        return name
    box = read_detect_file(Path(name))
    keys = {gpu.catalog_key for gpu in box.gpus}
    if not box.gpus or None in keys or len(keys) != 1:
        names = ", ".join(sorted({gpu.name for gpu in box.gpus})) or "no GPU"
        raise BadInputError(
            f"{name} holds {names}: the simulated engines need one kind of catalog GPU",
            hint="GPUs in the catalog: " + ", ".join(gpu.key for gpu in load_catalog().gpus),
        )
    return f"{len(box.gpus)}x{box.gpus[0].catalog_key}"
