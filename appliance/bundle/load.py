"""`appliance bundle load`: an offline box takes in a bundle, verified before anything is used.

Order, and what must stay true:

1. The manifest is read (its entries digest checked, and compared with `--expect-sha256`), the
   bundle's target is compared with this box (driver kind and compute capability), and the
   images this box would run for the bundled profile (`apply`'s own choice) must all be in it.
2. Every member is verified (SHA-256 and size; several side by side) before anything is used:
   weights and the profile are copied into a staging dir on the models dir's filesystem
   (`<models_dir>/.staging/bundle-<digest>`), each renamed into place only once it matched;
   images are only hashed. A flipped byte or a truncated bundle is refused naming the member,
   and nothing is loaded, imported or installed.
3. Images are `docker load`ed straight from the bundle (hashed again while Docker reads them,
   then checked to have the recorded image id), so no second copy of an image is written;
   meanwhile the staged weights are moved in through `weights.import_weights` (renamed, their
   manifest written last, with the digests just checked); the profile is installed last.

Restartable: a verified member (recorded in the staging dir), an image already present with its
recorded id, and weights already installed at the recorded commit are not redone. The staging
dir is removed once everything is in.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import fileio
from appliance.bundle.create import engine_images, image_member, target_of
from appliance.bundle.manifest import Manifest, Member, check_expected, check_target
from appliance.bundle.stream import (
    Handling,
    MemberReader,
    Progress,
    member_offsets,
    read_manifest,
    staged_path,
    verify_into,
)
from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
    RefusedError,
)
from appliance.units import human_bytes

if TYPE_CHECKING:
    from appliance.hardware.box import Box
    from appliance.profile import Profile
    from appliance.runtime.docker import DockerEngine

_MIN_HEADROOM = 256 << 20


@dataclass
class LoadResult:
    manifest: Manifest
    profile_path: Path
    images_loaded: list[str] = field(default_factory=list)
    images_present: list[str] = field(default_factory=list)
    weights_imported: list[str] = field(default_factory=list)
    weights_present: list[str] = field(default_factory=list)


def _profile_member(manifest: Manifest) -> Member:
    profiles = [m for m in manifest.members if m.kind == "profile"]
    if len(profiles) != 1:
        raise BadInputError(f"bundle holds {len(profiles)} profiles; it must hold exactly one")
    return profiles[0]


def _read_profile(bundle: Path, member: Member) -> bytes:
    """The profile member's bytes, checked against the manifest before they are parsed."""
    import hashlib
    import tarfile

    from appliance.bundle.manifest import check_member

    try:
        with tarfile.open(bundle, mode="r:") as tar:
            f = tar.extractfile(member.path)
            data = f.read() if f is not None else b""
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise RefusedError(f"bundle member {member.path} cannot be read ({exc})") from None
    check_member(member, len(data), hashlib.sha256(data).hexdigest())
    return data


def _installed_profile(data: bytes, name: str, models_dir: Path | None) -> tuple[Profile, bytes]:
    """The profile this box gets and its text: the bundle's own bytes, comments and all, with
    only `storage.models_dir` changed when `--models-dir` moves it (rewritten whole, comments
    lost, only where that one value cannot be edited in place)."""
    from appliance.profile import ProfileError, dump_profile, parse_profile
    from appliance.profile.yaml_text import with_value

    text = data.decode("utf-8", errors="replace")
    profile = parse_profile(text, name)
    if models_dir is None or models_dir == profile.spec.storage.models_dir:
        return profile, data
    storage = profile.spec.storage.model_copy(update={"models_dir": models_dir})
    profile = profile.model_copy(
        update={"spec": profile.spec.model_copy(update={"storage": storage})}
    )
    edited = with_value(text, ("spec", "storage", "models_dir"), str(models_dir))
    if edited is not None:
        with contextlib.suppress(ProfileError):
            if parse_profile(edited, name) == profile:
                return profile, edited.encode()
    note = f"installed by `appliance bundle load --models-dir {models_dir}`"
    return profile, dump_profile(profile, comment=note).encode()


def _image_of(member: Member) -> tuple[str, str]:
    """(image reference, image id) from an image member's version `ref@id`."""
    image, _, image_id = member.version.rpartition("@")
    if not image or image_member(image) != member.path:
        raise BadInputError(
            f"bundle member {member.path} does not name its image ({member.version})"
        )
    return image, image_id


def _weights_groups(manifest: Manifest) -> dict[tuple[str, str], str]:
    """{(repo, sha): revision} of the weights members (`weights/<org>/<name>/<sha>/…`)."""
    groups: dict[tuple[str, str], str] = {}
    for m in manifest.members:
        if m.kind != "weights":
            continue
        parts = m.path.split("/")
        repo, _, revision = m.version.partition("@")
        if (
            len(parts) < 5
            or f"{parts[1]}/{parts[2]}" != repo
            or not revision
            or not re.fullmatch(r"[0-9a-f]{40}", parts[3])
        ):
            raise BadInputError(f"bundle member {m.path} is not laid out as weights of {repo}")
        groups[(repo, parts[3])] = revision
    return groups


def staging_dir(models_dir: Path, manifest: Manifest) -> Path:
    return models_dir / ".staging" / f"bundle-{manifest.entries_sha256[:16]}"


def _check_disk(
    manifest: Manifest,
    staging: Path,
    models: Path,
    free_bytes: Callable[[Path], int] | None,
) -> None:
    """What is not staged yet must fit beside the models dir."""
    from appliance.weights import disk_free_bytes

    to_stage = sum(
        m.size
        for m in manifest.members
        if m.kind != "image"
        and not (
            staged_path(staging, m).is_file() and staged_path(staging, m).stat().st_size == m.size
        )
    )
    # Images go straight from the bundle into Docker (its own disk: not measured here);
    # staged weights are moved into the models dir, so they need their room once.
    needed = to_stage
    free = (free_bytes or disk_free_bytes)(models)
    keep = max(needed // 100, _MIN_HEADROOM)
    if free < needed + keep:
        raise EnvironmentNotReadyError(
            f"not enough free disk under {models} to load the bundle: it needs about "
            f"{human_bytes(needed)} plus {human_bytes(keep)} headroom, and {human_bytes(free)} "
            "is free; nothing was changed",
            hint="free some space, or load into a larger disk with --models-dir DIR",
        )


def _load_images(
    engine: DockerEngine,
    bundle: Path,
    images: dict[str, tuple[Member, str]],
    result: LoadResult,
    say: Callable[[str], None],
) -> None:
    """`docker load` each image straight from the bundle (verified already, hashed again while
    Docker reads it, so a bundle changed since is caught), then check the image id."""
    offsets: dict[str, int] | None = None
    for image, (member, image_id) in sorted(images.items()):
        present = engine.image_identity(image)
        if present is not None and (not image_id or present[0] == image_id):
            result.images_present.append(image)
            continue
        say(f"loading {image}")
        offsets = offsets or member_offsets(bundle)
        with MemberReader(bundle, member, offsets[member.path]) as archive:
            engine.load_images(archive)  # type: ignore[arg-type]
            archive.finish()
        present = engine.image_identity(image)
        if present is None or (image_id and present[0] != image_id):
            raise OperationFailedError(
                f"docker load of {member.path} did not give {image} with id {image_id}"
            )
        result.images_loaded.append(image)


def _unload(engine: DockerEngine, loading: Future[None] | None, result: LoadResult) -> None:
    """Take out the images this load put into Docker (a member failed its check after they
    went in); what was there before stays."""
    if loading is None:
        return
    with contextlib.suppress(Exception):  # the verification failure is the one to report
        loading.result()
    for image in result.images_loaded:
        with contextlib.suppress(Exception):
            engine.remove_image(image)
    result.images_loaded.clear()


def _handling(manifest: Manifest, models: Path) -> Callable[[Member], Handling]:
    """Images are hash-checked (Docker reads them from the bundle); weights already installed
    here at the bundled commit are skipped (a restart after they were moved in); the rest is
    staged."""
    from appliance.weights import find_installed

    have = {
        (repo, sha)
        for (repo, sha), revision in _weights_groups(manifest).items()
        if (found := find_installed(models, repo, revision)) is not None and found.sha == sha
    }

    def how(member: Member) -> Handling:
        if member.kind == "image":
            return "hash"
        if member.kind == "weights":
            parts = member.path.split("/")
            if (f"{parts[1]}/{parts[2]}", parts[3]) in have:
                return "skip"
        return "stage"

    return how


def _verified_files(manifest: Manifest, repo: str, sha: str) -> dict[str, str]:
    """{path in the snapshot: SHA-256} of one weights group's members."""
    prefix = f"weights/{repo}/{sha}/"
    return {
        m.path.removeprefix(prefix): m.sha256
        for m in manifest.members
        if m.kind == "weights" and m.path.startswith(prefix)
    }


def _import_weights(
    manifest: Manifest,
    staging: Path,
    models: Path,
    result: LoadResult,
    say: Callable[[str], None],
) -> None:
    from appliance.weights import find_installed, import_weights

    for (repo, sha), revision in sorted(_weights_groups(manifest).items()):
        installed = find_installed(models, repo, revision)
        if installed is not None and installed.sha == sha:
            result.weights_present.append(f"{repo}@{revision}")
            continue
        say(f"importing weights {repo}@{revision}")
        org, _, name = repo.partition("/")
        done = import_weights(
            staging / "weights" / org / name / sha,
            repo,
            revision,
            models_dir=models,
            # the staging copy was hash-checked just now: moved in, not copied or hashed again
            verified_sha256=_verified_files(manifest, repo, sha),
        )
        if done.sha != sha:
            raise OperationFailedError(f"{repo} was imported as {done.sha}, the bundle says {sha}")
        result.weights_imported.append(f"{repo}@{revision}")


def _verify_and_load(  # noqa: PLR0917 - load_bundle's one step, handed its state whole
    bundle: Path,
    staging: Path,
    models: Path,
    engine: DockerEngine,
    images: dict[str, tuple[Member, str]],
    result: LoadResult,
    progress: Progress | None,
    say: Callable[[str], None],
) -> None:
    """Verify every member; load the images into Docker and move the weights in."""
    manifest = result.manifest
    # Docker loads the images as soon as they are verified, while the weights are still being
    # checked (Docker works in its own process); should anything then fail its check, the images
    # this load put in are taken out again, so a refused bundle leaves nothing behind.
    pending = {member.path for member, _ in images.values()}
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle-docker-load") as pool:
        loading: Future[None] | None = None

        def start_loading() -> None:
            nonlocal loading
            loading = pool.submit(_load_images, engine, bundle, images, result, say)

        def verified(member: Member) -> None:
            with lock:
                pending.discard(member.path)
                if not pending and loading is None:
                    start_loading()

        with lock:
            if not pending:
                start_loading()
        try:
            verify_into(
                bundle, staging, progress, how=_handling(manifest, models), on_verified=verified
            )
        except BaseException:
            _unload(engine, loading, result)
            raise
        try:
            _import_weights(manifest, staging, models, result, say)
        finally:
            if loading is not None:
                loading.result()


def load_bundle(
    bundle: Path,
    box: Box,
    engine: DockerEngine,
    *,
    profiles_dir: Path,
    models_dir: Path | None = None,
    expect_sha256: str | None = None,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
    free_bytes: Callable[[Path], int] | None = None,
) -> LoadResult:
    """Verify `bundle` completely, then load its images, import its weights and install its
    profile (into `profiles_dir`, pointing at `models_dir` when given)."""
    say = note or (lambda _text: None)
    if not bundle.is_file():
        raise BadInputError(f"{bundle} is not a file")
    manifest = read_manifest(bundle)
    check_expected(manifest, expect_sha256)
    check_target(manifest.target, target_of(box))
    profile_member = _profile_member(manifest)
    profile, profile_text = _installed_profile(
        _read_profile(bundle, profile_member), profile_member.path, models_dir
    )
    models = profile.spec.storage.models_dir
    images = {_image_of(m)[0]: (m, _image_of(m)[1]) for m in manifest.members if m.kind == "image"}
    lacking = [image for image in engine_images(profile, box) if image not in images]
    if lacking:
        raise RefusedError(
            f"this box runs {', '.join(lacking)} for profile {profile.metadata.name}, which the "
            f"bundle does not carry (it has {', '.join(sorted(images)) or 'no images'})",
            hint="create the bundle for this box: appliance bundle create PROFILE --simulate "
            "FILE, with FILE from `appliance detect --json` here",
        )
    profile_path = profiles_dir / f"{profile.metadata.name}.yaml"
    if profile_path.exists() and profile_path.read_bytes() != profile_text:
        raise RefusedError(
            f"{profile_path} exists and differs from the bundle's profile; nothing was changed",
            hint="move it away, or load into another --profiles-dir",
        )
    staging = staging_dir(models, manifest)
    _check_disk(manifest, staging, models, free_bytes)
    if on_total is not None:
        on_total(sum(m.size for m in manifest.members))
    say(f"verifying {len(manifest.members)} members into {staging}")
    result = LoadResult(manifest, profile_path)
    _verify_and_load(bundle, staging, models, engine, images, result, progress, say)
    profiles_dir.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write(profile_path, profile_text, mode=0o644)
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # only when empty: an import may be using it
    return result


__all__ = ["LoadResult", "load_bundle", "staging_dir"]
