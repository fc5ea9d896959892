"""Hardware detection: the GPUs (NVML), the host (psutil) and the Docker engine, as one `Box`.

`detect_box()` is the whole public entry point; the CLI (`appliance detect`) and the TUI's Box
screen call it and print or draw the `Box` it returns (`render_box()` for text, the model's JSON
otherwise). It never raises for the state of the machine: no driver, no Docker, no toolkit are
findings with fixes. It raises `BadInputError` only for an unknown `--simulate` name or an
unreadable detect file.

Importing this package is cheap: pynvml, docker-py and psutil are imported by the probes when
they run, never at import time (`tests/unit/test_imports.py`).
"""

from __future__ import annotations

from pathlib import Path

from appliance.hardware.box import (
    Box,
    DockerInfo,
    Finding,
    GpuInfo,
    GpuLink,
    GpuProcess,
    HostInfo,
)
from appliance.hardware.nvml import NvmlRecording, NvmlSource, RecordedNvml
from appliance.hardware.report import render_box
from appliance.vocabulary import DEFAULT_MODELS_DIR

__all__ = [
    "DEFAULT_MODELS_DIR",
    "Box",
    "DockerInfo",
    "Finding",
    "GpuInfo",
    "GpuLink",
    "GpuProcess",
    "HostInfo",
    "NvmlRecording",
    "NvmlSource",
    "RecordedNvml",
    "detect_box",
    "render_box",
]


def detect_box(
    *,
    simulate: str | None = None,
    models_dir: Path = DEFAULT_MODELS_DIR,
    nvml: NvmlSource | None = None,
    docker_base_url: str | None = None,
    host: HostInfo | None = None,
    docker: DockerInfo | None = None,
) -> Box:
    """Probe this machine (or build a simulated one) and say what stands in the way of serving.

    - `simulate`: a `[Nx]<gpu>` name from the GPU catalog, or a file `appliance detect --json`
      wrote on another box; nothing on this machine is probed.
    - `nvml`: where GPU readings come from; default the driver's NVML. A `RecordedNvml` makes a
      "recorded" box from a fixture, on the same code path as a live reading.
    - `docker_base_url`: the engine to ask (default $DOCKER_HOST, else the system socket).
    - `host`, `docker`: already-probed parts to use as they are (tests, or the TUI refreshing
      only the GPUs).
    """
    from appliance.hardware.assemble import build_box
    from appliance.hardware.nvml import LiveNvml, read_nvml

    if simulate is not None:
        from appliance.hardware.simulate import is_detect_file, read_detect_file
        from appliance.hardware.simulate import simulate as simulated_parts

        if is_detect_file(simulate):
            return read_detect_file(Path(simulate))

        parts = simulated_parts(simulate, models_dir)
        return build_box(
            parts.recording,
            host=host or parts.host,
            docker=docker or parts.docker,
            source="simulated",
            simulated=parts.name,
        )

    source = nvml if nvml is not None else LiveNvml()
    recording = read_nvml(source)
    if isinstance(source, RecordedNvml):
        # Keep the citation of the fixture the readings came from.
        recording = recording.model_copy(update={"source": source.recording.source})
    if host is None:
        from appliance.hardware.host import probe_host

        host = probe_host(models_dir)
    if docker is None:
        from appliance.hardware.docker_probe import probe_docker

        docker = probe_docker(docker_base_url)
    return build_box(
        recording,
        host=host,
        docker=docker,
        source="recorded" if isinstance(source, RecordedNvml) else "nvml",
    )
