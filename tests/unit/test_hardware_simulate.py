"""`--simulate NAME`: boxes built from the GPU catalog, through the same assembly as real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.catalog import load_catalog
from appliance.errors import BadInputError, ExitCode
from appliance.hardware import Box, detect_box, findings, render_box
from appliance.hardware.simulate import EXAMPLES, MAX_GPUS, resolve, simulated_uuid

GiB = 1 << 30
MODELS = Path("/var/lib/llm-appliance/models")


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_documented_examples_simulate(name: str) -> None:
    box = detect_box(simulate=name, models_dir=MODELS)
    count, spec = resolve(name)
    assert box.source == "simulated"
    assert box.simulated == name
    assert len(box.gpus) == count
    for gpu in box.gpus:
        assert gpu.name == spec.name
        assert gpu.catalog_key == spec.key
        assert gpu.memory_total_bytes == spec.memory_total_bytes
        assert gpu.compute_capability == spec.compute_capability
        assert gpu.power_limit_w == spec.tdp_watts
        assert gpu.temperature_c is None  # not invented
    assert box.docker.simulated
    assert box.can_serve
    assert box.finding(findings.SIMULATED) is not None


def test_l40s_is_one_48_gb_class_gpu_with_compute_capability_8_9() -> None:
    box = detect_box(simulate="l40s")
    assert len(box.gpus) == 1
    gpu = box.gpus[0]
    assert gpu.memory_total_bytes is not None
    assert 44 * GiB <= gpu.memory_total_bytes <= 48 * GiB
    assert gpu.compute_capability == (8, 9)


def test_two_4090s_are_two_gpus_with_the_p2p_caveat() -> None:
    box = detect_box(simulate="2x4090")
    assert [gpu.index for gpu in box.gpus] == [0, 1]
    assert box.peer_to_peer is False
    finding = box.finding(findings.NO_P2P)
    assert finding is not None
    assert finding.fix is not None
    assert "--disable-custom-all-reduce" in finding.fix
    assert "--disable-custom-all-reduce" in render_box(box)


def test_datacenter_cards_simulate_with_p2p_and_no_caveat() -> None:
    box = detect_box(simulate="4xh100")
    assert len(box.gpus) == 4
    assert len(box.gpu_links) == 6
    assert box.peer_to_peer is True
    assert box.finding(findings.NO_P2P) is None


@pytest.mark.parametrize("key", [gpu.key for gpu in load_catalog().gpus])
def test_every_catalog_gpu_simulates_alone_and_in_pairs(key: str) -> None:
    for name in (key, f"2x{key}"):
        box = detect_box(simulate=name)
        assert all(gpu.catalog_key == key for gpu in box.gpus)
        assert box.can_serve
        assert Box.model_validate_json(box.model_dump_json()) == box


def test_uuids_are_deterministic_distinct_and_well_formed() -> None:
    first = detect_box(simulate="2x4090")
    second = detect_box(simulate="2X4090")
    uuids = [gpu.uuid for gpu in first.gpus]
    assert uuids == [gpu.uuid for gpu in second.gpus]
    assert len(set(uuids)) == 2
    assert all(u.startswith("GPU-") and len(u) == 40 for u in uuids)
    assert simulated_uuid("2xrtx4090", 0) == uuids[0]
    assert detect_box(simulate="rtx4090").gpus[0].uuid != uuids[0]


def test_the_simulated_host_fits_the_gpus() -> None:
    box = detect_box(simulate="8xh100", models_dir=Path("/srv/models"))
    assert box.host.models_dir == Path("/srv/models")
    assert box.host.memory_total_bytes is not None
    assert box.gpu_memory_total_bytes is not None
    assert box.host.memory_total_bytes >= 2 * box.gpu_memory_total_bytes
    assert box.host.nvidia_pci_devices == 8


@pytest.mark.parametrize("name", ["rtx9999", "0x4090", f"{MAX_GPUS + 1}xh100", "", "h100 nvl!"])
def test_unknown_names_are_bad_input_listing_the_valid_ones(name: str) -> None:
    with pytest.raises(BadInputError) as raised:
        detect_box(simulate=name)
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    assert raised.value.hint is not None
    for example in EXAMPLES:
        assert example in raised.value.hint
    assert "l40s" in raised.value.hint


def test_the_report_says_nothing_was_probed() -> None:
    text = render_box(detect_box(simulate="a100-80g"))
    assert text.startswith("Box: simulated 'a100-80g'")
    assert "nothing was probed" in text
    assert "Ready to serve: yes" in text
