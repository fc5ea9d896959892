"""The host probe: os-release, CPU name, NVIDIA devices in sysfs, and disk under models_dir."""

from __future__ import annotations

from pathlib import Path

from appliance.hardware.host import (
    count_nvidia_pci_devices,
    nearest_existing_directory,
    probe_host,
    read_cpu_model,
    read_os_release,
)

UBUNTU = """\
PRETTY_NAME="Ubuntu 22.04.5 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
# a comment
ID=ubuntu
ID_LIKE=debian
HOME_URL='https://www.ubuntu.com/'
"""


def test_os_release_is_parsed_and_unquoted(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text(UBUNTU)
    release = read_os_release(path)
    assert release["PRETTY_NAME"] == "Ubuntu 22.04.5 LTS"
    assert release["ID"] == "ubuntu"
    assert release["VERSION_ID"] == "22.04"
    assert release["HOME_URL"] == "https://www.ubuntu.com/"
    assert read_os_release(tmp_path / "absent") == {}


def test_cpu_model_on_x86_and_arm(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    )
    assert read_cpu_model(x86) == "AMD EPYC 7763 64-Core Processor"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2000.00\n\nModel\t: NVIDIA Grace\n")
    assert read_cpu_model(arm) == "NVIDIA Grace"


def _pci(root: Path, slot: str, vendor: str, device_class: str) -> None:
    device = root / slot
    device.mkdir(parents=True)
    (device / "vendor").write_text(f"{vendor}\n")
    (device / "class").write_text(f"{device_class}\n")


def test_nvidia_display_controllers_are_counted_without_a_driver(tmp_path: Path) -> None:
    _pci(tmp_path, "0000:01:00.0", "0x10de", "0x030000")  # GeForce: VGA controller
    _pci(tmp_path, "0000:01:00.1", "0x10de", "0x040300")  # its HDMI audio function
    _pci(tmp_path, "0000:41:00.0", "0x10de", "0x030200")  # data-centre card: 3D controller
    _pci(tmp_path, "0000:00:02.0", "0x1a03", "0x030000")  # the BMC's ASPEED VGA
    assert count_nvidia_pci_devices(tmp_path) == 2
    assert count_nvidia_pci_devices(tmp_path / "absent") is None


def test_free_disk_is_measured_at_the_nearest_existing_directory(tmp_path: Path) -> None:
    models = tmp_path / "not" / "yet" / "models"
    assert nearest_existing_directory(models) == tmp_path
    host = probe_host(models, pci_devices=tmp_path / "no-sysfs")
    assert host.models_dir == models
    assert host.disk_measured_at == tmp_path
    assert host.disk_free_bytes is not None
    assert host.disk_total_bytes is not None
    assert 0 < host.disk_free_bytes <= host.disk_total_bytes
    assert host.nvidia_pci_devices is None


def test_the_real_host_is_read_in_one_pass(tmp_path: Path) -> None:
    host = probe_host(tmp_path)
    assert host.hostname
    assert host.cpu_logical_cores is not None
    assert host.cpu_logical_cores >= 1
    assert host.memory_total_bytes is not None
    assert host.memory_available_bytes is not None
    assert 0 < host.memory_available_bytes <= host.memory_total_bytes
    assert host.disk_measured_at == tmp_path
    assert host.kernel
    assert host.os_name
