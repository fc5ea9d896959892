"""`appliance bundle create`: everything an offline box needs for one profile, in one verified tar.

What goes in, in this order (the manifest, with every member's SHA-256, last):

- the engine images the profile runs on the *target* box: the same choice `plan`/`apply` make
  (`runtime.specs.container_specs`: the profile's pinned `spec.images`, else the catalog build
  that box's driver and cards start), `docker save`d straight into the bundle, pulled first
  when this engine lacks them;
- the weights of every model the profile needs (chat model, LoRA adapters, embeddings), read
  from the complete snapshots in the models dir (their weights manifest's files only; a link is
  never followed), copied kernel-side with the SHA-256 their weights manifest recorded when
  they were pulled or imported — not hashed again here: `bundle load` hashes every byte, so a
  file altered since is refused there, by name;
- the appliance and its dependencies as wheels for the target's Python (`install.sh --offline`);
- the profile itself, so `bundle load` installs it last.

Nothing is fetched from the Hub and no token is read: weights must already be on this machine.
The profile cannot hold a secret (`parse_profile` refuses literal keys and tokens), and the
gateway's keys and the state dir are never read. Before a byte is written, the free disk under
the output is checked against what the members will weigh.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.bundle.manifest import Manifest, Target
from appliance.bundle.stream import BundleWriter, Progress
from appliance.errors import BadInputError, EnvironmentNotReadyError, RefusedError
from appliance.units import human_bytes

if TYPE_CHECKING:
    from appliance.hardware.box import Box
    from appliance.profile import Profile
    from appliance.runtime.docker import DockerEngine
    from appliance.weights import InstalledWeights, WeightsRef

# Kept free beside the bundle: 1 % of it, at least 256 MiB.
_MIN_HEADROOM = 256 << 20


@dataclass(frozen=True)
class WeightsToBundle:
    ref: WeightsRef
    installed: InstalledWeights


@dataclass(frozen=True)
class BundlePlan:
    """What a bundle for this profile and target box holds, decided before anything is written."""

    profile_name: str
    target: Target
    images: tuple[str, ...]
    weights: tuple[WeightsToBundle, ...]

    @property
    def weights_bytes(self) -> int:
        return sum(w.installed.size_bytes for w in self.weights)


def target_of(box: Box) -> Target:
    """The box a bundle is for: its driver kind and compute capabilities, and this Python."""
    capabilities = sorted(
        {
            f"{g.compute_capability[0]}.{g.compute_capability[1]}"
            for g in box.gpus
            if g.compute_capability
        }
    )
    return Target(
        driver="nvidia" if box.gpus else "cpu",
        compute_capability=",".join(capabilities),
        python=f"{sys.version_info[0]}.{sys.version_info[1]}",
        platform=sysconfig.get_platform(),
    )


def engine_images(profile: Profile, box: Box) -> tuple[str, ...]:
    """The images `apply` would run for this profile on `box` (one choice, shared with it)."""
    from appliance.runtime.specs import container_specs

    return tuple(sorted({spec.image for spec in container_specs(profile, box)}))


def plan_bundle(profile: Profile, box: Box) -> BundlePlan:
    """Images for the target box and the installed weights; refused when weights are missing."""
    from appliance.weights import find_installed, profile_weights

    models_dir = profile.spec.storage.models_dir
    weights: list[WeightsToBundle] = []
    missing: list[str] = []
    for ref in profile_weights(profile):
        installed = find_installed(models_dir, ref.repo, ref.revision)
        if installed is None:
            missing.append(f"{ref.repo}@{ref.revision}")
        else:
            weights.append(WeightsToBundle(ref, installed))
    if missing:
        raise EnvironmentNotReadyError(
            f"weights not complete under {models_dir}: {', '.join(missing)}",
            hint="pull them first on this connected machine: appliance weights pull PROFILE",
        )
    return BundlePlan(
        profile_name=profile.metadata.name,
        target=target_of(box),
        images=engine_images(profile, box),
        weights=tuple(weights),
    )


def image_member(image: str) -> str:
    return "images/" + re.sub(r"[^A-Za-z0-9._-]+", "_", image) + ".tar"


def _weights_files(
    models_dir: Path, installed: InstalledWeights
) -> Iterator[tuple[str, Path, str, int]]:
    """(member path, file, sha256, size) of each file in a snapshot's manifest, refusing a link
    or anything that resolves outside the models dir."""
    root = models_dir.resolve()
    snapshot = installed.path
    if snapshot.is_symlink() or not snapshot.resolve().is_relative_to(root):
        raise RefusedError(f"{snapshot} is a link or lies outside {models_dir}; not bundled")
    org, _, name = installed.repo.partition("/")
    for f in installed.files:
        path = snapshot / f.path
        # Every component below the snapshot must be a real directory or file, not a link.
        here = snapshot
        for part in Path(f.path).parts:
            here = here / part
            if here.is_symlink():
                raise RefusedError(
                    f"{installed.repo}: {f.path} is a link; links are never bundled",
                    hint="re-import the weights as files (appliance weights import)",
                )
        if not path.is_file() or not path.resolve().is_relative_to(root):
            raise RefusedError(f"{installed.repo}: {f.path} is missing or not a regular file")
        yield f"weights/{org}/{name}/{installed.sha}/{f.path}", path, f.sha256, f.size


WheelBuilder = Callable[[Path, Target], list[Path]]


def build_wheels(into: Path, target: Target) -> list[Path]:
    """The appliance and its dependencies as wheels for the target's Python, made from this
    installation without a package index (`appliance.bundle.wheels`)."""
    from appliance.bundle.wheels import project_wheels

    if target.python != f"{sys.version_info[0]}.{sys.version_info[1]}":
        raise BadInputError(
            f"wheels for Python {target.python} cannot be made with this Python",
            hint="run bundle create with that Python, or pass --wheels DIR",
        )
    return project_wheels(into)


def wheels_in(directory: Path) -> list[Path]:
    """The *.whl files of a wheel directory (regular files only)."""
    if not directory.is_dir():
        raise BadInputError(f"{directory} is not a directory of wheels")
    found = sorted(p for p in directory.glob("*.whl") if p.is_file() and not p.is_symlink())
    if not found:
        raise BadInputError(f"{directory} holds no .whl files")
    return found


def _wheel_version(path: Path) -> str:
    parts = path.name.split("-")
    return f"{parts[0]} {parts[1]}" if len(parts) >= 2 else path.name


def preflight(out: Path, needed: int, free_bytes: Callable[[Path], int] | None = None) -> None:
    """Refuse before writing when the disk under the output cannot hold the bundle."""
    from appliance.weights import disk_free_bytes

    free = (free_bytes or disk_free_bytes)(out.parent)
    keep = max(needed // 100, _MIN_HEADROOM)
    if free < needed + keep:
        raise EnvironmentNotReadyError(
            f"not enough free disk under {out.parent} for the bundle: it needs about "
            f"{human_bytes(needed)} plus {human_bytes(keep)} headroom, and {human_bytes(free)} "
            "is free",
            hint="write it to a larger disk (-o /mnt/usb/bundle.tar)",
        )


def create_bundle(
    profile_path: Path,
    box: Box,
    engine: DockerEngine,
    out: Path,
    *,
    wheels: WheelBuilder | Sequence[Path] | None = build_wheels,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
    free_bytes: Callable[[Path], int] | None = None,
) -> Manifest:
    """Write the bundle for `profile_path` on target `box` to `out` (`out.part`, renamed at the
    end, so a cut-off run never leaves a file that looks complete)."""
    from appliance.profile import load_profile

    profile = load_profile(profile_path)
    plan = plan_bundle(profile, box)
    say = note or (lambda _text: None)
    if out.is_dir() or not out.parent.is_dir():
        raise BadInputError(f"{out} cannot be written: give a file in an existing directory")
    for image in plan.images:  # pulled first: the size preflight needs every image's size
        if engine.image_identity(image) is None:
            say(f"pulling {image}")
            engine.pull(image)
    identities = {image: engine.image_identity(image) for image in plan.images}
    image_bytes = sum(identity[1] for identity in identities.values() if identity)
    with tempfile.TemporaryDirectory(prefix=".bundle-wheels-", dir=out.parent) as tmp:
        if wheels is None:
            wheel_files: list[Path] = []
        elif callable(wheels):
            say("building the appliance's wheels")
            wheel_files = wheels(Path(tmp), plan.target)
        else:
            wheel_files = list(wheels)
        profile_bytes = profile_path.read_bytes()
        needed = (
            plan.weights_bytes
            + image_bytes
            + sum(w.stat().st_size for w in wheel_files)
            + len(profile_bytes)
        )
        preflight(out, needed, free_bytes)
        if on_total is not None:
            on_total(needed)
        part = out.with_name(out.name + ".part")
        try:
            with part.open("wb") as handle:
                writer = BundleWriter(handle, progress)
                try:
                    _write_members(
                        writer,
                        engine,
                        profile=profile,
                        plan=plan,
                        identities=identities,
                        wheel_files=wheel_files,
                        say=say,
                    )
                    writer.add_stream(
                        f"profile/{plan.profile_name}.yaml",
                        "profile",
                        [profile_bytes],
                        plan.profile_name,
                    )
                    manifest = writer.finish(__version__, plan.target)
                finally:
                    writer.close()
                # No fsync: `bundle load` checks every byte against the manifest anyway, and
                # the plain tools this is measured against (docker save, tar) do not sync.
            part.replace(out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return manifest


def _write_members(
    writer: BundleWriter,
    engine: DockerEngine,
    *,
    profile: Profile,
    plan: BundlePlan,
    identities: dict[str, tuple[str, int] | None],
    wheel_files: Sequence[Path],
    say: Callable[[str], None],
) -> None:
    """Images, then weights, then wheels (the profile and the manifest follow)."""
    for image in plan.images:
        say(f"saving {image}")
        identity = identities[image]
        writer.add_stream(
            image_member(image),
            "image",
            engine.save_image(image),
            f"{image}@{identity[0] if identity else ''}",
        )
    models_dir = profile.spec.storage.models_dir
    for item in plan.weights:
        version = f"{item.ref.repo}@{item.ref.revision}"
        say(f"adding weights {version}")
        for member, path, sha256, size in _weights_files(models_dir, item.installed):
            added = writer.add_file_known(member, "weights", path, sha256, version)
            if added.size != size:
                raise RefusedError(f"{member}: size differs from its weights manifest")
    for wheel in wheel_files:
        writer.add_file(f"wheels/{wheel.name}", "wheel", wheel, _wheel_version(wheel))


__all__ = [
    "BundlePlan",
    "build_wheels",
    "create_bundle",
    "engine_images",
    "image_member",
    "plan_bundle",
    "preflight",
    "target_of",
    "wheels_in",
]
