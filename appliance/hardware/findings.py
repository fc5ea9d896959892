"""What is wrong with this box, and the exact commands that fix it. Pure: no probing here.

Each rule looks at the snapshots the probes produced and may add a `Finding`. Errors are the
things that stop serving (no driver, no GPU, no Docker, no container toolkit); warnings cost
performance or memory; info is worth knowing. Fixes are commands for Debian and Ubuntu, the
systems `install.sh` supports; the appliance never runs them itself (least of all a driver
install). Codes are stable: the CLI, the TUI and scripts key on them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.hardware.box import DockerInfo, Finding, GpuInfo, GpuLink, HostInfo
from appliance.units import gib

if TYPE_CHECKING:
    from appliance.catalog import GpuSpec
    from appliance.hardware.nvml import NvmlUnavailable

# Finding codes.
NO_DRIVER = "no-driver"
DRIVER_MISMATCH = "driver-mismatch"
NVML_NO_PERMISSION = "nvml-no-permission"
NVML_ERROR = "nvml-error"
NO_GPU = "no-gpu"
GPU_UNREADABLE = "gpu-unreadable"
DRIVER_TOO_OLD = "driver-too-old"
TEI_DRIVER_TOO_OLD = "tei-driver-too-old"
DOCKER_NOT_INSTALLED = "docker-not-installed"
DOCKER_NOT_RUNNING = "docker-not-running"
DOCKER_PERMISSION_DENIED = "docker-permission-denied"
DOCKER_UNREACHABLE = "docker-unreachable"
NO_CONTAINER_TOOLKIT = "no-container-toolkit"
NO_P2P = "no-p2p"
GPU_MEMORY_IN_USE = "gpu-memory-in-use"
GPU_MEMORY_UNKNOWN = "gpu-memory-unknown"
MIG_ENABLED = "mig-enabled"
MIG_CHANGE_PENDING = "mig-change-pending"
LOW_DISK = "low-disk"
GPU_NOT_IN_CATALOG = "gpu-not-in-catalog"
SIMULATED = "simulated"

# Another process holding more than this on a GPU leaves vLLM short: it budgets a fraction of the
# card's total memory and refuses to start when that much is not free. Idle cards show up to
# about 0.6 GiB of the driver's own reservation (NVML memory v1), so the line sits above that.
MEMORY_IN_USE_BYTES = 1 << 30
# Below this, even a 32B-class AWQ model (about 19 GB) plus an embedding model will not fit.
LOW_DISK_BYTES = 30 << 30

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

CONTAINER_TOOLKIT_FIX = """\
Install the NVIDIA Container Toolkit from NVIDIA's apt repository and register it with Docker:
  curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \\
    | sudo gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  curl -s -L https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \\
    | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \\
    | sudo tee /etc/apt/sources.list.d/nvidia-container-toolkit.list
  sudo apt-get update && sudo apt-get install -y nvidia-container-toolkit
  sudo nvidia-ctk runtime configure --runtime=docker
  sudo systemctl restart docker
Check: docker run --rm --gpus all debian:12-slim nvidia-smi"""  # noqa: E501 - copyable commands

_DRIVER_FIX_UBUNTU = """\
  sudo apt-get update && sudo apt-get install -y ubuntu-drivers-common
  sudo ubuntu-drivers install --gpgpu
  sudo reboot"""

_DRIVER_FIX_DEBIAN = """\
  # enable the contrib, non-free and non-free-firmware components in /etc/apt/sources.list
  # (or /etc/apt/sources.list.d/debian.sources), then:
  sudo apt-get update
  sudo apt-get install -y linux-headers-$(uname -r) nvidia-driver firmware-misc-nonfree
  sudo reboot"""


def driver_upgrade_fix(host: HostInfo, branch: int) -> str:
    """The commands that put driver branch `branch` on this host (Ubuntu or Debian)."""
    ubuntu = (
        "  sudo apt-get update && sudo apt-get install -y ubuntu-drivers-common\n"
        f"  sudo ubuntu-drivers install --gpgpu nvidia:{branch}-server\n"
        f"  sudo apt-get install -y nvidia-utils-{branch}-server\n"
        "  sudo reboot"
    )
    # Debian's own archive stops below this branch (bookworm 535, trixie 550): NVIDIA's CUDA
    # repository, with its pinning package holding the branch (NVIDIA driver installation guide,
    # "Version locking" for APT).
    release = (
        f"debian{host.os_version_id}"
        if host.os_id == "debian" and host.os_version_id
        else "debian$(. /etc/os-release; echo $VERSION_ID)"
    )
    debian = (
        "  # first remove Debian's own driver if installed: sudo apt-get purge 'nvidia-*'\n"
        "  wget https://developer.download.nvidia.com/compute/cuda/repos/"
        f"{release}/x86_64/cuda-keyring_1.1-1_all.deb\n"
        "  sudo dpkg -i cuda-keyring_1.1-1_all.deb && sudo apt-get update\n"
        f"  sudo apt-get install -y nvidia-driver-pinning-{branch}\n"
        "  sudo apt-get install -y linux-headers-$(uname -r) nvidia-open\n"
        "  sudo reboot"
    )
    lines = [f"Upgrade the NVIDIA driver to the {branch} branch (the appliance never does it):"]
    family = (host.os_id, *host.os_like)
    if "ubuntu" in family:
        lines.append(ubuntu)
    elif "debian" in family:
        lines.append(debian)
    else:
        lines += ["  on Ubuntu:", ubuntu, "  on Debian:", debian]
    lines.append("Then `nvidia-smi` must show the new driver; run `appliance detect` again.")
    return "\n".join(lines)


def _engine_image_findings(
    gpus: Sequence[GpuInfo], driver: str | None, host: HostInfo
) -> list[Finding]:
    """DRIVER_TOO_OLD when no pinned vLLM build starts on this driver and these cards."""
    from appliance.engine_images import (
        UPGRADE_BRANCH,
        NoImageRuns,
        gpus_card_class,
        tei_image_for,
        vllm_image_for,
    )

    if not gpus or driver is None:
        return []
    card_class = gpus_card_class(gpus)
    choice = vllm_image_for(driver, card_class)
    if isinstance(choice, NoImageRuns):
        return [
            Finding(
                code=DRIVER_TOO_OLD,
                severity="error",
                what=choice.what,
                fix=driver_upgrade_fix(host, UPGRADE_BRANCH),
                gpus=tuple(gpu.index for gpu in gpus),
            )
        ]
    tei = tei_image_for(gpus[0].compute_capability, driver, card_class)
    if not isinstance(tei, NoImageRuns):
        return []
    return [
        Finding(
            code=TEI_DRIVER_TOO_OLD,
            severity="warning",
            what=f"vLLM can start here, but embeddings on the GPU cannot: {tei.what}",
            fix="Run the embeddings on the CPU (spec.embeddings.device: cpu), or upgrade the "
            "driver.\n" + driver_upgrade_fix(host, UPGRADE_BRANCH),
            gpus=(gpus[0].index,),
        )
    ]


def _driver_install_fix(host: HostInfo) -> str:
    lines = ["Install the NVIDIA driver (the appliance never installs it by itself):"]
    family = (host.os_id, *host.os_like)
    if "ubuntu" in family:
        lines.append(_DRIVER_FIX_UBUNTU)
    elif "debian" in family:
        lines.append(_DRIVER_FIX_DEBIAN)
    else:
        lines += [
            "  on Ubuntu:",
            textwrap.indent(_DRIVER_FIX_UBUNTU, "  "),
            "  on Debian:",
            textwrap.indent(_DRIVER_FIX_DEBIAN, "  "),
            "  elsewhere: https://docs.nvidia.com/datacenter/tesla/driver-installation-guide/",
        ]
    if host.nouveau_loaded:
        lines.append(
            "The open-source nouveau driver is loaded; the driver packages blacklist it and the "
            "reboot unloads it."
        )
    lines.append("Then `nvidia-smi` must list the GPUs; run `appliance detect` again.")
    return "\n".join(lines)


def nvml_findings(unavailable: NvmlUnavailable, host: HostInfo) -> list[Finding]:
    """Why NVML cannot be used, by cause; "no driver" is a normal state with a fix."""
    detail = f"(NVML: {unavailable.message})"
    if unavailable.kind == "no-driver":
        if host.nvidia_pci_devices == 0:
            return [
                Finding(
                    code=NO_DRIVER,
                    severity="error",
                    what=f"no NVIDIA driver found, and no NVIDIA GPU on the PCI bus {detail}",
                    fix="This machine shows no NVIDIA GPU, so it cannot serve models on one: run "
                    "the appliance on the GPU box (to plan for one from here: `appliance detect "
                    "--simulate l40s`). If it does have a GPU that sysfs hides (a VM, a "
                    "container), install the driver on the machine that owns it.",
                )
            ]
        seen = ""
        if host.nvidia_pci_devices:
            seen = f"; {host.nvidia_pci_devices} NVIDIA GPU(s) are on the PCI bus"
        return [
            Finding(
                code=NO_DRIVER,
                severity="error",
                what=f"no NVIDIA driver found{seen} {detail}",
                fix=_driver_install_fix(host),
            )
        ]
    if unavailable.kind == "driver-mismatch":
        return [
            Finding(
                code=DRIVER_MISMATCH,
                severity="error",
                what=f"the loaded NVIDIA kernel module and the driver libraries differ {detail}",
                fix="The driver was upgraded without a reboot: `sudo reboot`, then check "
                "`nvidia-smi`.",
            )
        ]
    if unavailable.kind == "no-permission":
        return [
            Finding(
                code=NVML_NO_PERMISSION,
                severity="error",
                what=f"this user may not open the NVIDIA devices {detail}",
                fix="Check `ls -l /dev/nvidia*` (the driver makes them 0666 by default) and that "
                "`sudo nvidia-smi` works; run the appliance as a user who may use the GPUs.",
            )
        ]
    return [
        Finding(
            code=NVML_ERROR,
            severity="error",
            what=f"NVML cannot read the GPUs {detail}",
            fix="Run `nvidia-smi`; if it fails the same way, `sudo dmesg | grep -i -e nvrm -e xid` "
            "says why. Reinstalling the driver and rebooting fixes most cases.",
        )
    ]


def _gpu_findings(gpu: GpuInfo) -> list[Finding]:
    found: list[Finding] = []
    index = (gpu.index,)
    if gpu.catalog_key is None:
        memory = "unknown memory" if gpu.memory_total_bytes is None else gib(gpu.memory_total_bytes)
        capability = (
            "unknown compute capability"
            if gpu.compute_capability is None
            else "compute capability {}.{}".format(*gpu.compute_capability)
        )
        found.append(
            Finding(
                code=GPU_NOT_IN_CATALOG,
                severity="info",
                what=f"GPU {gpu.index} ({gpu.name}) is not in the appliance's GPU catalog; "
                f"sizing uses what NVML reports: {memory}, {capability}",
                gpus=index,
            )
        )
    if gpu.memory_total_bytes is None:
        found.append(
            Finding(
                code=GPU_MEMORY_UNKNOWN,
                severity="warning",
                what=f"GPU {gpu.index} ({gpu.name}) does not report its memory size "
                "(unified-memory systems such as GH200 and GB10 do this)",
                fix="Sizing cannot check what fits: choose the model and max_model_len in the "
                "profile yourself and keep gpu_memory_utilization conservative.",
                gpus=index,
            )
        )
    if gpu.memory_used_bytes is not None and gpu.memory_used_bytes > MEMORY_IN_USE_BYTES:
        holders = [
            f"pid {p.pid}"
            + (f" {Path(p.name).name}" if p.name else "")
            + (f" {gib(p.used_memory_bytes)}" if p.used_memory_bytes is not None else "")
            for p in sorted(gpu.processes or (), key=lambda p: -(p.used_memory_bytes or 0))[:3]
        ]
        by_whom = f" by {', '.join(holders)}" if holders else ""
        total = "" if gpu.memory_total_bytes is None else f" of {gib(gpu.memory_total_bytes)}"
        found.append(
            Finding(
                code=GPU_MEMORY_IN_USE,
                severity="warning",
                what=f"GPU {gpu.index}: {gib(gpu.memory_used_bytes)}{total} already in use"
                f"{by_whom}",
                fix="vLLM claims gpu_memory_utilization x total memory and refuses to start when "
                "that much is not free. Stop those processes (`nvidia-smi` lists them) before "
                "deploying, or lower gpu_memory_utilization in the profile.",
                gpus=index,
            )
        )
    if gpu.mig_mode:
        found.append(
            Finding(
                code=MIG_ENABLED,
                severity="warning",
                what=f"MIG is enabled on GPU {gpu.index}: the card is split into instances and "
                "the appliance's sizing assumes the whole card",
                fix=f"sudo nvidia-smi -i {gpu.index} -mig 0, then reset the GPU "
                f"(sudo nvidia-smi -i {gpu.index} -r) or reboot.",
                gpus=index,
            )
        )
    if gpu.mig_mode_pending is not None and gpu.mig_mode_pending != gpu.mig_mode:
        state = "enabled" if gpu.mig_mode_pending else "disabled"
        found.append(
            Finding(
                code=MIG_CHANGE_PENDING,
                severity="info",
                what=f"MIG will be {state} on GPU {gpu.index} after the next GPU reset",
                fix=f"sudo nvidia-smi -i {gpu.index} -r, or reboot.",
                gpus=index,
            )
        )
    return found


def _peer_to_peer_findings(
    gpus: Sequence[GpuInfo], links: Sequence[GpuLink], specs: Mapping[int, GpuSpec | None]
) -> list[Finding]:
    """The consumer-card caveat: without P2P, vLLM's custom all-reduce must be switched off."""
    if len(gpus) < 2:
        return []
    lacking: list[GpuLink] = []
    for link in links:
        if link.peer_to_peer is not None:
            if link.peer_to_peer != "ok":
                lacking.append(link)
            continue
        # NVML did not say: fall back to what the catalog knows of the two cards.
        pair_specs = [specs.get(index) for index in link.gpus]
        if any(spec is not None and not spec.p2p_default for spec in pair_specs):
            lacking.append(link)
    if not lacking:
        return []
    involved = sorted({index for link in lacking for index in link.gpus})
    pairs = ", ".join(f"{a}↔{b}" for a, b in (link.gpus for link in lacking))
    statuses = sorted({link.peer_to_peer or "not supported by default" for link in lacking})
    names = {gpu.name for gpu in gpus if gpu.index in involved}
    consumer = any(
        "GeForce" in gpu.name
        or ((spec := specs.get(gpu.index)) is not None and spec.segment == "consumer")
        for gpu in gpus
        if gpu.index in involved
    )
    why = "; NVIDIA disables P2P on GeForce cards" if consumer else ""
    return [
        Finding(
            code=NO_P2P,
            severity="warning",
            what=f"GPUs {pairs} ({', '.join(sorted(names))}) have no peer-to-peer access "
            f"(P2P: {', '.join(statuses)}){why}",
            fix="Tensor parallelism across them still works, through host memory, but needs "
            "--disable-custom-all-reduce (profiles the appliance writes for this box set it). "
            "If NCCL hangs at start-up, also set NCCL_P2P_DISABLE=1 in the engine's environment.",
            gpus=tuple(involved),
        )
    ]


def docker_unreachable_finding(docker: DockerInfo) -> Finding:
    """What to tell about an engine that does not answer (also every Docker command's error)."""
    url = docker.base_url or "the default socket"
    if docker.problem == "not-installed":
        return Finding(
            code=DOCKER_NOT_INSTALLED,
            severity="error",
            what="Docker is not installed",
            fix="sudo apt-get update && sudo apt-get install -y docker.io\n"
            "sudo systemctl enable --now docker\n"
            "(or Docker CE from Docker's apt repository: https://docs.docker.com/engine/install/)",
        )
    if docker.problem == "not-running":
        return Finding(
            code=DOCKER_NOT_RUNNING,
            severity="error",
            what=f"the Docker daemon is not running (nothing answers at {url})",
            fix="sudo systemctl enable --now docker\n"
            "If it does not start: sudo journalctl -u docker -n 50 --no-pager\n"
            "(If Docker runs elsewhere, set DOCKER_HOST to its address.)",
        )
    if docker.problem == "permission-denied":
        return Finding(
            code=DOCKER_PERMISSION_DENIED,
            severity="error",
            what=f"permission denied on the Docker socket ({url})",
            fix="Run the appliance with sudo, or let your user use Docker (the docker group is "
            "root-equivalent):\n"
            "  sudo usermod -aG docker $USER\n"
            "then log out and back in (or `newgrp docker`).",
        )
    return Finding(
        code=DOCKER_UNREACHABLE,
        severity="error",
        what=f"the Docker engine at {url} does not answer ({docker.error})",
        fix=f"Check that `docker version` works with DOCKER_HOST={url}; "
        "see `sudo journalctl -u docker -n 50 --no-pager` on the engine's host.",
    )


def _docker_findings(docker: DockerInfo, *, gpus_present: bool) -> list[Finding]:
    if docker.simulated:
        return []
    if not docker.reachable:
        return [docker_unreachable_finding(docker)]
    if gpus_present and not docker.gpu_containers_possible:
        missing = "no nvidia runtime, no nvidia-container-runtime-hook, no CDI devices"
        return [
            Finding(
                code=NO_CONTAINER_TOOLKIT,
                severity="error",
                what="the NVIDIA Container Toolkit is missing: Docker cannot give a container a "
                f"GPU ({missing})",
                fix=CONTAINER_TOOLKIT_FIX,
            )
        ]
    return []


def _disk_findings(host: HostInfo) -> list[Finding]:
    if host.disk_free_bytes is None or host.disk_free_bytes >= LOW_DISK_BYTES:
        return []
    where = str(host.models_dir)
    if host.disk_measured_at is not None and host.disk_measured_at != host.models_dir:
        where += f" (measured at {host.disk_measured_at}, it does not exist yet)"
    return [
        Finding(
            code=LOW_DISK,
            severity="warning",
            what=f"only {gib(host.disk_free_bytes)} free for model weights under {where}",
            fix="Weights need room: an 8B AWQ model takes about 6 GB, a 32B AWQ about 19 GB, a "
            "70B AWQ about 40 GB. Free space there, or store models elsewhere "
            "(`--models-dir`, and models_dir in the profile).",
        )
    ]


def assess(
    *,
    gpus: Sequence[GpuInfo],
    links: Sequence[GpuLink],
    host: HostInfo,
    docker: DockerInfo,
    unavailable: NvmlUnavailable | None,
    unreadable: Mapping[int, str],
    specs: Mapping[int, GpuSpec | None],
    cuda_driver_version: str | None,
    simulated: str | None = None,
    driver_version: str | None = None,
) -> tuple[Finding, ...]:
    """Every finding for one box, errors first."""
    found: list[Finding] = []
    if simulated is not None:
        found.append(
            Finding(
                code=SIMULATED,
                severity="info",
                what=f"simulated box {simulated!r}: built from the GPU catalog, nothing on this "
                "machine was probed (Docker and the NVIDIA runtime are assumed ready)",
            )
        )
    if unavailable is not None:
        found += nvml_findings(unavailable, host)
    elif not gpus and not unreadable:
        found.append(
            Finding(
                code=NO_GPU,
                severity="error",
                what="the NVIDIA driver is loaded but reports no GPU",
                fix="Check `nvidia-smi -L` and `sudo dmesg | grep -i -e nvrm -e xid`; a GPU that "
                "fell off the bus needs a reboot. In a container, pass the GPUs in "
                "(`--gpus all`).",
            )
        )
    for index, error in sorted(unreadable.items()):
        found.append(
            Finding(
                code=GPU_UNREADABLE,
                severity="error",
                what=f"GPU {index} does not answer NVML ({error})",
                fix="Check `nvidia-smi` and `sudo dmesg | grep -i -e xid -e nvrm`; a GPU that "
                f"has fallen off the bus needs `sudo nvidia-smi -i {index} -r` or a reboot.",
                gpus=(index,),
            )
        )
    found += _engine_image_findings(gpus, driver_version, host)
    for gpu in gpus:
        found += _gpu_findings(gpu)
    found += _peer_to_peer_findings(gpus, links, specs)
    gpus_present = bool(gpus) or bool(unreadable) or bool(host.nvidia_pci_devices)
    found += _docker_findings(docker, gpus_present=gpus_present)
    found += _disk_findings(host)
    return tuple(sorted(found, key=lambda finding: _SEVERITY_ORDER[finding.severity]))
