"""Small files written so that a crash or a power cut never leaves a half-written one.

Fallback mode, API key hashes, weights manifests and revision refs are all read back as the
truth after a restart, so each is written to a unique temporary name beside it, synced, and
renamed over the old one (then the directory is synced, so the rename itself survives).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably; the file has `mode` from birth.

    Raises `OSError`; the caller says what the file was for.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        try:
            os.fchmod(descriptor, mode)  # mkstemp makes 0600; the caller may want wider
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        Path(temporary).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temporary).unlink()
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
