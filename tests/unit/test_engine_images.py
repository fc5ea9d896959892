"""Which pinned engine build starts on which driver and card: the table operators meet."""

from __future__ import annotations

import pytest

from appliance.catalog import CardClass, load_catalog
from appliance.engine_images import (
    ImageChoice,
    NoImageRuns,
    card_class_of,
    driver_tuple,
    tei_image_for,
    vllm_image_for,
)

CATALOG = load_catalog()
DEFAULT = "vllm/vllm-openai:v0.32.0"
CU129 = "vllm/vllm-openai:v0.32.0-cu129"


@pytest.mark.parametrize(
    ("driver", "card_class", "image", "route"),
    [
        ("580.65.06", "consumer", DEFAULT, "native"),
        ("580.159.04", "datacenter", DEFAULT, "native"),
        ("595.80", "workstation", DEFAULT, "native"),
        ("575.57.08", "consumer", CU129, "native"),
        ("575.51.03", "consumer", CU129, "native"),
        ("570.195.03", "datacenter", CU129, "minor"),
        ("550.163.01", "workstation", CU129, "minor"),
        ("535.261.03", "datacenter", CU129, "minor"),
    ],
)
def test_the_newest_build_the_driver_can_start_is_chosen(
    driver: str, card_class: CardClass, image: str, route: str
) -> None:
    choice = vllm_image_for(driver, card_class)
    assert isinstance(choice, ImageChoice)
    assert (choice.image, choice.route) == (image, route)
    assert driver in choice.why


@pytest.mark.parametrize(
    ("driver", "card_class"),
    [
        ("570.195.03", "consumer"),  # Ubuntu's packaged 570 on a 4090
        ("550.163.01", "consumer"),  # Debian 13's packaged 550
        ("575.40.01", "consumer"),  # below 12.9 GA's 575.51.03
        ("555.42.06", "datacenter"),  # an end-of-life branch no image admits
        ("525.147.05", "datacenter"),
    ],
)
def test_no_pinned_build_runs_and_the_refusal_names_each_builds_minimum(
    driver: str, card_class: CardClass
) -> None:
    refusal = vllm_image_for(driver, card_class)
    assert isinstance(refusal, NoImageRuns)
    assert f"{CU129} needs 575.51.03" in refusal.what
    assert f"{DEFAULT} needs 580.65.06" in refusal.what
    assert refusal.needed_driver == "575.51.03"


def test_forward_compatibility_is_the_last_resort_and_data_centre_only() -> None:
    # R575 before 12.9 GA: only the CUDA 13.0 build admits branch 575, through cuda-compat.
    choice = vllm_image_for("575.40.01", "datacenter")
    assert isinstance(choice, ImageChoice)
    assert (choice.image, choice.route) == (DEFAULT, "forward")
    assert choice.environment == {"VLLM_ENABLE_CUDA_COMPATIBILITY": "1"}
    assert isinstance(vllm_image_for("575.40.01", "workstation"), NoImageRuns)


def test_an_unknown_driver_gets_the_default_build() -> None:
    choice = vllm_image_for(None, "consumer")
    assert isinstance(choice, ImageChoice)
    assert choice.image == DEFAULT


def test_tei_follows_the_architecture_and_its_cuda_12_9_build() -> None:
    choice = tei_image_for((8, 9), "575.57.08", "consumer")
    assert isinstance(choice, ImageChoice)
    assert choice.image == "ghcr.io/huggingface/text-embeddings-inference:89-1.9.3"
    hopper = tei_image_for((9, 0), "550.163.01", "datacenter")
    assert isinstance(hopper, ImageChoice)
    assert (hopper.image.rpartition(":")[2], hopper.route) == ("hopper-1.9.3", "minor")
    assert isinstance(tei_image_for((8, 9), "570.195.03", "consumer"), NoImageRuns)
    cpu = tei_image_for(None, "470.256.02", None)
    assert isinstance(cpu, ImageChoice)
    assert cpu.image.endswith(":cpu-1.9.3")


def test_card_classes_come_from_the_catalog_or_the_nvml_name() -> None:
    assert card_class_of("NVIDIA GeForce RTX 3060", None) == "consumer"
    assert card_class_of("NVIDIA TITAN RTX", None) == "consumer"
    assert card_class_of("NVIDIA A40", None) == "workstation"
    assert card_class_of("NVIDIA H200", "datacenter") == "datacenter"
    assert driver_tuple("580.65.06") == (580, 65, 6)
    assert driver_tuple("595.80") == (595, 80)
    assert driver_tuple("n/a") is None


def test_every_build_cites_its_source_and_the_routes_name_their_card_classes() -> None:
    images = CATALOG.images
    for build in (*images.vllm.builds, images.tei.gpu_build):
        assert build.source
        assert driver_tuple(build.min_driver) is not None
    assert images.compatibility["forward"].card_classes == ("datacenter",)
    assert "consumer" not in images.compatibility["minor"].card_classes
