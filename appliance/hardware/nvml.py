"""NVML, and nothing else: the only module that imports `pynvml` (nvidia-ml-py).

The probe reads NVML through the `NvmlSource` protocol and gets back raw readings in NVML's own
units (bytes, milliwatts, NVML status codes). Two sources implement it:

- `LiveNvml` calls the driver through pynvml. NVML's "Not Supported" (and any other per-field
  error) becomes `None` for that field; a missing library, an unloaded driver or a driver/library
  mismatch becomes an `NvmlUnavailable` value, never an exception.
- `RecordedNvml` replays an `NvmlRecording` from JSON (tests, fixtures of real cards, and the
  simulated boxes of `--simulate`).

`read_nvml()` is the one loop over a source; the box is built from its `NvmlRecording` by the same
code whatever the source was. A recording of a real machine is therefore just
`read_nvml(LiveNvml()).model_dump_json(by_alias=True)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

NvmlUnavailableKind = Literal["no-driver", "driver-mismatch", "no-permission", "error"]

# NVML status codes the probe interprets (the values are NVML's, stable across releases).
P2P_STATUS_OK = 0
NVLINK_ACTIVE = 1
MIG_ENABLED = 1


class _Reading(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NvmlUnavailable(_Reading):
    """NVML could not be used at all; `kind` says which fix applies, `message` is NVML's words."""

    kind: NvmlUnavailableKind
    message: str


class NvmlSystem(_Reading):
    """What NVML says about the driver, read once per probe."""

    driver_version: str | None = None
    cuda_driver_version: int | None = None  # NVML's integer: 12040 is CUDA 12.4
    device_count: int


class NvmlProcess(_Reading):
    pid: int
    name: str | None = None
    used_memory_bytes: int | None = None
    type: Literal["C", "G", "C+G"] = "C"


class NvmlDevice(_Reading):
    """One GPU's raw NVML readings; None is NVML's "Not Supported" (or "not recorded")."""

    index: int
    # Set when the device could not be read at all (e.g. "GPU is lost"); then only index is real.
    error: str | None = None
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    pcie_generation: int | None = None
    pcie_width: int | None = None
    pcie_generation_max: int | None = None
    pcie_width_max: int | None = None
    temperature_c: int | None = None
    power_usage_mw: int | None = None
    enforced_power_limit_mw: int | None = None
    utilization_gpu_pct: int | None = None
    utilization_memory_pct: int | None = None
    mig_mode_current: int | None = None
    mig_mode_pending: int | None = None
    processes: tuple[NvmlProcess, ...] | None = None
    nvlink_active_links: int | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    # nvmlDeviceGetCurrentClocksEventReasons: a bit mask (power cap, thermal slowdown, ...).
    clocks_event_reasons: int | None = None
    # Volatile ECC error counts (since the driver loaded); None on cards without ECC.
    ecc_errors_corrected: int | None = None
    ecc_errors_uncorrected: int | None = None


class NvmlPair(_Reading):
    """How two GPUs see each other (`gpus` is (lower index, higher index))."""

    gpus: tuple[int, int]
    p2p_read_status: int | None = None  # NVML_P2P_STATUS_*: 0 is OK
    nvlink_status: int | None = None  # NVML_P2P_STATUS_* for the NVLink capability
    topology_level: int | None = None  # NVML_TOPOLOGY_*: 0 board … 50 system


class RecordingSource(_Reading):
    """Where a recording came from: a published dump to cite, or a machine it was taken on."""

    citation: str
    url: str | None = None
    notes: tuple[str, ...] = ()


class NvmlRecording(_Reading):
    """Everything one pass over NVML returned; also the format of `tests/fixtures/nvml/*.json`."""

    source: RecordingSource | None = Field(default=None, alias="_source")
    unavailable: NvmlUnavailable | None = None
    system: NvmlSystem | None = None
    devices: tuple[NvmlDevice, ...] = ()
    pairs: tuple[NvmlPair, ...] = ()


class NvmlSource(Protocol):
    """What the hardware probe reads from NVML. Calls happen between `open()` and `close()`."""

    def open(self) -> NvmlSystem | NvmlUnavailable:
        """Start a session; why NVML cannot be used is a value, not an exception."""
        ...

    def device(self, index: int) -> NvmlDevice: ...

    def pair(self, first: int, second: int) -> NvmlPair: ...

    def close(self) -> None: ...


def read_nvml(source: NvmlSource) -> NvmlRecording:
    """One pass over a source: the system, every device, every pair of devices."""
    opened = source.open()
    if isinstance(opened, NvmlUnavailable):
        return NvmlRecording(unavailable=opened)
    try:
        count = opened.device_count
        devices = tuple(source.device(index) for index in range(count))
        readable = [device.index for device in devices if device.error is None]
        pairs = tuple(
            source.pair(first, second)
            for position, first in enumerate(readable)
            for second in readable[position + 1 :]
        )
    finally:
        source.close()
    return NvmlRecording(system=opened, devices=devices, pairs=pairs)


class RecordedNvml:
    """Replays a recording: the same readings, in the same order, every time."""

    def __init__(self, recording: NvmlRecording) -> None:
        self.recording = recording
        self._devices = {device.index: device for device in recording.devices}
        self._pairs = {pair.gpus: pair for pair in recording.pairs}

    @classmethod
    def from_file(cls, path: Path) -> RecordedNvml:
        return cls(NvmlRecording.model_validate_json(path.read_bytes()))

    def open(self) -> NvmlSystem | NvmlUnavailable:
        if self.recording.unavailable is not None:
            return self.recording.unavailable
        if self.recording.system is not None:
            return self.recording.system
        return NvmlSystem(device_count=len(self.recording.devices))

    def device(self, index: int) -> NvmlDevice:
        return self._devices.get(index) or NvmlDevice(index=index, error="not in the recording")

    def pair(self, first: int, second: int) -> NvmlPair:
        return self._pairs.get((first, second)) or NvmlPair(gpus=(first, second))

    def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------- live NVML

# nvmlInit/nvmlShutdown are reference counted by NVML, but the first load of the library and the
# init are not safe to race from two threads (the TUI probes from workers): one lock for all.
_SESSION_LOCK = threading.Lock()

_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_GPU_IS_LOST = 15
_NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
_NVML_P2P_CAPS_INDEX_READ = 0  # pynvml spells this constant as a tuple `(0,)` by mistake
_NVML_TEMPERATURE_GPU = 0


class _DeviceLostError(Exception):
    """A GPU stopped answering mid-read (NVML "GPU is lost"); the whole device is unreadable."""


def _import_pynvml() -> Any:
    import pynvml  # noqa: TID251 - this module is the one door for NVML

    return pynvml


def _unavailable(error: Exception) -> NvmlUnavailable:
    """Map an error from nvmlInit to the case the operator has to fix."""
    value = getattr(error, "value", None)
    message = str(error)
    if isinstance(error, OSError):  # the shared library exists but cannot be loaded
        return NvmlUnavailable(kind="no-driver", message=message)
    if value in (_NVML_ERROR_LIBRARY_NOT_FOUND, _NVML_ERROR_DRIVER_NOT_LOADED):
        return NvmlUnavailable(kind="no-driver", message=message)
    if value == _NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return NvmlUnavailable(kind="driver-mismatch", message=message)
    if value == _NVML_ERROR_NO_PERMISSION:
        return NvmlUnavailable(kind="no-permission", message=message)
    return NvmlUnavailable(kind="error", message=message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LiveNvml:
    """The driver's NVML, through pynvml.

    NVML is initialised once per session, under a process-wide lock: `open()` to `close()`.
    `read_nvml()` holds one session for one snapshot; a sampler that reads every second keeps one
    session open and calls `device()` each time, rather than re-initialising NVML at 1 Hz. Device
    handles are cached for the session, so one instance belongs to one thread at a time.

    `library` is the pynvml module by default; tests pass a stand-in that raises pynvml's real
    exception classes, so every error path here runs against the types the driver produces.
    """

    def __init__(self, library: Any = None) -> None:
        self._library = library
        self._handles: dict[int, Any] = {}
        self._open = False

    @property
    def nvml(self) -> Any:
        if self._library is None:
            self._library = _import_pynvml()
        return self._library

    # -- session

    def open(self) -> NvmlSystem | NvmlUnavailable:
        try:
            nvml = self.nvml
        except ImportError as error:  # nvidia-ml-py missing: a broken install, reported plainly
            return NvmlUnavailable(kind="error", message=f"nvidia-ml-py is not installed: {error}")
        with _SESSION_LOCK:
            try:
                nvml.nvmlInit()
            except (nvml.NVMLError, OSError) as error:
                return _unavailable(error)
            self._open = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as error:
            self.close()
            return _unavailable(error)
        return NvmlSystem(
            driver_version=self._system(nvml.nvmlSystemGetDriverVersion, _text),
            cuda_driver_version=self._system(nvml.nvmlSystemGetCudaDriverVersion, int),
            device_count=count,
        )

    def close(self) -> None:
        with _SESSION_LOCK:
            if not self._open:
                return
            self._open = False
            self._handles.clear()
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError as error:
                log.debug("nvmlShutdown failed: %s", error)

    def _system(self, query: Callable[[], Any], convert: Callable[[Any], Any]) -> Any:
        try:
            return convert(query())
        except self.nvml.NVMLError as error:
            log.debug("NVML %s: %s", getattr(query, "__name__", query), error)
            return None

    # -- per device

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self.nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _field(self, query: Callable[..., Any], *args: Any) -> Any:
        """One NVML query; its failure costs only this field (None), unless the GPU is gone."""
        try:
            return query(*args)
        except self.nvml.NVMLError as error:
            if getattr(error, "value", None) == _NVML_ERROR_GPU_IS_LOST:
                raise _DeviceLostError(str(error)) from error
            if getattr(error, "value", None) != _NVML_ERROR_NOT_SUPPORTED:
                log.debug("NVML %s: %s", getattr(query, "__name__", query), error)
            return None

    def device(self, index: int) -> NvmlDevice:
        nvml = self.nvml
        try:
            handle = self._handle(index)
            return self._read_device(index, handle)
        except _DeviceLostError as error:
            return NvmlDevice(index=index, error=str(error))
        except nvml.NVMLError as error:  # no handle: the GPU cannot be addressed at all
            return NvmlDevice(index=index, error=str(error))

    def _read_device(self, index: int, handle: Any) -> NvmlDevice:
        nvml = self.nvml
        name = self._field(nvml.nvmlDeviceGetName, handle)
        uuid = self._field(nvml.nvmlDeviceGetUUID, handle)
        pci = self._field(nvml.nvmlDeviceGetPciInfo, handle)
        total, used, free, reserved = self._memory(handle)
        capability = self._field(nvml.nvmlDeviceGetCudaComputeCapability, handle)
        utilization = self._field(nvml.nvmlDeviceGetUtilizationRates, handle)
        mig = self._field(nvml.nvmlDeviceGetMigMode, handle)
        return NvmlDevice(
            index=index,
            name=None if name is None else _text(name),
            uuid=None if uuid is None else _text(uuid),
            pci_bus_id=None if pci is None else _text(pci.busId),
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
            memory_reserved_bytes=reserved,
            compute_capability=None
            if capability is None
            else (int(capability[0]), int(capability[1])),
            pcie_generation=self._int(nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            pcie_width=self._int(nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            pcie_generation_max=self._int(nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            pcie_width_max=self._int(nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
            temperature_c=self._temperature(handle),
            power_usage_mw=self._int(nvml.nvmlDeviceGetPowerUsage, handle),
            enforced_power_limit_mw=self._int(nvml.nvmlDeviceGetEnforcedPowerLimit, handle),
            utilization_gpu_pct=None if utilization is None else int(utilization.gpu),
            utilization_memory_pct=None if utilization is None else int(utilization.memory),
            mig_mode_current=None if mig is None else int(mig[0]),
            mig_mode_pending=None if mig is None else int(mig[1]),
            processes=self._processes(handle),
            nvlink_active_links=self._nvlink_links(handle),
            sm_clock_mhz=self._int(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
            memory_clock_mhz=self._int(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM),
            clocks_event_reasons=self._clocks_event_reasons(handle),
            ecc_errors_corrected=self._ecc(handle, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ecc_errors_uncorrected=self._ecc(handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        )

    def _clocks_event_reasons(self, handle: Any) -> int | None:
        """NVML 12.2 renamed "throttle reasons" to "clocks event reasons"; older bindings only
        have the old name."""
        nvml = self.nvml
        query = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        return None if query is None else self._int(query, handle)

    def _ecc(self, handle: Any, error_type: int) -> int | None:
        return self._int(
            self.nvml.nvmlDeviceGetTotalEccErrors, handle, error_type, self.nvml.NVML_VOLATILE_ECC
        )

    def _int(self, query: Callable[..., Any], *args: Any) -> int | None:
        value = self._field(query, *args)
        return None if value is None else int(value)

    def _memory(self, handle: Any) -> tuple[int | None, int | None, int | None, int | None]:
        """Memory v2 (used excludes the driver's reservation, as nvidia-smi shows it), else v1.

        Unified-memory systems (GH200, GB10) answer Not Supported: all four are None then.
        """
        nvml = self.nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            info = self._field(nvml.nvmlDeviceGetMemoryInfo, handle, version)
            if info is not None:
                return int(info.total), int(info.used), int(info.free), int(info.reserved)
        info = self._field(nvml.nvmlDeviceGetMemoryInfo, handle)
        if info is None:
            return None, None, None, None
        return int(info.total), int(info.used), int(info.free), None

    def _temperature(self, handle: Any) -> int | None:
        nvml = self.nvml
        # nvmlDeviceGetTemperature is deprecated for nvmlDeviceGetTemperatureV; older drivers
        # only have the former (their library lacks the V symbol: "Function Not Found").
        newer = getattr(nvml, "nvmlDeviceGetTemperatureV", None)
        if newer is not None:
            value = self._int(newer, handle, _NVML_TEMPERATURE_GPU)
            if value is not None:
                return value
        return self._int(nvml.nvmlDeviceGetTemperature, handle, _NVML_TEMPERATURE_GPU)

    def _processes(self, handle: Any) -> tuple[NvmlProcess, ...] | None:
        nvml = self.nvml
        compute = self._field(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        graphics = self._field(nvml.nvmlDeviceGetGraphicsRunningProcesses, handle)
        if compute is None and graphics is None:
            return None
        found: dict[int, NvmlProcess] = {}
        for kind, entries in (("C", compute or []), ("G", graphics or [])):
            for entry in entries:
                pid = int(entry.pid)
                used = getattr(entry, "usedGpuMemory", None)
                previous = found.get(pid)
                if previous is not None:
                    found[pid] = previous.model_copy(update={"type": "C+G"})
                    continue
                found[pid] = NvmlProcess(
                    pid=pid,
                    name=self._process_name(pid),
                    used_memory_bytes=None if used is None else int(used),
                    type="C" if kind == "C" else "G",
                )
        return tuple(found.values())

    def _process_name(self, pid: int) -> str | None:
        name = self._field(self.nvml.nvmlSystemGetProcessName, pid)
        return None if name is None else _text(name)

    def _nvlink_links(self, handle: Any) -> int | None:
        """Active NVLink links, or None when the card has no NVLink (the first link says so)."""
        nvml = self.nvml
        active = 0
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                state = nvml.nvmlDeviceGetNvLinkState(handle, link)
            except nvml.NVMLError as error:
                if getattr(error, "value", None) == _NVML_ERROR_GPU_IS_LOST:
                    raise _DeviceLostError(str(error)) from error
                if link == 0:
                    return None
                break  # past the card's last link
            if int(state) == NVLINK_ACTIVE:
                active += 1
        return active

    # -- per pair

    def pair(self, first: int, second: int) -> NvmlPair:
        nvml = self.nvml
        try:
            one, two = self._handle(first), self._handle(second)
        except nvml.NVMLError:
            return NvmlPair(gpus=(first, second))
        try:
            return NvmlPair(
                gpus=(first, second),
                p2p_read_status=self._int(
                    nvml.nvmlDeviceGetP2PStatus, one, two, _NVML_P2P_CAPS_INDEX_READ
                ),
                nvlink_status=self._int(
                    nvml.nvmlDeviceGetP2PStatus, one, two, nvml.NVML_P2P_CAPS_INDEX_NVLINK
                ),
                topology_level=self._int(nvml.nvmlDeviceGetTopologyCommonAncestor, one, two),
            )
        except _DeviceLostError:
            return NvmlPair(gpus=(first, second))
