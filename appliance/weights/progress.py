"""Byte progress of a pull or an import: per-file counters summed into one report, a
rate over a window, and cancellation between chunks.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal

from appliance.weights.layout import (
    _HASH_CHUNK,
    _PROGRESS_INTERVAL_S,
    _RATE_WINDOW_S,
    _WRITEBACK_BYTES,
    DownloadProgress,
    ProgressCallback,
)

if TYPE_CHECKING:
    pass

_log = logging.getLogger("appliance.weights")


# --- progress -----------------------------------------------------------------------------------


class _Cancelled(Exception):  # noqa: N818 - a control-flow signal, never shown to anyone
    pass


class _Progress:
    """Thread-safe byte counter that reports at most every 0.1 s (and at file boundaries)."""

    def __init__(
        self,
        repo: str,
        sha: str,
        *,
        files_total: int,
        bytes_total: int,
        bytes_initial: int,
        callback: ProgressCallback | None,
        clock: Callable[[], float],
        stop: threading.Event,
        cancel: threading.Event | None,
        phase: Literal["download", "import"] = "download",
    ) -> None:
        self._lock = threading.Lock()
        self._repo, self._sha, self._phase = repo, sha, phase
        self._files_total, self._bytes_total = files_total, bytes_total
        self._bytes_done = bytes_initial
        self._files_done = 0
        self._callback = callback
        self._clock = clock
        self._stop = stop
        self._cancel = cancel
        self._window: deque[tuple[float, int]] = deque()
        self._run_bytes = 0
        self._last_emit: float | None = None
        self._file: str | None = None

    def check(self) -> None:
        """Raise in the worker when the caller cancelled or another file failed."""
        if self._stop.is_set() or (self._cancel is not None and self._cancel.is_set()):
            raise _Cancelled

    def add(self, n: int, file: str | None = None) -> None:
        self.check()
        with self._lock:
            self._bytes_done += n
            self._run_bytes += n
            if file is not None:
                self._file = file
            now = self._clock()
            self._window.append((now, self._run_bytes))
            while len(self._window) > 2 and now - self._window[0][0] > _RATE_WINDOW_S:
                self._window.popleft()
            due = self._last_emit is None or now - self._last_emit >= _PROGRESS_INTERVAL_S
        if due:
            self.emit()

    def file_done(self, file: str) -> None:
        with self._lock:
            self._files_done += 1
            self._file = file
        self.emit()

    def emit(self, phase: Literal["download", "verify", "import", "done"] | None = None) -> None:
        if self._callback is None:
            return
        with self._lock:
            now = self._clock()
            self._last_emit = now
            rate: float | None = None
            if len(self._window) >= 2:
                (t0, b0), (t1, b1) = self._window[0], self._window[-1]
                if t1 > t0:
                    rate = (b1 - b0) / (t1 - t0)
            remaining = max(self._bytes_total - self._bytes_done, 0)
            eta = remaining / rate if rate else (0.0 if remaining == 0 else None)
            report = DownloadProgress(
                repo=self._repo,
                sha=self._sha,
                phase=phase or self._phase,
                file=self._file,
                files_done=self._files_done,
                files_total=self._files_total,
                bytes_done=self._bytes_done,
                bytes_total=self._bytes_total,
                rate_bytes_per_second=rate,
                eta_seconds=eta,
            )
        self._callback(report)

    def bar_class(self, file: str) -> type:
        """A tqdm stand-in for huggingface_hub's `http_get`: counts bytes, raises on cancel."""
        progress = self

        class _Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                progress.check()

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            counted = 0  # bytes this file's bar added, to take back when its transfer is dropped

            def update(self, n: float | None = 1) -> None:
                progress.add(int(n or 0), file)
                type(self).counted += int(n or 0)

            def close(self) -> None:
                return None

            # huggingface_hub's Xet progress reporter: one bar (it calls `update` with the bytes
            # written to the file) when the class has `update_transfer` (network bytes, not
            # counted: with dedup they are not the file's bytes).
            def update_transfer(self, n: float | None = 1) -> None:
                progress.check()

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                return None

            def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                return None

        return _Bar


class _HashingWriter:
    """The partial file as `http_get` sees it: hashes what it writes, so verifying costs nothing.

    Always SHA-256 (the Hub's LFS hash, and the manifest's); the git blob id (sha1 over
    "blob <size>\\0" + content) only when `git_blob_size` is given, for small non-LFS files: an LFS
    file's tree `oid` is its pointer's blob id, which says nothing about the content.
    `http_get` only writes, asks `tell()`, and — when a server ignored the Range header — seeks
    back to where it started (0 here) and truncates; the hashes restart with the file.
    """

    def __init__(self, handle: IO[bytes], git_blob_size: int | None = None) -> None:
        self._handle = handle
        self._git_blob_size = git_blob_size
        self._unflushed = 0
        self.sha256 = hashlib.sha256()
        self.sha1: hashlib._Hash | None = None
        self._restart()

    def _restart(self) -> None:
        self.sha256 = hashlib.sha256()
        if self._git_blob_size is not None:
            self.sha1 = hashlib.sha1(b"blob %d\0" % self._git_blob_size)  # noqa: S324 - git id

    def _update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)

    def absorb_existing(self) -> None:
        self._handle.seek(0)
        while chunk := self._handle.read(_HASH_CHUNK):
            self._update(chunk)
        self._handle.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> int:
        self._update(data)
        written = self._handle.write(data)
        self._unflushed += written
        if self._unflushed >= _WRITEBACK_BYTES:
            # Start writing what arrived to disk now (Linux: FADV_DONTNEED begins writeback of
            # dirty pages without waiting), so the fsync before the rename has little left.
            self._handle.flush()
            end = self._handle.tell()
            os.posix_fadvise(
                self._handle.fileno(),
                end - self._unflushed,
                self._unflushed,
                os.POSIX_FADV_DONTNEED,
            )
            self._unflushed = 0
        return written

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError(errno.ESPIPE, "partial downloads only rewind to the start")
        self._restart()
        self._unflushed = 0
        return self._handle.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self._handle.truncate(size)

    def flush(self) -> None:
        self._handle.flush()
