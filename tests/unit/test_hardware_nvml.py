"""The live NVML source against pynvml's real exception classes, and the driverless machine.

`FakeDriver` stands in for the pynvml module: it carries pynvml's own constants and NVMLError
classes and answers the device calls from a table, raising exactly what the driver raises
(NVMLError_NotSupported, NVMLError_GpuIsLost, NVMLError_LibraryNotFound, …). So the mapping
from NVML errors to `None` fields and "no driver" findings is tested against the real types.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml  # noqa: TID251 - the tests build the driver's own exceptions
import pytest

from appliance.hardware import detect_box, findings
from appliance.hardware.nvml import (
    LiveNvml,
    NvmlDevice,
    NvmlPair,
    NvmlRecording,
    NvmlSystem,
    NvmlUnavailable,
    RecordedNvml,
    read_nvml,
)
from tests.unit.test_hardware_findings import bare_docker, make_host, ready_docker

MiB = 1 << 20
NOT_SUPPORTED = object()


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeDriver:
    """pynvml's module surface: real constants and error classes, device answers from a table."""

    def __init__(
        self,
        devices: list[dict[str, Any]] | None = None,
        *,
        init_error: Exception | None = None,
        pairs: dict[tuple[int, int], dict[str, Any]] | None = None,
        with_memory_v2: bool = True,
        with_temperature_v: bool = True,
        with_clocks_event_reasons: bool = True,
    ) -> None:
        for name in dir(pynvml):
            if name.startswith("NVML") or name == "nvmlMemory_v2":
                setattr(self, name, getattr(pynvml, name))
        if not with_memory_v2:
            del self.nvmlMemory_v2
        if with_temperature_v:
            self.nvmlDeviceGetTemperatureV = self._temperature
        # NVML 12.2 renamed "throttle reasons"; older bindings only have the old name.
        if with_clocks_event_reasons:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._clocks_event_reasons
        else:
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._clocks_event_reasons
        self.devices = devices or []
        self.pairs = pairs or {}
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    # -- library

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.163.01"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if self.devices[index].get("lost_handle"):
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        names = {4242: "/usr/local/bin/ollama", 1606: "/usr/lib/xorg/Xorg"}
        if pid not in names:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return names[pid]

    # -- per device

    def _answer(self, handle: int, key: str) -> Any:
        value = self.devices[handle].get(key, NOT_SUPPORTED)
        if value is NOT_SUPPORTED:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._answer(handle, "name")

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._answer(handle, "uuid")

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._answer(handle, "bus_id"))

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        total, used, free, reserved = self._answer(handle, "memory")
        if version is None:  # v1: the driver's reservation counts as used
            return SimpleNamespace(total=total, used=used + reserved, free=free)
        if not hasattr(self, "nvmlMemory_v2"):
            raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return SimpleNamespace(total=total, used=used, free=free, reserved=reserved)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self._answer(handle, "cc")

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: int) -> int:
        return self._answer(handle, "gen")

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: int) -> int:
        return self._answer(handle, "width")

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: int) -> int:
        return self._answer(handle, "gen_max")

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: int) -> int:
        return self._answer(handle, "width_max")

    def _temperature(self, handle: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._answer(handle, "temperature")

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._temperature(handle, sensor)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._answer(handle, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._answer(handle, "limit_mw")

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        gpu, memory = self._answer(handle, "utilization")
        return SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetMigMode(self, handle: int) -> list[int]:
        return self._answer(handle, "mig")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._answer(handle, "compute")]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._answer(handle, "graphics")
        ]

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return self._answer(handle, "clocks")[clock]

    def _clocks_event_reasons(self, handle: int) -> int:
        return self._answer(handle, "clocks_event_reasons")

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter: int) -> int:
        assert counter == pynvml.NVML_VOLATILE_ECC
        return self._answer(handle, "ecc")[error_type]

    def nvmlDeviceGetNvLinkState(self, handle: int, link: int) -> int:
        links = self._answer(handle, "nvlink")
        if link >= len(links):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return links[link]

    # -- per pair

    def nvmlDeviceGetP2PStatus(self, one: int, two: int, capability: int) -> int:
        pair = self.pairs.get((one, two), {})
        key = "nvlink" if capability == pynvml.NVML_P2P_CAPS_INDEX_NVLINK else "read"
        if key not in pair:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pair[key]

    def nvmlDeviceGetTopologyCommonAncestor(self, one: int, two: int) -> int:
        pair = self.pairs.get((one, two), {})
        if "topology" not in pair:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pair["topology"]


def rtx4090(**overrides: Any) -> dict[str, Any]:
    """A GeForce RTX 4090 answering everything a GeForce card answers."""
    device: dict[str, Any] = {
        "name": "NVIDIA GeForce RTX 4090",
        "uuid": "GPU-a91a72c4-6733-ae33-c532-f159bfc07477",
        "bus_id": "00000000:01:00.0",
        "memory": (24564 * MiB, 400 * MiB, 23752 * MiB, 412 * MiB),
        "cc": (8, 9),
        "gen": 1,
        "width": 16,
        "gen_max": 4,
        "width_max": 16,
        "temperature": 42,
        "power_mw": 37_123,
        "limit_mw": 450_000,
        "utilization": (11, 3),
        "mig": nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED),
        "compute": [(4242, 19 * 1024 * MiB)],
        "graphics": [(1606, 300 * MiB), (4242, None)],
        "nvlink": nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED),
        "clocks": {pynvml.NVML_CLOCK_SM: 2520, pynvml.NVML_CLOCK_MEM: 10501},
        "clocks_event_reasons": 0x1,  # GPU idle
        "ecc": nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED),  # GeForce: no ECC
    }
    device.update(overrides)
    return device


# ---------------------------------------------------------------------------------- no driver


@pytest.mark.parametrize(
    "error",
    [
        pynvml.NVMLError_LibraryNotFound(),
        pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
    ],
    ids=["library-not-found", "driver-not-loaded"],
)
def test_no_driver_is_a_report_not_an_exception(error: pynvml.NVMLError, tmp_path: Path) -> None:
    driver = FakeDriver(init_error=error)
    assert isinstance(LiveNvml(driver).open(), NvmlUnavailable)

    box = detect_box(
        nvml=LiveNvml(driver), models_dir=tmp_path, host=make_host(), docker=ready_docker()
    )
    assert box.source == "nvml"
    assert box.gpus == ()
    assert box.nvml_error == str(error)
    finding = box.finding(findings.NO_DRIVER)
    assert finding is not None
    assert finding.what.startswith("no NVIDIA driver found")
    assert box.serving_blockers() == (finding,)
    assert driver.shutdowns == 0  # nothing was initialised, so nothing is shut down


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "driver-mismatch"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no-permission"),
        (pynvml.NVML_ERROR_UNKNOWN, "error"),
    ],
)
def test_init_failures_map_to_what_the_operator_must_fix(code: int, kind: str) -> None:
    opened = LiveNvml(FakeDriver(init_error=nvml_error(code))).open()
    assert isinstance(opened, NvmlUnavailable)
    assert opened.kind == kind
    assert opened.message == str(nvml_error(code))


def test_this_machine_without_a_driver_reports_no_driver(tmp_path: Path) -> None:
    """The real pynvml on the machine running the tests; no NVIDIA library here means no driver."""
    box = detect_box(models_dir=tmp_path, docker=bare_docker())
    if ctypes.util.find_library("nvidia-ml") is None:
        finding = box.finding(findings.NO_DRIVER)
        assert finding is not None, box.findings
        assert finding.severity == "error"
        assert box.nvml_error is not None
        assert not box.can_serve
    else:  # a GPU machine: the driver answers, and nothing says it is missing
        assert box.finding(findings.NO_DRIVER) is None


# ---------------------------------------------------------------------------------- devices


def test_a_full_reading_of_a_geforce_card() -> None:
    driver = FakeDriver([rtx4090()])
    reading = read_nvml(LiveNvml(driver))
    assert reading.system == NvmlSystem(
        driver_version="550.163.01", cuda_driver_version=12040, device_count=1
    )
    device = reading.devices[0]
    assert device.name == "NVIDIA GeForce RTX 4090"
    assert device.pci_bus_id == "00000000:01:00.0"
    assert (device.memory_total_bytes, device.memory_used_bytes) == (24564 * MiB, 400 * MiB)
    assert device.memory_reserved_bytes == 412 * MiB
    assert device.compute_capability == (8, 9)
    assert (device.pcie_generation, device.pcie_generation_max) == (1, 4)
    assert device.power_usage_mw == 37_123
    assert device.mig_mode_current is None
    assert device.nvlink_active_links is None
    assert (device.sm_clock_mhz, device.memory_clock_mhz) == (2520, 10501)
    assert device.clocks_event_reasons == 0x1
    assert (device.ecc_errors_corrected, device.ecc_errors_uncorrected) == (None, None)
    processes = {p.pid: p for p in device.processes or ()}
    assert processes[4242].type == "C+G"
    assert processes[4242].name == "/usr/local/bin/ollama"
    assert processes[4242].used_memory_bytes == 19 * 1024 * MiB
    assert processes[1606].type == "G"
    assert (driver.inits, driver.shutdowns) == (1, 1)


def test_not_supported_fields_become_none_and_the_rest_survives() -> None:
    unsupported = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    card = rtx4090(
        power_mw=unsupported,  # the card with no power sensor
        limit_mw=unsupported,
        temperature=unsupported,
        utilization=unsupported,
        gen=unsupported,
        width=unsupported,
        compute=unsupported,
        graphics=unsupported,
        uuid=nvml_error(pynvml.NVML_ERROR_NO_PERMISSION),  # any other per-field error too
    )
    box = detect_box(nvml=LiveNvml(FakeDriver([card])), host=make_host(), docker=ready_docker())
    gpu = box.gpus[0]
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total_bytes == 24564 * MiB
    assert gpu.power_draw_w is None
    assert gpu.power_limit_w is None
    assert gpu.temperature_c is None
    assert gpu.utilization_gpu_pct is None
    assert gpu.utilization_memory_pct is None
    assert gpu.pcie_generation is None
    assert gpu.processes is None
    assert gpu.mig_mode is None
    assert gpu.uuid == "unknown-uuid-0"
    # Missing readings block nothing; what blocks is the fake driver: R550 runs no pinned vLLM
    # build on a GeForce card.
    assert [f.code for f in box.serving_blockers()] == ["driver-too-old"]


def test_clocks_event_reasons_and_ecc_counts_reach_the_monitor() -> None:
    from appliance.monitor.samplers import gpu_stats, throttle_reason_names

    card = rtx4090(
        name="NVIDIA A100-SXM4-80GB",
        clocks_event_reasons=0x4 | 0x20,  # software power cap, software thermal slowdown
        ecc={
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: 3,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 0,
        },
    )
    driver = FakeDriver([card])
    stats = gpu_stats(read_nvml(LiveNvml(driver)).devices[0])
    assert (stats.ecc_errors_corrected, stats.ecc_errors_uncorrected) == (3, 0)
    assert stats.sm_clock_mhz == 2520
    assert stats.throttle_reasons == throttle_reason_names(0x4 | 0x20)
    old_bindings = FakeDriver([card], with_clocks_event_reasons=False)
    assert read_nvml(LiveNvml(old_bindings)).devices[0].clocks_event_reasons == 0x4 | 0x20


def test_unified_memory_answers_not_supported_for_memory() -> None:
    card = rtx4090(name="NVIDIA GB10", memory=nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED))
    device = read_nvml(LiveNvml(FakeDriver([card]))).devices[0]
    assert device.memory_total_bytes is None
    assert device.memory_free_bytes is None


def test_old_drivers_fall_back_to_memory_v1_and_the_old_temperature_call() -> None:
    driver = FakeDriver([rtx4090()], with_memory_v2=False, with_temperature_v=False)
    device = read_nvml(LiveNvml(driver)).devices[0]
    assert device.memory_used_bytes == 812 * MiB  # v1 counts the reservation as used
    assert device.memory_reserved_bytes is None
    assert device.temperature_c == 42


def test_a_lost_gpu_is_reported_and_the_others_are_still_read() -> None:
    lost_mid_read = rtx4090(power_mw=nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST))
    driver = FakeDriver([rtx4090(), lost_mid_read, rtx4090(lost_handle=True)])
    reading = read_nvml(LiveNvml(driver))
    assert [device.error for device in reading.devices] == [None, "GPU is lost", "GPU is lost"]
    assert reading.pairs == ()  # only one readable GPU: no pairs to ask about
    box = detect_box(nvml=LiveNvml(driver), host=make_host(), docker=ready_docker())
    assert [gpu.index for gpu in box.gpus] == [0]
    assert [f.gpus for f in box.findings if f.code == findings.GPU_UNREADABLE] == [(1,), (2,)]


def test_nvlink_counts_active_links_up_to_the_cards_last_one() -> None:
    card = rtx4090(name="NVIDIA H100 80GB HBM3", nvlink=[1] * 17 + [0])
    assert read_nvml(LiveNvml(FakeDriver([card]))).devices[0].nvlink_active_links == 17


def test_pairs_carry_p2p_nvlink_and_topology() -> None:
    pairs = {(0, 1): {"read": 2, "nvlink": 5, "topology": 30}}
    reading = read_nvml(LiveNvml(FakeDriver([rtx4090(), rtx4090()], pairs=pairs)))
    assert reading.pairs == (
        NvmlPair(gpus=(0, 1), p2p_read_status=2, nvlink_status=5, topology_level=30),
    )
    box = detect_box(
        nvml=LiveNvml(FakeDriver([rtx4090(), rtx4090()], pairs=pairs)),
        host=make_host(),
        docker=ready_docker(),
    )
    link = box.gpu_links[0]
    assert (link.peer_to_peer, link.nvlink, link.topology) == ("gpu-not-supported", False, "PHB")
    assert box.finding(findings.NO_P2P) is not None


def test_a_session_is_opened_and_closed_once_per_reading() -> None:
    driver = FakeDriver([rtx4090(), rtx4090()])
    source = LiveNvml(driver)
    read_nvml(source)
    read_nvml(source)
    assert (driver.inits, driver.shutdowns) == (2, 2)
    source.close()  # closing twice is harmless
    assert driver.shutdowns == 2


# ---------------------------------------------------------------------------------- recordings


def test_a_recording_replays_to_itself_and_survives_json() -> None:
    original = NvmlRecording(
        system=NvmlSystem(driver_version="550.163.01", cuda_driver_version=12040, device_count=2),
        devices=(NvmlDevice(index=0, name="A"), NvmlDevice(index=1, name="B")),
        pairs=(NvmlPair(gpus=(0, 1), p2p_read_status=0),),
    )
    assert read_nvml(RecordedNvml(original)) == original
    text = original.model_dump_json(by_alias=True)
    assert NvmlRecording.model_validate_json(text) == original


def test_a_live_reading_can_be_saved_as_a_fixture(tmp_path: Path) -> None:
    """How a lent GPU machine's readings become a fixture: read, dump by alias, replay."""
    reading = read_nvml(LiveNvml(FakeDriver([rtx4090()])))
    path = tmp_path / "lent-box.json"
    path.write_text(reading.model_dump_json(by_alias=True, indent=2))
    assert read_nvml(RecordedNvml.from_file(path)) == reading


def test_an_unavailable_recording_replays_as_no_driver() -> None:
    unavailable = NvmlUnavailable(kind="no-driver", message="Driver Not Loaded")
    reading = read_nvml(RecordedNvml(NvmlRecording(unavailable=unavailable)))
    assert reading.unavailable == unavailable
    assert reading.devices == ()
