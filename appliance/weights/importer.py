"""`weights import`: weights for an air-gapped box from a directory or a tarball, staged,
checked (safetensors headers, configs, no links out) and installed with a manifest written last.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    RefusedError,
)
from appliance.weights.hub import _select
from appliance.weights.layout import (
    _COMMIT_RE,
    _CONFIG_FILES,
    _HASH_CHUNK,
    _SAFETENSORS_BITS,
    _SAFETENSORS_MAX_HEADER,
    _STAGING_DIR,
    DownloadCancelledError,
    InstalledWeights,
    ManifestFile,
    ProgressCallback,
    _manifest_path,
    _repo_dir,
    _repo_parts,
    _revision_name,
    _safe_relative,
    snapshot_dir,
)
from appliance.weights.progress import _Cancelled, _Progress
from appliance.weights.store import (
    _check_disk,
    _point_revision,
    _repo_lock,
    _write_manifest,
    disk_free_bytes,
)

if TYPE_CHECKING:
    pass

_log = logging.getLogger("appliance.weights")


# --- import -------------------------------------------------------------------------------------


def _is_tarball(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def _extract_tarball(tarball: Path, into: Path, check_space: Callable[[int], None]) -> None:
    """Extract regular files and directories only; no absolute paths, `..`, links or devices.

    Every member is checked before anything is written, then the unpacked size against the disk.
    """
    try:
        with tarfile.open(tarball) as archive:
            members = archive.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise RefusedError(
                        f"{tarball} contains '{member.name}', which would land outside the "
                        "import directory",
                        "build the tarball from inside the model directory: "
                        "tar -C MODEL_DIR -czf model.tar.gz .",
                    )
                if not (member.isfile() or member.isdir()):
                    raise RefusedError(
                        f"{tarball} contains '{member.name}', which is a link or a device",
                        "pack the files themselves: tar --dereference -czf model.tar.gz …",
                    )
            check_space(sum(m.size for m in members if m.isfile()))
            archive.extractall(into, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise EnvironmentNotReadyError(
                f"the disk under {into} filled up while extracting {tarball}",
                "free some space and import again",
            ) from None
        raise BadInputError(f"cannot read {tarball} as a tarball: {exc}") from None


def _model_root(directory: Path) -> Path:
    """The directory with the weights: `directory`, or its single subdirectory if only that.

    A link is never that subdirectory: the tree walk then finds it and refuses it."""
    entries = [e for e in directory.iterdir() if not e.name.startswith(".")]
    if (
        len(entries) == 1
        and entries[0].is_dir()
        and not entries[0].is_symlink()
        and not any(directory.glob("*.safetensors"))
    ):
        return entries[0]
    return directory


def _source_commit(root: Path) -> str | None:
    """The commit a directory came from, when it says so: a Hub cache snapshot dir, or a
    `local_dir` download's metadata (`.cache/huggingface/download/*.metadata`, first line)."""
    if _COMMIT_RE.match(root.name):
        return root.name
    for meta in sorted((root / ".cache" / "huggingface" / "download").glob("*.metadata")):
        with contextlib.suppress(OSError, IndexError):
            first = meta.read_text(encoding="utf-8").splitlines()[0].strip()
            if _COMMIT_RE.match(first):
                return first
    return None


def import_weights(
    source: Path,
    repo: str,
    revision: str | None = None,
    *,
    models_dir: Path,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
    margin_bytes: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    verified_sha256: Mapping[str, str] | None = None,
) -> InstalledWeights:
    """Record weights brought in by hand (a directory or a tarball) as `repo` at `revision`.

    `verified_sha256` (path in the snapshot → SHA-256): the directory is the caller's own
    staging copy on the models dir's filesystem whose files it has just hash-checked
    (`bundle load`); they are moved in, neither copied nor hashed again.

    The same files a pull would keep are copied (safetensors, configs, tokenizer, templates) and
    hashed into a manifest. The snapshot is named by the source's commit when it tells one (a
    40-hex `revision`, a Hub cache snapshot directory, a `local_dir` download), else by a content
    id (sha1 over the files' names and SHA-256s). `revision` defaults to main, so a profile that
    says `revision: main` finds it offline.

    What must stay true: links in a directory are refused, never followed (a Hub cache
    snapshot's links into its own `blobs/` are the one exception); every safetensors header is
    checked and a config is required before a byte is copied; the copy is staged in
    `models_dir/.staging/` (same filesystem), renamed into place, and the manifest — what makes
    `list_weights` show it — is written last. A failure at any step leaves nothing behind.
    """
    _repo_parts(repo)
    wanted_revision = revision or "main"
    _revision_name(wanted_revision)
    if not source.exists():
        raise BadInputError(f"{source} does not exist", "give a model directory or a tarball")
    if not (source.is_dir() or _is_tarball(source)):
        raise BadInputError(
            f"{source} is neither a directory nor a tarball",
            "give the model directory (config.json and *.safetensors) or a .tar/.tar.gz of it",
        )
    repo_dir = _repo_dir(models_dir, repo)
    stop = threading.Event()
    placed: Path | None = None
    completed = False
    with _repo_lock(models_dir, repo):
        staging = Path(tempfile.mkdtemp(prefix="import-", dir=_ensure(models_dir / _STAGING_DIR)))
        try:
            if source.is_dir():
                root = _model_root(source)
            else:
                _extract_tarball(
                    source,
                    staging / "extracted",
                    lambda size: _check_disk(models_dir, size, free_bytes, margin_bytes),
                )
                root = _model_root(staging / "extracted")
            files = _import_files(root, source, repo)
            _check_import(files, source)
            total = sum(p.stat().st_size for _, p in files)
            consume = verified_sha256 is not None
            if source.is_dir() and not consume:  # moved files need no new space
                _check_disk(models_dir, total, free_bytes, margin_bytes)
            progress = _Progress(
                repo,
                "",
                files_total=len(files),
                bytes_total=total,
                bytes_initial=0,
                callback=on_progress,
                clock=clock,
                stop=stop,
                cancel=cancel,
                phase="import",
            )
            manifest = _copy_into(
                files,
                staging / "snapshot",
                progress,
                move=consume or not source.is_dir(),
                known=verified_sha256,
            )
            commit = _commit_for(revision, root, manifest)
            final = snapshot_dir(models_dir, repo, commit)
            if final.exists():  # imported before: unlist it first, then replace it
                _manifest_path(models_dir, repo, commit).unlink(missing_ok=True)
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            (staging / "snapshot").replace(final)
            placed = final
            _point_revision(models_dir, repo, wanted_revision, commit)
            installed = _write_manifest(
                models_dir,
                repo,
                revision=wanted_revision,
                sha=commit,
                files=manifest,
                source="import",
                extra={
                    "imported_from": str(source.resolve()),
                    "sha_is_commit": commit != _content_id(manifest),
                },
            )
            completed = True
            progress.emit("done")
            return installed
        except _Cancelled:
            raise DownloadCancelledError(f"the import of {repo} was cancelled") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not completed and placed is not None:
                shutil.rmtree(placed, ignore_errors=True)
            _remove_empty(models_dir / _STAGING_DIR, repo_dir, repo_dir.parent)


def _remove_empty(*directories: Path) -> None:
    """rmdir each directory that is empty (a failed import's leftovers); others stay."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hub_cache_blobs(root: Path) -> Path | None:
    """`<cache>/models--org--name/blobs` when `root` is a snapshot of huggingface_hub's cache
    (`…/snapshots/<commit>`), whose files are relative links into that `blobs/`."""
    if _COMMIT_RE.match(root.name) and root.parent.name == "snapshots":
        blobs = root.parent.parent / "blobs"
        if blobs.is_dir() and not blobs.is_symlink():
            return blobs.resolve()
    return None


def _refuse_link(source: Path, path: Path, root: Path) -> RefusedError:
    rel = path.relative_to(root).as_posix()
    try:
        target = str(path.readlink())
    except OSError:
        target = "?"
    return RefusedError(
        f"{source} contains '{rel}', which is a link (to {target}); links are never followed "
        "into the models directory",
        "replace the link with the file itself (cp --dereference, after checking where it "
        "points), or remove it, then import again",
    )


def _import_files(root: Path, source: Path, repo: str) -> list[tuple[str, Path]]:
    """(path in the snapshot, file to read) of every file to import.

    Walks without following links and refuses the first link it meets, file or directory,
    wherever it is (what it points to, `/etc/shadow` or `/proc/self/environ`, must never land
    in the models dir). A Hub cache snapshot's links into its own `blobs/` are read as the blob
    they resolve to, and only when that is a regular file inside that `blobs/`.
    """
    blobs = _hub_cache_blobs(root)
    found: list[tuple[str, Path]] = []

    def unreadable(error: OSError) -> None:
        raise error  # os.walk would skip a directory it cannot read; the caller says so

    for directory, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(directory)
        rel_dir = here.relative_to(root).as_posix()
        if rel_dir == ".cache" or rel_dir.startswith(".cache/"):
            dirnames.clear()  # huggingface_hub's download metadata: read by _source_commit only
            continue
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise _refuse_link(source, here / name, root)
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if not path.is_symlink():
                if path.is_file():  # FIFOs, sockets and devices are not weights
                    found.append((rel, path))
                continue
            target = Path(os.path.realpath(path))
            if blobs is None or not target.is_relative_to(blobs) or target.is_symlink():
                raise _refuse_link(source, path, root)
            if target.is_file():
                found.append((rel, target))
    found.sort()
    keep = set(_select([rel for rel, _ in found]))
    chosen = [(rel, path) for rel, path in found if rel in keep]
    if not any(rel.endswith(".safetensors") for rel, _ in chosen):
        raise BadInputError(
            f"{source} holds no .safetensors files to import as {repo}",
            "point at the model directory itself (config.json and *.safetensors inside)",
        )
    return chosen


def _check_import(files: Sequence[tuple[str, Path]], source: Path) -> None:
    """What an engine would refuse, found before copying: a missing config, a damaged
    safetensors file (truncated, not safetensors, offsets outside the file)."""
    names = {rel for rel, _ in files}
    if not names.intersection(_CONFIG_FILES):
        raise BadInputError(
            f"{source} has no config.json (nor adapter_config.json, for a LoRA adapter): an "
            "engine cannot load weights without it",
            "import the whole model directory as the Hub has it, config.json included",
        )
    for rel, path in files:
        if rel.endswith(".safetensors"):
            check_safetensors(path, rel)


def check_safetensors(path: Path, name: str | None = None) -> None:
    """Raise `BadInputError` naming the file unless its header is one the safetensors library
    would load: 8-byte little-endian length within the file and within safetensors' bound,
    a UTF-8 JSON object, every tensor of a known dtype with offsets that tile the data after
    the header exactly and match shape x dtype (safetensors/src/tensor.rs, `read_metadata` and
    `Metadata::validate`). Reads the header only."""
    shown = name or str(path)

    def broken(why: str) -> BadInputError:
        return BadInputError(
            f"{shown} is not a valid safetensors file: {why}",
            "copy it again from the source (it may be truncated or damaged), or check that "
            "it really is the model's weights",
        )

    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise broken(f"{size} bytes is too short for a header")
            length = int.from_bytes(prefix, "little")
            if length > min(size - 8, _SAFETENSORS_MAX_HEADER):
                raise broken(f"its header claims {length} bytes, the file has {size}")
            raw = handle.read(length)
    except OSError as exc:
        raise EnvironmentNotReadyError(
            f"cannot read {shown}: {exc.strerror}", "check its permissions"
        ) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise broken("its header is not JSON") from None
    if not isinstance(header, dict):
        raise broken("its header is not a JSON object")
    _check_tensors(header, size - 8 - length, broken)


def _check_tensors(
    header: dict[str, Any], data_bytes: int, broken: Callable[[str], BadInputError]
) -> None:
    """Each tensor's dtype, shape and offsets, and that together they tile the data exactly."""
    spans: list[tuple[int, int, str]] = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise broken(f"tensor '{tensor}' lacks dtype, shape or data_offsets") from None
        if dtype not in _SAFETENSORS_BITS:
            raise broken(f"tensor '{tensor}' has the unknown dtype {dtype!r}")
        if not (
            isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and type(begin) is int
            and type(end) is int
            and 0 <= begin <= end
        ):
            raise broken(f"tensor '{tensor}' has a malformed shape or data_offsets")
        if end > data_bytes:
            raise broken(
                f"tensor '{tensor}' ends at byte {end} of the data, past the file's end "
                f"({data_bytes} bytes of data): the file is truncated"
            )
        bits = math.prod(shape) * _SAFETENSORS_BITS[dtype]
        if bits % 8 or end - begin != bits // 8:
            raise broken(
                f"tensor '{tensor}' ({dtype} {shape}) needs {bits / 8:g} bytes, its "
                f"data_offsets span {end - begin}"
            )
        spans.append((begin, end, tensor))
    position = 0
    for begin, end, tensor in sorted(spans):
        if begin != position:
            raise broken(f"tensor '{tensor}' starts at byte {begin} of the data, not {position}")
        position = end
    if position != data_bytes:
        raise broken(f"its tensors cover {position} bytes of data, the file holds {data_bytes}")


def _copy_into(
    files: Sequence[tuple[str, Path]],
    into: Path,
    progress: _Progress,
    *,
    move: bool,
    known: Mapping[str, str] | None = None,
) -> list[ManifestFile]:
    manifest: list[ManifestFile] = []
    for rel, path in files:
        target = into / _safe_relative(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        if move and known is not None and rel in known:  # hash-checked by the caller just now
            size = path.stat().st_size
            path.replace(target)
            target.chmod(0o644)
            manifest.append(ManifestFile(rel, size, known[rel]))
            progress.add(size, rel)
            progress.file_done(rel)
            continue
        if move:  # extracted from a tarball onto this filesystem: hash it, then rename
            with path.open("rb") as src:
                while chunk := src.read(_HASH_CHUNK):
                    digest.update(chunk)
                    progress.add(len(chunk), rel)
            path.replace(target)
        else:
            with path.open("rb") as src, target.open("wb") as dst:
                while chunk := src.read(_HASH_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    progress.add(len(chunk), rel)
        target.chmod(0o644)
        manifest.append(ManifestFile(rel, target.stat().st_size, digest.hexdigest()))
        progress.file_done(rel)
    return manifest


def _content_id(manifest: Sequence[ManifestFile]) -> str:
    digest = hashlib.sha1()  # noqa: S324 - a name for content, in the shape of a commit id
    for f in sorted(manifest, key=lambda f: f.path):
        digest.update(f"{f.path}\0{f.sha256}\n".encode())
    return digest.hexdigest()


def _commit_for(revision: str | None, root: Path, manifest: Sequence[ManifestFile]) -> str:
    if revision is not None and _COMMIT_RE.match(revision):
        return revision
    return _source_commit(root) or _content_id(manifest)
