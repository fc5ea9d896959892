"""Recorded NVML readings of real cards, replayed through the probe's protocol.

Each file in tests/fixtures/nvml/ holds what NVML answered on a real machine, transcribed from a
published nvidia-smi dump that its `_source` cites. Replaying it through `RecordedNvml` runs the
same assembly, catalog matching and findings as a live box.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.catalog import load_catalog
from appliance.hardware import Box, RecordedNvml, detect_box, findings, render_box
from tests.unit.test_hardware_findings import bare_docker, make_host, ready_docker

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"
MiB = 1 << 20


@dataclass(frozen=True)
class Expected:
    name: str
    count: int
    catalog_key: str
    memory_total_mib: int
    compute_capability: tuple[int, int]
    driver_version: str
    cuda_driver_version: str
    findings: tuple[str, ...] = ()
    can_serve: bool = True  # with Docker and the toolkit ready


EXPECTED = {
    "rtx4090": Expected(
        "NVIDIA GeForce RTX 4090",
        1,
        "rtx4090",
        24564,
        (8, 9),
        "545.29.06",
        "12.3",
        # A GeForce card on R545 starts neither pinned vLLM build (CUDA 13.0, 12.9).
        (findings.DRIVER_TOO_OLD, findings.GPU_MEMORY_IN_USE),
        can_serve=False,
    ),
    "2x4090": Expected(
        "NVIDIA GeForce RTX 4090",
        2,
        "rtx4090",
        24564,
        (8, 9),
        "550.163.01",
        "12.4",
        (findings.DRIVER_TOO_OLD, findings.NO_P2P),
        can_serve=False,
    ),
    "l40s": Expected("NVIDIA L40S", 1, "l40s", 46068, (8, 9), "595.80", "13.2"),
    "a100-80g": Expected(
        "NVIDIA A100-SXM4-80GB", 1, "a100-80g", 81920, (8, 0), "565.57.01", "12.7"
    ),
    "h100": Expected("NVIDIA H100 80GB HBM3", 1, "h100", 81559, (9, 0), "590.48.01", "13.1"),
    "h100-mig": Expected(
        "NVIDIA H100 80GB HBM3",
        1,
        "h100",
        81559,
        (9, 0),
        "590.48.01",
        "13.1",
        (findings.MIG_ENABLED,),
    ),
}


def replay(name: str) -> Box:
    return detect_box(
        nvml=RecordedNvml.from_file(FIXTURES / f"{name}.json"),
        host=make_host(nvidia_pci_devices=EXPECTED[name].count),
        docker=ready_docker(),
    )


def test_every_fixture_is_checked() -> None:
    assert sorted(path.stem for path in FIXTURES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_cites_where_its_numbers_came_from(name: str) -> None:
    document = json.loads((FIXTURES / f"{name}.json").read_text())
    source = document["_source"]
    assert source["citation"]
    assert source["url"].startswith("https://github.com/")
    assert source["notes"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replaying_a_real_card_gives_its_box(name: str) -> None:
    expected = EXPECTED[name]
    box = replay(name)
    assert box.source == "recorded"
    assert box.recording is not None
    assert box.recording.startswith("https://github.com/")
    assert box.driver_version == expected.driver_version
    assert box.cuda_driver_version == expected.cuda_driver_version
    assert len(box.gpus) == expected.count
    assert [gpu.index for gpu in box.gpus] == list(range(expected.count))
    for gpu in box.gpus:
        assert gpu.name == expected.name
        assert gpu.catalog_key == expected.catalog_key
        assert gpu.memory_total_bytes == expected.memory_total_mib * MiB
        assert gpu.compute_capability == expected.compute_capability
        assert gpu.driver_version == expected.driver_version
    assert tuple(f.code for f in box.findings) == expected.findings
    assert box.can_serve == expected.can_serve


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_memory_agrees_with_the_catalog(name: str) -> None:
    """The catalog's memory is what NVML reports; a real reading must match it within 2 %."""
    box = replay(name)
    spec = load_catalog().gpu(EXPECTED[name].catalog_key)
    assert spec is not None
    assert spec.compute_capability == EXPECTED[name].compute_capability
    for gpu in box.gpus:
        assert gpu.memory_total_bytes is not None
        assert (
            abs(gpu.memory_total_bytes - spec.memory_total_bytes) <= 0.02 * spec.memory_total_bytes
        )


def test_two_4090s_carry_the_p2p_caveat() -> None:
    box = replay("2x4090")
    finding = box.finding(findings.NO_P2P)
    assert finding is not None
    assert finding.gpus == (0, 1)
    assert finding.fix is not None
    assert "--disable-custom-all-reduce" in finding.fix
    assert box.peer_to_peer is None  # the dump had no `topo -p2p`: unknown, caveat from catalog
    assert [gpu.pci_bus_id for gpu in box.gpus] == ["00000000:4E:00.0", "00000000:4F:00.0"]
    assert len({gpu.uuid for gpu in box.gpus}) == 2


def test_the_desktop_4090_shows_the_memory_another_process_holds() -> None:
    box = replay("rtx4090")
    gpu = box.gpus[0]
    assert gpu.memory_used_bytes == 20102 * MiB
    assert gpu.power_draw_w == 37
    assert gpu.power_limit_w == 450
    assert gpu.pcie_generation is None  # not in the published table
    finding = box.finding(findings.GPU_MEMORY_IN_USE)
    assert finding is not None
    assert "19.6 GiB of 24.0 GiB already in use" in finding.what


def test_the_l40s_reading_is_complete() -> None:
    gpu = replay("l40s").gpus[0]
    assert gpu.memory_reserved_bytes == 609 * MiB
    assert (gpu.pcie_generation, gpu.pcie_width) == (4, 16)
    assert gpu.power_draw_w == pytest.approx(144.97)
    assert gpu.power_limit_w == 350
    assert gpu.mig_mode is None
    assert gpu.processes == ()
    assert gpu.nvlink_active_links is None


def test_the_h100_has_its_nvlinks_and_mig_off() -> None:
    gpu = replay("h100").gpus[0]
    assert gpu.nvlink_active_links == 18
    assert gpu.mig_mode is False
    assert (gpu.pcie_generation, gpu.pcie_width) == (5, 16)


def test_an_h100_in_mig_mode_reports_no_utilisation_and_the_mig_warning() -> None:
    box = replay("h100-mig")
    gpu = box.gpus[0]
    assert gpu.mig_mode is True
    assert gpu.utilization_gpu_pct is None
    assert gpu.nvlink_active_links is None
    finding = box.finding(findings.MIG_ENABLED)
    assert finding is not None
    assert finding.fix is not None
    assert "nvidia-smi -i 0 -mig 0" in finding.fix


def test_a_recorded_box_on_plain_docker_asks_for_the_container_toolkit() -> None:
    box = detect_box(
        nvml=RecordedNvml.from_file(FIXTURES / "l40s.json"), host=make_host(), docker=bare_docker()
    )
    assert box.finding(findings.NO_CONTAINER_TOOLKIT) is not None
    assert not box.can_serve


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_recorded_box_round_trips_through_json(name: str) -> None:
    box = replay(name)
    assert Box.model_validate_json(box.model_dump_json()) == box


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_report_names_every_gpu_and_every_finding(name: str) -> None:
    box = replay(name)
    text = render_box(box)
    assert text.startswith("Box: recorded NVML reading (https://github.com/")
    assert f"NVIDIA driver {EXPECTED[name].driver_version}" in text
    for gpu in box.gpus:
        assert f"[{gpu.index}] {gpu.name}" in text
    flowing = " ".join(text.split())  # findings are wrapped to the terminal's width
    for finding in box.findings:
        assert " ".join(finding.what.split()) in flowing
    assert ("Ready to serve: yes" in text) == EXPECTED[name].can_serve
    assert "\x1b[" not in text  # plain text: no colour codes
