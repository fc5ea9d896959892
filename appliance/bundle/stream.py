"""Bundle tar IO: write members while hashing them, then the manifest last; read back by
stream-verifying every member into a staging dir before anything uses it.

The writer writes its own tar headers (GNU format, which Python's tarfile and GNU tar read):
a member's header goes out with size 0, its bytes stream after it (from a file or from a
generator such as `docker save`, whose size is not known beforehand), and the header is then
rewritten in place with the real size. So nothing is staged: the only full copy is the bundle.
Hashing runs on a second thread beside the write (hashlib and file writes release the GIL), so
a member costs one read, one hash and one write.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Literal

from appliance.bundle.manifest import (
    MANIFEST_NAME,
    Kind,
    Manifest,
    Member,
    Target,
    check_member,
    parse_manifest,
)
from appliance.errors import BadInputError, RefusedError

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
VERIFIED_RECORD = ".verified"
VERIFY_WORKERS = 4  # members verified side by side, at most (and at most one per CPU)
Progress = Callable[[int], None]
Handling = Literal["stage", "hash", "skip"]


def _header(path: str, size: int, mtime: int) -> bytes:
    """A GNU tar header (with a long-name block when the path needs one). Its length does not
    depend on `size` (sizes past 8 GiB use the base-256 field), so it can be rewritten."""
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = size, 0o644, mtime
    info.uname = info.gname = "root"
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


def file_chunks(src: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    with src.open("rb", buffering=0) as f:
        while data := f.read(chunk):
            yield data


class _Hasher:
    """SHA-256 on a worker thread: `update` returns at once, the next waits for the last."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._sha = hashlib.sha256()
        self._pending: Future[None] | None = None

    def update(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._sha.update, data)

    def hexdigest(self) -> str:
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        return self._sha.hexdigest()


class BundleWriter:
    """Stream members into the bundle (a seekable file) without a second copy on disk."""

    def __init__(self, out: BinaryIO, progress: Progress | None = None) -> None:
        if not out.seekable():
            raise BadInputError("a bundle must be written to a regular file (-o FILE)")
        self._out = out
        self._progress = progress
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle-hash")
        self._mtime = int(time.time())
        self.members: list[Member] = []
        self._paths: set[str] = set()

    def add_stream(
        self,
        path: str,
        kind: Kind,
        chunks: Iterable[bytes],
        version: str = "",
        expect_sha256: str | None = None,
    ) -> Member:
        """Write one member from `chunks`; its size is whatever they add up to.

        `expect_sha256`: what the source says the bytes hash to (a weights manifest); a
        mismatch refuses the member, naming it, so a damaged models dir is not bundled."""
        if path in self._paths or path == MANIFEST_NAME:
            raise BadInputError(f"bundle member {path} is written twice")
        out = self._out
        start = out.tell()
        placeholder = _header(path, 0, self._mtime)
        out.write(placeholder)
        hasher = _Hasher(self._pool)
        size = 0
        for data in chunks:
            hasher.update(data)
            out.write(data)
            size += len(data)
            if self._progress is not None:
                self._progress(len(data))
        out.write(b"\0" * (-size % BLOCK))
        end = out.tell()
        header = _header(path, size, self._mtime)
        assert len(header) == len(placeholder)
        out.seek(start)
        out.write(header)
        out.seek(end)
        sha256 = hasher.hexdigest()
        if expect_sha256 is not None and sha256 != expect_sha256:
            raise RefusedError(
                f"{path}: its bytes do not match the SHA-256 its source recorded",
                hint="the source is damaged: pull or import it again, then create the bundle",
            )
        member = Member(path=path, kind=kind, size=size, sha256=sha256, version=version)
        self.members.append(member)
        self._paths.add(path)
        return member

    def add_file(
        self,
        path: str,
        kind: Kind,
        src: Path,
        version: str = "",
        expect_sha256: str | None = None,
    ) -> Member:
        size = src.stat().st_size
        member = self.add_stream(path, kind, file_chunks(src), version, expect_sha256)
        if member.size != size:
            raise BadInputError(f"{src} changed size while it was being bundled")
        return member

    def add_file_known(
        self, path: str, kind: Kind, src: Path, sha256: str, version: str = ""
    ) -> Member:
        """Write a file whose SHA-256 is already on record (a weights manifest's, computed
        when the file was pulled or imported) with a kernel-side copy and no hashing here.

        A file altered since its record would carry the recorded digest into the bundle;
        `bundle load` then refuses it, naming the member, so nothing wrong is ever installed."""
        if path in self._paths or path == MANIFEST_NAME:
            raise BadInputError(f"bundle member {path} is written twice")
        out = self._out
        with src.open("rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            out.write(_header(path, size, self._mtime))
            out.flush()
            _copy_range(f, out, size, self._progress)
        out.write(b"\0" * (-size % BLOCK))
        member = Member(path=path, kind=kind, size=size, sha256=sha256, version=version)
        self.members.append(member)
        self._paths.add(path)
        return member

    def finish(self, appliance_version: str, target: Target) -> Manifest:
        manifest = Manifest(appliance_version, target, tuple(self.members))
        data = manifest.to_json().encode()
        out = self._out
        out.write(_header(MANIFEST_NAME, len(data), self._mtime))
        out.write(data)
        out.write(b"\0" * (-len(data) % BLOCK))
        out.write(b"\0" * (2 * BLOCK))
        out.write(b"\0" * (-out.tell() % RECORD))
        out.flush()
        self._pool.shutdown()
        return manifest

    def close(self) -> None:
        self._pool.shutdown()


def _copy_range(src: BinaryIO, out: BinaryIO, size: int, progress: Progress | None) -> None:
    """`size` bytes from `src` to `out` at its position: copy_file_range (no copy through
    Python) where the kernel offers it, else 1 MiB reads and writes."""
    left = size
    position = out.tell()
    try:
        while left > 0:
            n = os.copy_file_range(src.fileno(), out.fileno(), min(left, 64 * CHUNK))
            if n == 0:
                raise BadInputError(f"{getattr(src, 'name', 'a file')} shrank while bundled")
            left -= n
            if progress is not None:
                progress(n)
    except (AttributeError, OSError, io.UnsupportedOperation):
        if left != size:
            raise
        while left > 0:
            data = src.read(min(CHUNK, left))
            if not data:
                raise BadInputError(
                    f"{getattr(src, 'name', 'a file')} shrank while it was bundled"
                ) from None
            out.write(data)
            left -= len(data)
            if progress is not None:
                progress(len(data))
        return
    out.seek(position + size)


def read_manifest(bundle: Path) -> Manifest:
    """The manifest (the last member) without extracting anything else.

    A bundle cut short is refused naming the member it was cut in (its manifest, written last,
    is then missing too)."""
    last: tarfile.TarInfo | None = None
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for info in tar:
                last = info
            if last is None or last.name != MANIFEST_NAME:
                raise RefusedError(_cut_short(bundle, last))
            f = tar.extractfile(last)
            assert f is not None
            text = f.read()
            if len(text) != last.size:
                raise RefusedError(f"{bundle}: its manifest is cut short (truncated bundle)")
            return parse_manifest(text.decode("utf-8", errors="replace"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        if last is not None:
            raise RefusedError(_cut_short(bundle, last)) from None
        raise RefusedError(f"{bundle}: not a readable bundle ({exc})") from None


def _cut_short(bundle: Path, last: tarfile.TarInfo | None) -> str:
    size = bundle.stat().st_size
    if last is not None and last.offset_data + last.size > size:
        return (
            f"bundle member {last.name} is cut short at byte {size - last.offset_data} of "
            f"{last.size} (truncated bundle); its manifest is missing"
        )
    return f"{bundle}: no manifest at the end (truncated bundle?)"


def _verified(staging: Path) -> set[str]:
    try:
        return set(json.loads((staging / VERIFIED_RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def staged_path(staging: Path, member: Member) -> Path:
    return staging / member.path


def verify_into(
    bundle: Path,
    staging: Path,
    progress: Progress | None = None,
    how: Callable[[Member], Handling] | None = None,
    on_verified: Callable[[Member], None] | None = None,
) -> Manifest:
    """Stream-verify every member. `how` says what to do with each (default: "stage"):
    "stage" copies it into `staging`; "hash" only checks it (images: `bundle load` streams
    them from the bundle again, re-hashing, so no second copy of an image lands on disk);
    "skip" leaves it (what this box has already, installed and verified). A member verified before
    (recorded in staging/.verified, and still there with its size when staged) is skipped.
    `on_verified` hears of each member whose bytes are known good (now, or in an earlier run),
    from a worker thread, so a caller can start using it while the rest is checked.
    Nothing outside `staging` is touched, and a member that fails leaves no file behind."""
    manifest = read_manifest(bundle)
    by_path = {m.path: m for m in manifest.members}
    staging.mkdir(parents=True, exist_ok=True)
    done = _verified(staging)
    seen: set[str] = set()
    jobs: list[tuple[tarfile.TarInfo, Member, Path | None]] = []
    before: list[Member] = []  # verified by an earlier run
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for info in tar:
                if info.name == MANIFEST_NAME:
                    continue
                member = by_path.get(info.name)
                if member is None or not info.isfile():
                    raise RefusedError(f"bundle member {info.name} is not in the manifest")
                if member.path in seen:
                    raise RefusedError(f"bundle member {member.path} appears twice")
                seen.add(member.path)
                target = staged_path(staging, member)
                handling = "stage" if how is None else how(member)
                if handling == "skip":
                    continue
                copy = handling == "stage"
                if member.path in done and (not copy or _has_size(target, member.size)):
                    before.append(member)
                    continue
                jobs.append((info, member, target if copy else None))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RefusedError(f"{bundle}: truncated or unreadable ({exc})") from None
    missing = sorted(set(by_path) - seen)
    if missing:
        raise RefusedError(f"bundle member {missing[0]} is missing from the bundle")
    for member in before:
        if on_verified is not None:
            on_verified(member)
    _verify_all(bundle, staging, jobs, done, progress=progress, on_verified=on_verified)
    return manifest


def _verify_all(
    bundle: Path,
    staging: Path,
    jobs: list[tuple[tarfile.TarInfo, Member, Path | None]],
    done: set[str],
    *,
    progress: Progress | None,
    on_verified: Callable[[Member], None] | None,
) -> None:
    """Verify members side by side (a model's shards, an image): each worker reads its own
    member at its offset and hashes it; the first failure in bundle order is the one named."""
    workers = max(1, min(VERIFY_WORKERS, len(jobs), os.cpu_count() or 1))
    record = staging / VERIFIED_RECORD
    lock = threading.Lock()

    def verify(info: tarfile.TarInfo, member: Member, target: Path | None) -> None:
        with bundle.open("rb", buffering=0) as raw:
            _verify_member(raw, info, member, target, pool=hashers, progress=progress)
        with lock:
            done.add(member.path)
            tmp = record.with_name(record.name + ".tmp")
            tmp.write_text(json.dumps(sorted(done)))
            tmp.replace(record)
        if on_verified is not None:
            on_verified(member)

    hashers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bundle-hash")
    readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bundle-verify")
    try:
        futures = [readers.submit(verify, *job) for job in jobs]
        for future in futures:
            future.result()
    except OSError as exc:
        raise RefusedError(f"{bundle}: truncated or unreadable ({exc})") from None
    finally:
        readers.shutdown(cancel_futures=True)
        hashers.shutdown()


def _verify_member(
    raw: BinaryIO,
    info: tarfile.TarInfo,
    member: Member,
    target: Path | None,
    *,
    pool: ThreadPoolExecutor,
    progress: Progress | None,
) -> None:
    """Check one member's bytes; with `target`, copy them there (via `.part`, renamed only
    once they matched, removed when they did not)."""
    part = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
    try:
        size, sha256 = _copy_member(raw, info, part, pool, progress)
        check_member(member, size, sha256)
    except BaseException:
        if part is not None:
            part.unlink(missing_ok=True)
        raise
    if part is not None and target is not None:
        part.replace(target)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size and not path.is_symlink()
    except OSError:
        return False


def _copy_member(
    raw: BinaryIO,
    info: tarfile.TarInfo,
    part: Path | None,
    pool: ThreadPoolExecutor,
    progress: Progress | None,
) -> tuple[int, str]:
    """Copy a member's bytes straight from the bundle file (1 MiB reads at its data offset)
    into `part` (None: hash only), hashing on the worker thread. A short read (truncated
    bundle) ends the copy early; the size check then names the member."""
    hasher = _Hasher(pool)
    count = 0
    raw.seek(info.offset_data)
    left = info.size
    with contextlib.ExitStack() as files:
        out = files.enter_context(part.open("wb", buffering=0)) if part is not None else None
        while left > 0:
            data = raw.read(min(CHUNK, left))
            if not data:
                break
            hasher.update(data)
            if out is not None:
                _write_all(out, data)
            count += len(data)
            left -= len(data)
            if progress is not None:
                progress(len(data))
    return count, hasher.hexdigest()


class MemberReader(io.RawIOBase):
    """A member's bytes read straight from the bundle, hashed as they are read; `finish()`
    refuses them (naming the member) unless they are exactly what the manifest says."""

    def __init__(self, bundle: Path, member: Member, offset: int) -> None:
        super().__init__()
        self._file = bundle.open("rb", buffering=0)
        self._file.seek(offset)
        self._left = member.size
        self._member = member
        self._sha = hashlib.sha256()
        self._count = 0

    def readable(self) -> bool:
        return True

    def __len__(self) -> int:
        """What is left to read: lets an HTTP client send it with a Content-Length."""
        return self._left

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        n = self._file.readinto(view) or 0
        self._sha.update(view[:n])
        self._count += n
        self._left -= n
        return n

    def finish(self) -> None:
        check_member(self._member, self._count, self._sha.hexdigest())

    def close(self) -> None:
        self._file.close()
        super().close()


def member_offsets(bundle: Path) -> dict[str, int]:
    """Where each member's data starts in the bundle file."""
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            return {info.name: info.offset_data for info in tar}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RefusedError(f"{bundle}: truncated or unreadable ({exc})") from None


def _write_all(out: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = out.write(view)
        view = view[written or 0 :]
        if written == 0:
            raise OSError(28, os.strerror(28))


__all__ = [
    "CHUNK",
    "BundleWriter",
    "MemberReader",
    "Progress",
    "file_chunks",
    "member_offsets",
    "read_manifest",
    "staged_path",
    "verify_into",
]
