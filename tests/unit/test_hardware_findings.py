"""The rules that turn probe snapshots into findings, each with the fix an operator can type.

`make_host`, `ready_docker` and `make_gpu` build healthy parts; each test breaks one thing. The
other hardware test modules import them from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.hardware import findings as rules
from appliance.hardware.assemble import build_box
from appliance.hardware.box import Box, DockerInfo, GpuInfo, GpuProcess, HostInfo
from appliance.hardware.nvml import (
    NvmlDevice,
    NvmlPair,
    NvmlRecording,
    NvmlSystem,
    NvmlUnavailable,
)

GiB = 1 << 30
MiB = 1 << 20


def make_host(**overrides: Any) -> HostInfo:
    """A healthy Ubuntu server with plenty of disk under its models directory."""
    fields: dict[str, Any] = {
        "hostname": "gpu-box",
        "cpu_model": "AMD EPYC 7302P 16-Core Processor",
        "cpu_physical_cores": 16,
        "cpu_logical_cores": 32,
        "memory_total_bytes": 256 * GiB,
        "memory_available_bytes": 240 * GiB,
        "os_name": "Ubuntu 24.04.1 LTS",
        "os_id": "ubuntu",
        "os_version_id": "24.04",
        "kernel": "6.8.0-45-generic",
        "architecture": "x86_64",
        "models_dir": Path("/var/lib/llm-appliance/models"),
        "disk_measured_at": Path("/var/lib/llm-appliance/models"),
        "disk_free_bytes": 1500 * GiB,
        "disk_total_bytes": 1800 * GiB,
        "nvidia_pci_devices": 1,
        "nouveau_loaded": False,
    }
    fields.update(overrides)
    return HostInfo(**fields)


def ready_docker(**overrides: Any) -> DockerInfo:
    """A local engine with the NVIDIA runtime registered (after `nvidia-ctk runtime configure`)."""
    fields: dict[str, Any] = {
        "base_url": "unix:///var/run/docker.sock",
        "reachable": True,
        "version": "27.5.1",
        "api_version": "1.47",
        "runtimes": ("io.containerd.runc.v2", "nvidia", "runc"),
        "default_runtime": "runc",
        "nvidia_runtime": True,
        "nvidia_hook": True,
        "cdi_spec_dirs": ("/etc/cdi", "/var/run/cdi"),
    }
    fields.update(overrides)
    return DockerInfo(**fields)


def bare_docker(**overrides: Any) -> DockerInfo:
    """A reachable engine without any NVIDIA support: Debian's docker.io, fresh."""
    fields: dict[str, Any] = {
        "runtimes": ("io.containerd.runc.v2", "runc"),
        "nvidia_runtime": False,
        "nvidia_hook": False,
        "cdi_spec_dirs": (),
    }
    fields.update(overrides)
    return ready_docker(**fields)


def make_device(index: int = 0, **overrides: Any) -> NvmlDevice:
    """An idle L40S as NVML reports it."""
    fields: dict[str, Any] = {
        "index": index,
        "name": "NVIDIA L40S",
        "uuid": f"GPU-00000000-0000-0000-0000-00000000000{index}",
        "memory_total_bytes": 46068 * MiB,
        "memory_used_bytes": 0,
        "memory_free_bytes": 45460 * MiB,
        "memory_reserved_bytes": 609 * MiB,
        "compute_capability": (8, 9),
        "enforced_power_limit_mw": 350_000,
        "processes": (),
    }
    fields.update(overrides)
    return NvmlDevice(**fields)


def recording(
    *devices: NvmlDevice,
    pairs: tuple[NvmlPair, ...] = (),
    cuda: int = 12040,
    driver: str = "550.127.05",
) -> NvmlRecording:
    return NvmlRecording(
        system=NvmlSystem(
            driver_version=driver, cuda_driver_version=cuda, device_count=len(devices)
        ),
        devices=devices,
        pairs=pairs,
    )


def box_of(
    reading: NvmlRecording, *, host: HostInfo | None = None, docker: DockerInfo | None = None
) -> Box:
    return build_box(
        reading, host=host or make_host(), docker=docker or ready_docker(), source="nvml"
    )


def codes(box: Box) -> list[str]:
    return [finding.code for finding in box.findings]


def make_gpu(index: int = 0, **overrides: Any) -> GpuInfo:
    fields: dict[str, Any] = {
        "index": index,
        "name": "NVIDIA GeForce RTX 4090",
        "uuid": f"GPU-{index}",
        "catalog_key": "rtx4090",
        "memory_total_bytes": 24564 * MiB,
        "memory_used_bytes": 0,
        "compute_capability": (8, 9),
    }
    fields.update(overrides)
    return GpuInfo(**fields)


# ---------------------------------------------------------------------------------- healthy


def test_a_healthy_box_can_serve_with_no_findings() -> None:
    box = box_of(recording(make_device()))
    assert box.findings == ()
    assert box.can_serve
    assert box.serving_blockers() == ()
    assert box.gpus[0].catalog_key == "l40s"


# ---------------------------------------------------------------------------------- driver


@pytest.mark.parametrize(
    ("os_id", "expected"),
    [
        ("ubuntu", "sudo ubuntu-drivers install --gpgpu"),
        ("debian", "nvidia-driver firmware-misc-nonfree"),
        ("rocky", "driver-installation-guide"),
    ],
)
def test_no_driver_is_an_error_with_the_install_commands_for_this_os(
    os_id: str, expected: str
) -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="NVML Shared Library Not Found")
    box = box_of(NvmlRecording(unavailable=unavailable), host=make_host(os_id=os_id))
    finding = box.finding(rules.NO_DRIVER)
    assert finding is not None
    assert finding.severity == "error"
    assert finding.what.startswith("no NVIDIA driver found")
    assert "1 NVIDIA GPU(s) are on the PCI bus" in finding.what
    assert finding.fix is not None
    assert expected in finding.fix
    assert "sudo reboot" in finding.fix or os_id == "rocky"
    assert "never installs it" in finding.fix
    assert box.nvml_error == "NVML Shared Library Not Found"
    assert not box.can_serve


def test_ubuntu_derivatives_get_the_ubuntu_commands() -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="NVML Shared Library Not Found")
    mint = make_host(os_id="linuxmint", os_like=("ubuntu", "debian"))
    finding = box_of(NvmlRecording(unavailable=unavailable), host=mint).finding(rules.NO_DRIVER)
    assert finding is not None
    assert finding.fix is not None
    assert "ubuntu-drivers install --gpgpu" in finding.fix
    assert "firmware-misc-nonfree" not in finding.fix


def test_no_driver_and_no_gpu_on_the_bus_still_names_the_missing_driver() -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="NVML Shared Library Not Found")
    box = box_of(
        NvmlRecording(unavailable=unavailable),
        host=make_host(nvidia_pci_devices=0, os_id="debian"),
        docker=bare_docker(),
    )
    assert codes(box) == [rules.NO_DRIVER]  # no GPU anywhere: the toolkit is not asked for
    finding = box.findings[0]
    assert "no NVIDIA GPU on the PCI bus" in finding.what
    assert finding.fix is not None
    assert "--simulate" in finding.fix
    # #16 item 17: no GPU to drive, so no driver recipe to follow.
    assert "apt-get install" not in finding.fix
    assert "nvidia-smi" not in finding.fix


def test_the_fix_mentions_nouveau_when_it_is_loaded() -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="Driver Not Loaded")
    box = box_of(NvmlRecording(unavailable=unavailable), host=make_host(nouveau_loaded=True))
    finding = box.finding(rules.NO_DRIVER)
    assert finding is not None
    assert finding.fix is not None
    assert "nouveau" in finding.fix


@pytest.mark.parametrize(
    ("kind", "code", "fix_part"),
    [
        ("driver-mismatch", rules.DRIVER_MISMATCH, "sudo reboot"),
        ("no-permission", rules.NVML_NO_PERMISSION, "ls -l /dev/nvidia*"),
        ("error", rules.NVML_ERROR, "dmesg"),
    ],
)
def test_other_nvml_failures_are_errors_with_their_own_fix(
    kind: str, code: str, fix_part: str
) -> None:
    unavailable = NvmlUnavailable(kind=kind, message="something NVML said")
    box = box_of(NvmlRecording(unavailable=unavailable))
    finding = box.finding(code)
    assert finding is not None
    assert finding.severity == "error"
    assert finding.fix is not None
    assert fix_part in finding.fix


def test_a_driver_that_sees_no_gpu_is_an_error() -> None:
    box = box_of(recording())
    assert codes(box) == [rules.NO_GPU]
    assert not box.can_serve


def test_a_lost_gpu_is_an_error_and_the_others_are_still_reported() -> None:
    lost = NvmlDevice(index=1, error="GPU is lost")
    box = box_of(recording(make_device(0), lost))
    assert [gpu.index for gpu in box.gpus] == [0]
    finding = box.finding(rules.GPU_UNREADABLE)
    assert finding is not None
    assert finding.gpus == (1,)
    assert "GPU is lost" in finding.what
    assert finding.fix is not None
    assert "nvidia-smi -i 1 -r" in finding.fix


def test_a_geforce_card_on_a_driver_older_than_every_pinned_vllm_build_cannot_serve() -> None:
    # Ubuntu 24.04's nvidia-driver-570: the 4090 cannot start v0.32.0 (CUDA 13.0) nor -cu129.
    box = box_of(
        recording(make_device(name="NVIDIA GeForce RTX 4090"), cuda=12080, driver="570.195.03")
    )
    finding = box.finding(rules.DRIVER_TOO_OLD)
    assert finding is not None
    assert finding.severity == "error"
    assert "570.195.03" in finding.what
    assert "v0.32.0-cu129 needs 575.51.03" in finding.what
    assert "v0.32.0 needs 580.65.06" in finding.what
    assert "GeForce" in finding.what
    assert finding.fix is not None
    assert "sudo ubuntu-drivers install --gpgpu nvidia:580-server" in finding.fix
    assert not box.can_serve


def test_the_driver_upgrade_on_debian_uses_nvidias_repository_pinned_to_the_branch() -> None:
    debian = make_host(os_id="debian", os_like=(), os_version_id="12")
    box = box_of(
        recording(make_device(name="NVIDIA GeForce RTX 4090"), driver="550.163.01"), host=debian
    )
    finding = box.finding(rules.DRIVER_TOO_OLD)
    assert finding is not None
    assert finding.fix is not None
    assert "cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb" in finding.fix
    assert "sudo apt-get install -y nvidia-driver-pinning-580" in finding.fix
    assert "ubuntu-drivers" not in finding.fix


@pytest.mark.parametrize("driver", ["550.127.05", "570.195.03", "535.261.03"])
def test_a_datacenter_card_on_an_admitted_older_branch_runs_the_cuda_12_9_build(
    driver: str,
) -> None:
    box = box_of(recording(make_device(), driver=driver))  # an L40S
    assert rules.DRIVER_TOO_OLD not in codes(box)


def test_a_branch_the_images_do_not_admit_is_refused_even_on_a_datacenter_card() -> None:
    box = box_of(recording(make_device(), driver="555.42.06"))  # R555: end of life, not listed
    finding = box.finding(rules.DRIVER_TOO_OLD)
    assert finding is not None
    assert "branch 555" in finding.what


# ---------------------------------------------------------------------------------- per GPU


def test_memory_held_by_other_processes_is_a_warning_naming_them() -> None:
    holder = {"pid": 4242, "name": "/usr/local/bin/ollama", "used_memory_bytes": 19 * GiB}
    device = make_device(
        memory_used_bytes=19 * GiB + 300 * MiB,
        processes=(
            {**holder, "type": "C"},
            {
                "pid": 1606,
                "name": "/usr/lib/xorg/Xorg",
                "used_memory_bytes": 300 * MiB,
                "type": "G",
            },
        ),
    )
    box = box_of(recording(device))
    finding = box.finding(rules.GPU_MEMORY_IN_USE)
    assert finding is not None
    assert finding.severity == "warning"
    assert "pid 4242 ollama 19.0 GiB" in finding.what
    assert finding.what.index("4242") < finding.what.index("1606")  # biggest first
    assert finding.fix is not None
    assert "gpu_memory_utilization" in finding.fix
    assert box.can_serve


def test_the_drivers_own_reservation_is_not_memory_in_use() -> None:
    box = box_of(recording(make_device(memory_used_bytes=608 * MiB)))
    assert rules.GPU_MEMORY_IN_USE not in codes(box)


def test_mig_enabled_is_a_warning_with_the_command_that_disables_it() -> None:
    box = box_of(recording(make_device(2, mig_mode_current=1, mig_mode_pending=1)))
    finding = box.finding(rules.MIG_ENABLED)
    assert finding is not None
    assert finding.fix is not None
    assert "sudo nvidia-smi -i 2 -mig 0" in finding.fix
    assert rules.MIG_CHANGE_PENDING not in codes(box)


def test_a_pending_mig_change_is_reported() -> None:
    box = box_of(recording(make_device(mig_mode_current=0, mig_mode_pending=1)))
    assert rules.MIG_CHANGE_PENDING in codes(box)
    assert rules.MIG_ENABLED not in codes(box)


def test_a_card_missing_from_the_catalog_still_works_with_its_nvml_numbers() -> None:
    device = make_device(
        name="NVIDIA RTX 6000D", memory_total_bytes=85651 * MiB, compute_capability=(12, 0)
    )
    box = box_of(recording(device))
    finding = box.finding(rules.GPU_NOT_IN_CATALOG)
    assert finding is not None
    assert finding.severity == "info"
    assert "83.6 GiB" in finding.what
    assert "compute capability 12.0" in finding.what
    assert box.gpus[0].catalog_key is None
    assert box.can_serve


def test_a_unified_memory_gpu_without_a_size_is_a_warning() -> None:
    device = make_device(
        memory_total_bytes=None,
        memory_used_bytes=None,
        memory_free_bytes=None,
        memory_reserved_bytes=None,
    )
    box = box_of(recording(device))
    assert rules.GPU_MEMORY_UNKNOWN in codes(box)
    assert box.gpu_memory_total_bytes is None


# ---------------------------------------------------------------------------------- P2P


def _two_4090s(pair: NvmlPair) -> NvmlRecording:
    card = {
        "name": "NVIDIA GeForce RTX 4090",
        "memory_total_bytes": 24564 * MiB,
        "memory_free_bytes": 24564 * MiB,
        "memory_reserved_bytes": None,
    }
    # R580: a GeForce box that can start the engines, so only the P2P caveat remains.
    return recording(
        make_device(0, **card),
        make_device(1, **card),
        pairs=(pair,),
        cuda=13000,
        driver="580.95.05",
    )


@pytest.mark.parametrize("status", [2, 5, 1])
def test_consumer_cards_without_p2p_get_the_custom_all_reduce_caveat(status: int) -> None:
    box = box_of(_two_4090s(NvmlPair(gpus=(0, 1), p2p_read_status=status, topology_level=30)))
    finding = box.finding(rules.NO_P2P)
    assert finding is not None
    assert finding.severity == "warning"
    assert finding.gpus == (0, 1)
    assert "GeForce" in finding.what
    assert finding.fix is not None
    assert "--disable-custom-all-reduce" in finding.fix
    assert "NCCL_P2P_DISABLE=1" in finding.fix
    assert box.peer_to_peer is False
    assert box.gpu_links[0].topology == "PHB"
    assert box.can_serve


def test_p2p_that_nvml_reports_ok_needs_no_caveat() -> None:
    # e.g. a patched driver: NVML's answer wins over the catalog's default.
    box = box_of(_two_4090s(NvmlPair(gpus=(0, 1), p2p_read_status=0, nvlink_status=5)))
    assert rules.NO_P2P not in codes(box)
    assert box.peer_to_peer is True
    assert box.gpu_links[0].nvlink is False


def test_unknown_p2p_falls_back_to_the_catalog() -> None:
    box = box_of(_two_4090s(NvmlPair(gpus=(0, 1))))
    assert rules.NO_P2P in codes(box)
    assert box.peer_to_peer is None

    l40s = box_of(recording(make_device(0), make_device(1), pairs=(NvmlPair(gpus=(0, 1)),)))
    assert rules.NO_P2P not in codes(l40s)


def test_one_gpu_has_no_p2p_question() -> None:
    gpus = [make_gpu(0)]
    assert (
        rules.assess(
            gpus=gpus,
            links=[],
            host=make_host(),
            docker=ready_docker(),
            unavailable=None,
            unreadable={},
            specs={},
            cuda_driver_version="12.4",
        )
        == ()
    )


# ---------------------------------------------------------------------------------- Docker


@pytest.mark.parametrize(
    ("problem", "code", "fix_parts"),
    [
        (
            "not-installed",
            rules.DOCKER_NOT_INSTALLED,
            ["sudo apt-get install -y docker.io", "systemctl enable --now docker"],
        ),
        ("not-running", rules.DOCKER_NOT_RUNNING, ["sudo systemctl enable --now docker"]),
        (
            "permission-denied",
            rules.DOCKER_PERMISSION_DENIED,
            ["sudo usermod -aG docker $USER", "log out"],
        ),
        ("unreachable", rules.DOCKER_UNREACHABLE, ["docker version"]),
    ],
)
def test_docker_problems_are_errors_with_their_fix(
    problem: str, code: str, fix_parts: list[str]
) -> None:
    docker = DockerInfo(
        base_url="unix:///var/run/docker.sock", reachable=False, problem=problem, error="boom"
    )
    box = box_of(recording(make_device()), docker=docker)
    assert codes(box) == [code]
    finding = box.findings[0]
    assert finding.severity == "error"
    assert finding.fix is not None
    for part in fix_parts:
        assert part in finding.fix
    assert not box.can_serve


def test_gpus_without_the_container_toolkit_is_an_error_with_nvidias_commands() -> None:
    box = box_of(recording(make_device()), docker=bare_docker())
    finding = box.finding(rules.NO_CONTAINER_TOOLKIT)
    assert finding is not None
    assert finding.severity == "error"
    assert finding.fix is not None
    for part in (
        "https://nvidia.github.io/libnvidia-container/gpgkey",
        "stable/deb/nvidia-container-toolkit.list",
        "sudo apt-get install -y nvidia-container-toolkit",
        "sudo nvidia-ctk runtime configure --runtime=docker",
        "sudo systemctl restart docker",
    ):
        assert part in finding.fix
    assert box.serving_blockers() == (finding,)


@pytest.mark.parametrize(
    "docker",
    [
        bare_docker(nvidia_hook=True),  # toolkit installed, runtime not registered: --gpus works
        bare_docker(nvidia_runtime=True, runtimes=("nvidia", "runc")),
        bare_docker(cdi_devices=("nvidia.com/gpu=0", "nvidia.com/gpu=all")),
    ],
    ids=["hook", "runtime", "cdi"],
)
def test_any_one_route_to_the_gpu_satisfies_the_toolkit_check(docker: DockerInfo) -> None:
    assert docker.gpu_containers_possible
    assert rules.NO_CONTAINER_TOOLKIT not in codes(box_of(recording(make_device()), docker=docker))


def test_the_toolkit_is_asked_for_when_gpus_are_on_the_bus_but_the_driver_is_missing() -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="NVML Shared Library Not Found")
    box = box_of(NvmlRecording(unavailable=unavailable), docker=bare_docker())
    assert codes(box) == [rules.NO_DRIVER, rules.NO_CONTAINER_TOOLKIT]


def test_a_machine_without_gpus_is_not_asked_for_the_toolkit() -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="NVML Shared Library Not Found")
    box = box_of(
        NvmlRecording(unavailable=unavailable),
        host=make_host(nvidia_pci_devices=0),
        docker=bare_docker(),
    )
    assert rules.NO_CONTAINER_TOOLKIT not in codes(box)


# ---------------------------------------------------------------------------------- disk


def test_low_disk_under_the_models_directory_is_a_warning() -> None:
    host = make_host(
        models_dir=Path("/srv/models"), disk_measured_at=Path("/srv"), disk_free_bytes=12 * GiB
    )
    box = box_of(recording(make_device()), host=host)
    finding = box.finding(rules.LOW_DISK)
    assert finding is not None
    assert finding.severity == "warning"
    assert "12.0 GiB free" in finding.what
    assert "/srv/models" in finding.what
    assert "measured at /srv" in finding.what
    assert box.can_serve


def test_findings_come_errors_first() -> None:
    host = make_host(disk_free_bytes=1 * GiB)
    device = make_device(name="Mystery GPU", memory_used_bytes=5 * GiB)
    box = box_of(recording(device), host=host, docker=bare_docker())
    severities = [finding.severity for finding in box.findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert severities[0] == "error"
    assert severities[-1] == "info"


def test_process_names_are_shown_without_their_directories() -> None:
    gpu = make_gpu(
        memory_used_bytes=4 * GiB,
        processes=(GpuProcess(pid=7, name="/opt/venv/bin/python3", used_memory_bytes=4 * GiB),),
    )
    found = rules.assess(
        gpus=[gpu],
        links=[],
        host=make_host(),
        docker=ready_docker(),
        unavailable=None,
        unreadable={},
        specs={},
        cuda_driver_version="12.4",
    )
    assert [f.code for f in found] == [rules.GPU_MEMORY_IN_USE]
    assert "pid 7 python3 4.0 GiB" in found[0].what
