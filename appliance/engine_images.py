"""Which pinned engine image can start on this driver and these cards, and why.

Pure: reads the catalog's image builds (`images.yaml`) and a box's driver and GPUs. An engine
image is a CUDA build; the NVIDIA Container Toolkit refuses to start it unless the driver is new
enough for that CUDA (`min_driver`) or it is one of the older branches the image admits for
non-GeForce cards, where a compatibility route (minor-version or forward compatibility) makes
it work. The choice prefers a native fit, newest CUDA first; then the minor-version route (no
extra libraries); then forward compatibility (the image's cuda-compat, data-centre cards only).

`detect` refuses a box where no pinned build can run (`findings.DRIVER_TOO_OLD`), `plan`/`apply`
refuse to build its containers, and `compose export` / `export k8s` print the same choice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from appliance.catalog import (
    CardClass,
    Catalog,
    CompatRouteName,
    CudaBuild,
    load_catalog,
)
from appliance.hardware.box import Box, GpuInfo

Route = Literal["native"] | CompatRouteName
# Most restrictive first: a box is only as compatible as its most restricted card.
_CLASS_ORDER: dict[CardClass, int] = {"consumer": 0, "workstation": 1, "datacenter": 2}
# The branch to ask for in an upgrade: R580 is NVIDIA's long-term support branch for CUDA 13
# (NVIDIA data centre drivers "Supported Drivers and CUDA Toolkit Versions": R580, LTSB,
# end of life August 2028, CUDA 13.0+); it runs every pinned build natively.
UPGRADE_BRANCH = 580


@dataclass(frozen=True)
class ImageChoice:
    """The build an engine runs, how it runs on this driver, and what the container needs."""

    image: str  # repository:tag
    cuda: str
    route: Route
    why: str  # one line an operator can check
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NoImageRuns:
    """No pinned build starts on this driver: what is wrong, and the driver to install."""

    what: str
    needed_driver: str  # the lowest driver that runs the preferred build natively


def driver_tuple(version: str | None) -> tuple[int, ...] | None:
    """ "580.65.06" → (580, 65, 6); "595.80" → (595, 80); None for anything else."""
    if not version or not re.fullmatch(r"\d+(\.\d+)*", version.strip()):
        return None
    return tuple(int(part) for part in version.strip().split("."))


def card_class_of(name: str, segment: CardClass | None) -> CardClass:
    """The catalog's segment; for an unknown card, GeForce/TITAN by its NVML name, else the
    cautious middle: no forward compatibility is assumed for a card the catalog does not know."""
    if segment is not None:
        return segment
    if re.search(r"geforce|titan", name, re.IGNORECASE):
        return "consumer"
    return "workstation"


def box_card_class(classes: Iterable[CardClass]) -> CardClass | None:
    """The most restricted class among the cards, or None without cards."""
    ordered = sorted(classes, key=_CLASS_ORDER.__getitem__)
    return ordered[0] if ordered else None


def _choose(
    builds: Sequence[CudaBuild],
    catalog: Catalog,
    *,
    repository: str,
    tag_of: str,
    driver: str | None,
    card_class: CardClass | None,
    what: str,
) -> ImageChoice | NoImageRuns:
    def image(build: CudaBuild) -> str:
        return f"{repository}:{build.tag.replace('{prefix}', tag_of)}"

    version = driver_tuple(driver)
    if version is None:
        first = builds[0]
        return ImageChoice(
            image(first),
            first.cuda,
            "native",
            f"driver version unknown: the default CUDA {first.cuda} build, which needs driver "
            f"{first.min_driver} or newer",
        )
    for build in builds:
        minimum = driver_tuple(build.min_driver)
        if minimum is not None and version >= minimum:
            return ImageChoice(
                image(build),
                build.cuda,
                "native",
                f"driver {driver} runs the CUDA {build.cuda} build natively, which needs "
                f"{build.min_driver} or newer",
            )
    for route_name in ("minor", "forward"):
        for build in builds:
            route = catalog.images.compatibility.get(route_name)
            if (
                route is None
                or build.older_branches_by != route_name
                or version[0] not in build.older_branches
                or card_class is None
                or card_class not in route.card_classes
            ):
                continue
            return ImageChoice(
                image(build),
                build.cuda,
                route_name,
                f"driver {driver} is older than CUDA {build.cuda} needs ({build.min_driver}), "
                f"but the image admits branch {version[0]} on {card_class} cards through "
                f"{route.name}",
                dict(route.environment),
            )
    needed = min(builds, key=lambda b: driver_tuple(b.min_driver) or (0,))
    routes = (
        "GeForce cards have no compatibility route for an older driver"
        if card_class == "consumer"
        else f"branch {version[0]} is not one the images admit for {card_class or 'these'} cards"
    )
    needs = ", ".join(f"{image(b)} needs {b.min_driver}" for b in builds)
    return NoImageRuns(
        f"NVIDIA driver {driver} is too old for the pinned {what} ({needs}); {routes}",
        needed.min_driver,
    )


def vllm_image_for(
    driver: str | None, card_class: CardClass | None, catalog: Catalog | None = None
) -> ImageChoice | NoImageRuns:
    """The vLLM build for this driver and card class (see the module doc)."""
    catalog = catalog or load_catalog()
    vllm = catalog.images.vllm
    return _choose(
        vllm.builds,
        catalog,
        repository=vllm.repository,
        tag_of="",
        driver=driver,
        card_class=card_class,
        what=f"vLLM {vllm.version} images",
    )


def sglang_image_for(
    driver: str | None, card_class: CardClass | None, catalog: Catalog | None = None
) -> ImageChoice | NoImageRuns:
    """The SGLang build for this driver and card class (`spec.engine.kind: sglang`)."""
    catalog = catalog or load_catalog()
    sglang = catalog.images.sglang
    return _choose(
        sglang.builds,
        catalog,
        repository=sglang.repository,
        tag_of="",
        driver=driver,
        card_class=card_class,
        what=f"SGLang {sglang.version} image",
    )


def tei_image_for(
    compute_capability: tuple[int, int] | None,
    driver: str | None,
    card_class: CardClass | None,
    catalog: Catalog | None = None,
) -> ImageChoice | NoImageRuns:
    """TEI's image for the card's architecture, if its build starts on this driver. Without a
    GPU (or on a card TEI has no image for) it is the CPU image, which needs no driver."""
    catalog = catalog or load_catalog()
    tei = catalog.images.tei
    reference = catalog.tei_tag(compute_capability)
    tag = reference.rpartition(":")[2]
    if tag == tei.cpu:
        return ImageChoice(reference, "none", "native", "the CPU image needs no NVIDIA driver")
    prefix = tag.removesuffix(tei.version)
    return _choose(
        (tei.gpu_build,),
        catalog,
        repository=tei.repository,
        tag_of=prefix,
        driver=driver,
        card_class=card_class,
        what=f"TEI {tei.version} image",
    )


def gpus_card_class(gpus: Sequence[GpuInfo], catalog: Catalog | None = None) -> CardClass | None:
    """The most restricted card class among a box's GPUs (None without GPUs)."""
    catalog = catalog or load_catalog()
    classes: list[CardClass] = []
    for gpu in gpus:
        spec = catalog.gpu(gpu.catalog_key) if gpu.catalog_key else None
        classes.append(card_class_of(gpu.name, spec.segment if spec is not None else None))
    return box_card_class(classes)


def box_vllm_image(box: Box, catalog: Catalog | None = None) -> ImageChoice | NoImageRuns:
    """`vllm_image_for` the box's driver and its GPUs."""
    return vllm_image_for(box.driver_version, gpus_card_class(box.gpus, catalog), catalog)
