"""`weights pull`: preflight (revision resolved, files listed, access and disk checked), then
transfers into partial files this package owns, verified, renamed into place; a large file in
~64 MiB chunks over several connections, resumable per chunk, as a CDN caps each connection.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import fileio
from appliance.errors import (
    ApplianceError,
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
)
from appliance.weights.hub import _Hub, _Located, _NoRanges, _select, _xet_usable
from appliance.weights.importer import check_safetensors
from appliance.weights.layout import (
    _CHUNK_ATTEMPTS,
    _CHUNK_BYTES,
    _CHUNKS_SUFFIX,
    _CONNECTIONS,
    _HASH_CHUNK,
    _MIB,
    DownloadCancelledError,
    HubToken,
    InstalledWeights,
    ManifestFile,
    ProgressCallback,
    PullPlan,
    RemoteFile,
    _partial_dir,
    _revision_name,
    _safe_relative,
    profile_weights,
    snapshot_dir,
)
from appliance.weights.progress import _Cancelled, _HashingWriter, _Progress
from appliance.weights.store import (
    _check_disk,
    _point_revision,
    _repo_lock,
    _write_manifest,
    disk_free_bytes,
    find_installed,
)

if TYPE_CHECKING:
    from appliance.profile import Profile

_log = logging.getLogger("appliance.weights")


# --- pull ---------------------------------------------------------------------------------------


def _catalog_bytes(repo: str) -> int | None:
    from appliance.catalog import load_catalog

    catalog = load_catalog()
    found = catalog.model_by_repo(repo)
    if found is not None:
        return found[1].weight_bytes
    embedding = catalog.embedding(repo)
    return embedding.weight_bytes if embedding is not None else None


def _bytes_on_disk(models_dir: Path, repo: str, sha: str, files: Sequence[RemoteFile]) -> int:
    done = 0
    final, partial = snapshot_dir(models_dir, repo, sha), _partial_dir(models_dir, repo, sha)
    for f in files:
        rel = _safe_relative(f.path)
        with contextlib.suppress(OSError):
            if (final / rel).stat().st_size == f.size:
                done += f.size
                continue
        done += _partial_bytes(partial / rel, f)
    return done


def _plan(hub: _Hub, repo: str, revision: str, models_dir: Path) -> PullPlan:
    _revision_name(revision)
    sha, gated = hub.resolve(repo, revision)
    listed = hub.list_files(repo, revision, sha)
    chosen = set(_select([f.path for f in listed]))
    files = tuple(sorted((f for f in listed if f.path in chosen), key=lambda f: f.path))
    if not any(f.path.endswith(".safetensors") for f in files):
        others = sorted(f.path for f in listed if f.path.endswith((".bin", ".pt", ".pth", ".gguf")))
        found = f"; it has only {', '.join(others[:3])}" if others else ""
        raise BadInputError(
            f"{repo}@{revision} (commit {sha[:12]}) has no .safetensors weights{found}",
            "the appliance loads safetensors only, never pickled .bin/.pt weights; choose a "
            "repo that publishes safetensors (see the catalog), or convert and import it",
        )
    installed = find_installed(models_dir, repo, sha)
    return PullPlan(
        repo=repo,
        revision=revision,
        sha=sha,
        files=files,
        gated=gated,
        bytes_on_disk=_bytes_on_disk(models_dir, repo, sha, files),
        installed=installed is not None,
        catalog_weight_bytes=_catalog_bytes(repo),
    )


def _plan_or_installed(
    hub: _Hub, repo: str, revision: str, models_dir: Path
) -> PullPlan | InstalledWeights:
    """The plan; or, when the Hub cannot be asked (HF_HUB_OFFLINE, no network) but the revision
    is complete on the box already (pulled earlier, or imported), that snapshot: a no-op."""
    try:
        return _plan(hub, repo, revision, models_dir)
    except EnvironmentNotReadyError:
        installed = find_installed(models_dir, repo, revision)
        if installed is None:
            raise
        return installed


def plan_pull(
    repo: str,
    revision: str = "main",
    *,
    models_dir: Path,
    token: HubToken | None = None,
    endpoint: str | None = None,
) -> PullPlan:
    """Preflight only: resolve the revision, list the files and what is on disk. No file bytes."""
    return _plan(_Hub(endpoint, token), repo, revision, models_dir)


def _verify(f: RemoteFile, path: Path, writer: _HashingWriter) -> str | None:
    """None when the file is what the Hub listed, else what is wrong."""
    return _verify_digests(f, path, writer.sha256.hexdigest(), writer.sha1)


def _verify_digests(f: RemoteFile, path: Path, sha256: str, sha1: Any | None) -> str | None:
    size = path.stat().st_size
    if size != f.size:
        return f"size {size} B, the Hub lists {f.size} B"
    if f.sha256 is not None and sha256 != f.sha256:
        return "SHA-256 differs from the Hub's"
    if sha1 is not None and f.blob_id is not None and sha1.hexdigest() != f.blob_id:
        return "git blob id differs from the Hub's"
    return None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Transfers:
    """What all files of a pull share: at most `slots` HTTP transfers at once (files and chunks
    together), the pool that fetches chunks, and the chunk size."""

    slots: threading.BoundedSemaphore
    chunk_pool: ThreadPoolExecutor
    chunk_bytes: int
    stop: threading.Event


def _damaged(plan: PullPlan, f: RemoteFile, problem: str) -> OperationFailedError:
    return OperationFailedError(
        f"{plan.repo}: {f.path} arrived damaged twice ({problem})",
        "the file was discarded; check the network or proxy and pull again",
    )


def _disk_full(models_dir: Path, f: RemoteFile) -> EnvironmentNotReadyError:
    return EnvironmentNotReadyError(
        f"the disk under {models_dir} filled up while downloading {f.path}",
        "free some space and pull again; it resumes",
    )


def _install(partial: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(partial, 0o644)  # noqa: PTH101 - readable by the engine containers
    partial.replace(final)


def _download_file(
    hub: _Hub,
    plan: PullPlan,
    f: RemoteFile,
    *,
    models_dir: Path,
    progress: _Progress,
    located: _Located,
    transfers: _Transfers,
) -> ManifestFile:
    """Fetch (or resume) one file into .partial, verify it, move it into the snapshot: through
    hf_xet when the Hub says the file is Xet-backed (and hf_xet is installed), as parallel range
    requests when it is larger than a chunk, as one stream otherwise."""
    rel = _safe_relative(f.path)
    final = snapshot_dir(models_dir, plan.repo, plan.sha) / rel
    if final.is_file() and final.stat().st_size == f.size:
        # Verified before it was renamed into place by an earlier, interrupted run.
        progress.file_done(f.path)
        return ManifestFile(f.path, f.size, f.sha256 or _sha256_of(final))
    partial = _partial_dir(models_dir, plan.repo, plan.sha) / rel
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest: str | None = None
        if located.xet is not None and _xet_usable():
            digest = _download_xet(
                hub,
                plan=plan,
                f=f,
                partial=partial,
                located=located,
                progress=progress,
                transfers=transfers,
            )
        if digest is not None:
            pass
        elif len(_chunk_bounds(f.size, transfers.chunk_bytes)) > 1:
            digest = _download_chunked(
                hub,
                plan=plan,
                f=f,
                partial=partial,
                located=located,
                progress=progress,
                transfers=transfers,
            )
        else:
            digest = _download_stream(
                hub,
                plan=plan,
                f=f,
                partial=partial,
                located=located,
                progress=progress,
                transfers=transfers,
            )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(models_dir, f) from None
        raise
    _install(partial, final)
    progress.file_done(f.path)
    return ManifestFile(f.path, f.size, digest)


def _download_stream(
    hub: _Hub,
    *,
    plan: PullPlan,
    f: RemoteFile,
    partial: Path,
    located: _Located,
    progress: _Progress,
    transfers: _Transfers,
) -> str:
    """One HTTP stream with Range resume (huggingface_hub's `http_get`), hashed while written."""
    if _chunks_path(partial).exists():
        # Left by a chunked run (another chunk size): full-size and sparse, so no prefix to resume.
        progress.add(-_partial_bytes(partial, f))
        partial.unlink(missing_ok=True)
        _chunks_path(partial).unlink()
    for attempt in (1, 2):
        if partial.exists() and partial.stat().st_size > f.size:
            progress.add(-partial.stat().st_size)
            partial.unlink()
        mode = "r+b" if partial.exists() else "w+b"
        with partial.open(mode) as handle:
            writer = _HashingWriter(handle, None if f.sha256 else f.size)
            writer.absorb_existing()
            resume = handle.tell()
            try:
                with transfers.slots:
                    hub.fetch(
                        plan.repo,
                        plan.revision,
                        located.url,
                        headers=dict(located.headers),
                        writer=writer,
                        resume_size=resume,
                        expected_size=f.size,
                        bar=progress.bar_class(f.path),
                    )
            except OSError as exc:
                if exc.errno is not None:
                    raise
                problem: str | None = str(exc).split("\n", 1)[0]  # http_get's size check
            else:
                handle.flush()
                os.fsync(handle.fileno())
                problem = _verify(f, partial, writer)
        if problem is None:
            return writer.sha256.hexdigest()
        progress.add(-partial.stat().st_size if partial.exists() else 0)
        partial.unlink(missing_ok=True)
        if attempt == 2:
            raise _damaged(plan, f, problem)
    raise AssertionError("unreachable")  # pragma: no cover


def _download_xet(
    hub: _Hub,
    *,
    plan: PullPlan,
    f: RemoteFile,
    partial: Path,
    located: _Located,
    progress: _Progress,
    transfers: _Transfers,
) -> str | None:
    """A Xet-backed file through huggingface_hub's `xet_get` (hf_xet: many chunk streams, its own
    retries); None when hf_xet failed, and the caller fetches the file over HTTP instead (the Hub
    serves Xet-backed files at the same URL). hf_xet writes the whole file, so a Xet-backed file
    cut off mid-way starts again from its first byte on the next pull (complete files are kept;
    bytes an earlier HTTP run left in the partial file leave the byte count). Verified by reading
    the file back: hf_xet checks its chunks' hashes; ours is the Hub's SHA-256."""
    for attempt in (1, 2):
        progress.add(-_partial_bytes(partial, f))
        partial.unlink(missing_ok=True)
        _chunks_path(partial).unlink(missing_ok=True)
        bar: Any = progress.bar_class(f.path)
        try:
            with transfers.slots:
                hub.fetch_xet(located, partial=partial, expected_size=f.size, bar=bar)
        except _Cancelled:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            failure: Exception | None = exc
        except Exception as exc:  # noqa: BLE001 - any hf_xet failure: HTTP still works
            failure = exc
        else:
            failure = None
        if failure is not None:
            progress.check()  # a cancel shows in hf_xet as a failed progress callback
            _log.warning(
                "hf_xet could not fetch %s (%s); fetching it over HTTP",
                f.path,
                type(failure).__name__,
            )
            progress.add(-bar.counted)
            partial.unlink(missing_ok=True)
            return None
        digest = _sha256_of(partial)
        problem = _verify_digests(f, partial, digest, None)
        if problem is None:
            return digest
        progress.add(f.size - bar.counted)  # the next round takes back the file's size
        if attempt == 2:
            progress.add(-f.size)
            partial.unlink(missing_ok=True)
            raise _damaged(plan, f, problem)
    raise AssertionError("unreachable")  # pragma: no cover


# --- parallel ranges ----------------------------------------------------------------------------
#
# A file of at least ~1.5 chunks is cut into equal chunks of about C (`_chunk_bounds`), fetched
# over up to `_CONNECTIONS` connections, each written with pwrite into the partial file (made
# full-size, sparse, first). What is on disk is recorded in a sidecar `<file>.chunks.json`
# ({"size", "done": [[start, end], …]}), rewritten atomically after each chunk was fdatasync'ed:
# a crash never records unwritten bytes, and the next run fetches only what is missing, whatever
# its chunk size. A partial file without a sidecar (from a single-stream run) counts as its
# contiguous prefix. SHA-256 is computed in order by the file's own worker as the contiguous
# prefix of finished chunks grows (read back from the page cache while later chunks still
# arrive), so little hashing is left when the last chunk lands.


def _chunk_bounds(size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """`size` cut into the nearest whole number of equal chunks (1 MiB-aligned where they are
    larger): no 64 MiB shard ends in a chunk of a few bytes."""
    count = max(1, round(size / chunk_bytes))
    step = -(-size // count)
    if step > _MIB:
        step = -(-step // _MIB) * _MIB
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def _chunks_path(partial: Path) -> Path:
    return partial.with_name(partial.name + _CHUNKS_SUFFIX)


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _done_ranges(partial: Path, size: int) -> list[tuple[int, int]]:
    """The byte ranges of `partial` an earlier run wrote and recorded, merged."""
    try:
        on_disk = partial.stat().st_size
    except OSError:
        return []
    try:
        recorded = json.loads(_chunks_path(partial).read_text())
    except FileNotFoundError:
        return [(0, on_disk)] if 0 < on_disk <= size else []
    except (OSError, ValueError):
        return []
    if not isinstance(recorded, dict) or recorded.get("size") != size or on_disk != size:
        return []
    try:
        ranges = [(int(a), int(b)) for a, b in recorded["done"]]
    except (KeyError, TypeError, ValueError):
        return []
    return _merge([(a, b) for a, b in ranges if 0 <= a < b <= size])


def _partial_bytes(partial: Path, f: RemoteFile) -> int:
    """What `partial` holds of `f` that a resumed pull keeps (and progress counts as done)."""
    return sum(b - a for a, b in _done_ranges(partial, f.size))


def _record_chunks(partial: Path, size: int, done: Sequence[tuple[int, int]]) -> None:
    payload = {"size": size, "done": [list(r) for r in _merge(done)]}
    fileio.atomic_write(_chunks_path(partial), json.dumps(payload).encode(), mode=0o600)


def _transient(exc: Exception) -> bool:
    """Worth asking for the rest of the chunk again: a dropped connection, a timeout, a 5xx/429."""
    import httpx2
    from huggingface_hub import errors as hub_errors  # noqa: TID251 - this is the Hub adapter

    if isinstance(exc, hub_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status >= 500 or status in (408, 429)
    return isinstance(exc, httpx2.TransportError)


def _refused(exc: Exception) -> bool:
    from huggingface_hub import errors as hub_errors  # noqa: TID251 - this is the Hub adapter

    response = exc.response if isinstance(exc, hub_errors.HfHubHTTPError) else None
    return response is not None and response.status_code in (401, 403, 410)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _ChunkedFile:
    """One file's chunks: which are on disk, fetching the missing ones, hashing the prefix."""

    def __init__(self, partial: Path, f: RemoteFile, chunk_bytes: int) -> None:
        self.partial, self.f = partial, f
        self.chunks = _chunk_bounds(f.size, chunk_bytes)
        kept = _done_ranges(partial, f.size)
        # Bytes of a chunk already there: the part of a recorded range that starts at its start.
        self.have = [
            next((min(y, b) - a for x, y in kept if x <= a < y), 0) for a, b in self.chunks
        ]
        self.done = {i for i, (a, b) in enumerate(self.chunks) if self.have[i] == b - a}
        self.kept_bytes = sum(self.have)
        self._recorded = [(a, a + h) for (a, _), h in zip(self.chunks, self.have, strict=True) if h]
        self._cond = threading.Condition()
        # The sidecar before the file is made full-size: a full-size file is never mistaken for
        # a complete prefix.
        _record_chunks(partial, f.size, self._recorded)
        self.fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, f.size)

    def close(self) -> None:
        os.close(self.fd)

    def fetch(
        self,
        i: int,
        *,
        hub: _Hub,
        plan: PullPlan,
        located: _Located,
        progress: _Progress,
        slots: threading.BoundedSemaphore,
    ) -> None:
        start, end = self.chunks[i]
        position = start + self.have[i]
        url, headers, renewed = located.url, located.headers, False

        def sink(data: bytes) -> None:
            nonlocal position
            if position + len(data) > end:
                raise OperationFailedError(
                    f"{plan.repo}: the server sent more of {self.f.path} than asked"
                )
            _pwrite_all(self.fd, data, position)
            position += len(data)
            progress.add(len(data), self.f.path)

        for attempt in range(1, _CHUNK_ATTEMPTS + 1):
            progress.check()
            try:
                with slots:
                    hub.fetch_range(url, headers=headers, start=position, end=end, sink=sink)
            except _NoRanges:
                raise OperationFailedError(
                    f"the server of {plan.repo} ignored a Range request for {self.f.path}",
                    "check the proxy in between (HTTPS_PROXY): it must pass Range requests",
                ) from None
            except (_Cancelled, ApplianceError):
                raise
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the local disk (huggingface_hub's HTTP errors are OSErrors too)
                if attempt < _CHUNK_ATTEMPTS and _refused(exc) and not renewed:
                    # A signed CDN URL lives about an hour; a long pull asks the Hub for a new one
                    # (and a real refusal shows on that HEAD, mapped as for any file).
                    fresh = hub.locate(plan.repo, plan.revision, plan.sha, self.f.path)
                    url, headers, renewed = fresh.url, fresh.headers, True
                    continue
                if attempt == _CHUNK_ATTEMPTS or not _transient(exc):
                    with hub.errors(plan.repo, plan.revision):
                        raise
                time.sleep(0.25 * 2**attempt)
                continue  # the rest of the chunk, from the byte it stopped at
            if position == end:
                break
        else:
            raise OperationFailedError(
                f"{plan.repo}: a chunk of {self.f.path} kept arriving short",
                "run the pull again; it resumes where it stopped",
            )
        os.fdatasync(self.fd)
        with self._cond:
            self._recorded.append((start, end))
            _record_chunks(self.partial, self.f.size, self._recorded)
            self.done.add(i)
            self._cond.notify_all()

    def wake(self, _future: object = None) -> None:
        with self._cond:
            self._cond.notify_all()

    def hash_in_order(
        self, futures: Sequence[Future[None]], progress: _Progress
    ) -> _HashingWriter | None:
        """SHA-256 (and the git blob id for a non-LFS file) over the chunks in order, each as soon
        as it is on disk; None when a chunk failed or the pull was cancelled."""
        hasher = _HashingWriter(io.BytesIO(), None if self.f.sha256 else self.f.size)
        for i, (start, end) in enumerate(self.chunks):
            with self._cond:
                while i not in self.done:
                    if any(fu.done() and fu.exception() is not None for fu in futures):
                        return None
                    self._cond.wait(1.0)
            offset = start
            while offset < end:
                progress.check()
                data = os.pread(self.fd, min(_HASH_CHUNK, end - offset), offset)
                if not data:
                    raise OperationFailedError(f"{self.partial} shrank while downloading")
                hasher._update(data)
                offset += len(data)
        return hasher


def _download_chunked(
    hub: _Hub,
    *,
    plan: PullPlan,
    f: RemoteFile,
    partial: Path,
    located: _Located,
    progress: _Progress,
    transfers: _Transfers,
) -> str:
    for attempt in (1, 2):
        counted = _partial_bytes(partial, f)  # what preflight (or the failed try) counted as done
        chunked = _ChunkedFile(partial, f, transfers.chunk_bytes)
        try:
            progress.add(chunked.kept_bytes - counted)
            futures = [
                transfers.chunk_pool.submit(
                    chunked.fetch,
                    i,
                    hub=hub,
                    plan=plan,
                    located=located,
                    progress=progress,
                    slots=transfers.slots,
                )
                for i in range(len(chunked.chunks))
                if i not in chunked.done
            ]
            for future in futures:
                future.add_done_callback(chunked.wake)
            try:
                hasher = chunked.hash_in_order(futures, progress)
            finally:
                if any(fu.done() and fu.exception() is not None for fu in futures):
                    transfers.stop.set()  # a real failure stops the whole pull, as for files
                wait(futures)
            errors = [e for fu in futures if (e := fu.exception()) is not None]
            real = [e for e in errors if not isinstance(e, _Cancelled)]
            if real:
                raise real[0]
            if errors or hasher is None:
                raise _Cancelled
            problem = _verify_digests(f, partial, hasher.sha256.hexdigest(), hasher.sha1)
        finally:
            chunked.close()
        if problem is None:
            _chunks_path(partial).unlink(missing_ok=True)
            return hasher.sha256.hexdigest()
        progress.add(-f.size)
        partial.unlink(missing_ok=True)
        _chunks_path(partial).unlink(missing_ok=True)
        if attempt == 2:
            raise _damaged(plan, f, problem)
    raise AssertionError("unreachable")  # pragma: no cover


def pull_weights(
    repo: str,
    revision: str = "main",
    *,
    models_dir: Path,
    token: HubToken | None = None,
    endpoint: str | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
    margin_bytes: int | None = None,
    max_workers: int = _CONNECTIONS,
    chunk_bytes: int = _CHUNK_BYTES,
    clock: Callable[[], float] = time.monotonic,
) -> InstalledWeights:
    """Download `repo` at `revision` into `models_dir`, or do nothing when it is there already.

    Raises `BadInputError` (no such repo/revision, no safetensors), `RefusedError` (gated without
    access, another pull running), `EnvironmentNotReadyError` (disk, network, HF_HUB_OFFLINE),
    `OperationFailedError` (the Hub failed, a file arrived damaged twice) and
    `DownloadCancelledError` (`cancel` was set; the next pull resumes).
    """
    hub = _Hub(endpoint, token)
    plan = _plan_or_installed(hub, repo, revision, models_dir)
    if isinstance(plan, InstalledWeights):
        return plan
    return _execute(
        hub,
        plan,
        models_dir,
        on_progress=on_progress,
        cancel=cancel,
        free_bytes=free_bytes,
        margin_bytes=margin_bytes,
        max_workers=max_workers,
        chunk_bytes=chunk_bytes,
        clock=clock,
    )


def _execute(
    hub: _Hub,
    plan: PullPlan,
    models_dir: Path,
    *,
    on_progress: ProgressCallback | None,
    cancel: threading.Event | None,
    free_bytes: Callable[[Path], int],
    margin_bytes: int | None,
    max_workers: int,
    chunk_bytes: int,
    clock: Callable[[], float],
) -> InstalledWeights:
    with _repo_lock(models_dir, plan.repo):
        if plan.installed:
            _point_revision(models_dir, plan.repo, plan.revision, plan.sha)
            installed = find_installed(models_dir, plan.repo, plan.sha)
            if installed is not None:
                return installed
        _check_disk(models_dir, plan.bytes_total - plan.bytes_on_disk, free_bytes, margin_bytes)
        stop = threading.Event()
        progress = _Progress(
            plan.repo,
            plan.sha,
            files_total=len(plan.files),
            bytes_total=plan.bytes_total,
            bytes_initial=plan.bytes_on_disk,
            callback=on_progress,
            clock=clock,
            stop=stop,
            cancel=cancel,
        )
        final = snapshot_dir(models_dir, plan.repo, plan.sha)
        missing = [
            f
            for f in plan.files
            if not ((final / f.path).is_file() and (final / f.path).stat().st_size == f.size)
        ]
        workers = max(1, min(max_workers, len(plan.files)))
        connections = max(1, max_workers)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="weights") as pool,
            ThreadPoolExecutor(connections, thread_name_prefix="weights-chunk") as chunk_pool,
        ):
            transfers = _Transfers(
                threading.BoundedSemaphore(connections), chunk_pool, chunk_bytes, stop
            )
            # Access (gated, private) shows on the file HEADs: all of them before any GET.
            located = dict(
                zip(
                    [f.path for f in missing],
                    pool.map(
                        lambda f: hub.locate(plan.repo, plan.revision, plan.sha, f.path), missing
                    ),
                    strict=True,
                )
            )
            progress.emit()
            futures = [
                pool.submit(
                    _download_file,
                    hub,
                    plan,
                    f,
                    models_dir=models_dir,
                    progress=progress,
                    located=located.get(f.path, _Located("", {})),
                    transfers=transfers,
                )
                for f in plan.files
            ]
            files = _gather(futures, stop)
        if files is None:
            raise DownloadCancelledError(
                f"the download of {plan.repo} was cancelled",
                "what has arrived is kept; pull again to resume",
            )
        progress.emit("verify")
        try:
            for f in plan.files:
                if f.path.endswith(".safetensors"):
                    check_safetensors(final / f.path, f"{plan.repo}: {f.path}")
        except BadInputError as error:
            # The bytes are the repo's (hashes matched), so fetching again would not help.
            shutil.rmtree(final, ignore_errors=True)
            error.hint = "the repo's own file is broken: pick another revision or repo"
            raise
        installed = _write_manifest(
            models_dir,
            plan.repo,
            revision=plan.revision,
            sha=plan.sha,
            files=files,
            source="hub",
            extra={"endpoint": hub.endpoint},
        )
        _point_revision(models_dir, plan.repo, plan.revision, plan.sha)
        shutil.rmtree(_partial_dir(models_dir, plan.repo, plan.sha), ignore_errors=True)
        with contextlib.suppress(OSError):
            _partial_dir(models_dir, plan.repo, plan.sha).parent.rmdir()
        progress.emit("done")
        return installed


def _gather(
    futures: Sequence[Future[ManifestFile]], stop: threading.Event
) -> list[ManifestFile] | None:
    """Results in order, or None when cancelled. The first failure stops the other workers at
    their next chunk and is raised; so does Ctrl-C in the waiting thread."""
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if not f.cancelled() and f.exception() is not None]
        if any(not isinstance(f.exception(), _Cancelled) for f in failed):
            stop.set()
        wait(futures)
    finally:
        stop.set()
    errors = [e for f in futures if (e := f.exception()) is not None]
    real = [e for e in errors if not isinstance(e, _Cancelled)]
    if real:
        if isinstance(real[0], ApplianceError):
            raise real[0]
        raise OperationFailedError(f"the download failed: {real[0]}") from real[0]
    return None if errors else [f.result() for f in futures]


def pull_profile(
    profile: Profile,
    *,
    models_dir: Path | None = None,
    token: HubToken | None = None,
    endpoint: str | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
    margin_bytes: int | None = None,
    max_workers: int = _CONNECTIONS,
    chunk_bytes: int = _CHUNK_BYTES,
    clock: Callable[[], float] = time.monotonic,
) -> list[InstalledWeights]:
    """Pull everything a profile needs; all preflights (and the disk check for the sum) first."""
    target = models_dir or profile.spec.storage.models_dir
    hub = _Hub(endpoint, token)
    plans = [_plan_or_installed(hub, r.repo, r.revision, target) for r in profile_weights(profile)]
    needed = sum(p.bytes_to_fetch for p in plans if isinstance(p, PullPlan))
    _check_disk(target, needed, free_bytes, margin_bytes)
    return [
        p
        if isinstance(p, InstalledWeights)
        else _execute(
            hub,
            p,
            target,
            on_progress=on_progress,
            cancel=cancel,
            free_bytes=free_bytes,
            margin_bytes=margin_bytes,
            max_workers=max_workers,
            chunk_bytes=chunk_bytes,
            clock=clock,
        )
        for p in plans
    ]
