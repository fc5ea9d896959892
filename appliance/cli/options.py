"""Typed argparse converters shared by every `appliance` command.

A flag's value is checked where it is parsed, so every command refuses the same nonsense the
same way: one line naming the flag, what is wrong and what to give instead (exit 2), before any
work starts. argparse turns an `ArgumentTypeError` into `argument --flag: MESSAGE`, which the CLI's
parser raises as a `BadInputError`.

Stdlib only: `appliance --help` imports this module.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Callable
from pathlib import Path

# vLLM counts tokens and sequences in int32 tensors; a count past that is a typo, not a workload.
_MAX_COUNT = 2**31 - 1
# Far above any card or box, yet small enough that GiB → bytes stays a finite integer.
MAX_GPU_MEMORY_GIB = 65536.0
# What the converters accept as a release: 0.32.0, v0.10.1.1, 0.11.0rc2, 0.11.0.dev5+cu128.
_VERSION_RE = re.compile(r"^[vV]?\d+\.\d+(\.\d+)*([.+-]?[A-Za-z0-9]+)*$")


def _fail(text: str, message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{text!r} {message}")


def _whole(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _fail(text, "is not a whole number") from None


def int_range(low: int, high: int = _MAX_COUNT) -> Callable[[str], int]:
    """A converter for a whole number from `low` to `high`."""

    def convert(text: str) -> int:
        value = _whole(text)
        if not low <= value <= high:
            raise _fail(text, f"is out of range: give a whole number from {low} to {high}")
        return value

    convert.__name__ = "whole number"
    return convert


positive_int = int_range(1)
non_negative_int = int_range(0)


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise _fail(text, "is not a TCP port: give a number from 1 to 65535")
    return value


def float_range(low: float, high: float, *, low_inclusive: bool = False) -> Callable[[str], float]:
    """A converter for a finite number above `low` (or from it, `low_inclusive`) up to `high`."""
    lowest = f"from {low:g}" if low_inclusive else f"above {low:g}"

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise _fail(text, "is not a number") from None
        above = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above and value <= high):
            raise _fail(text, f"is out of range: give a number {lowest} up to {high:g}")
        return value

    convert.__name__ = "number"
    return convert


finite_positive_float = float_range(0.0, 1e15)
finite_non_negative_float = float_range(0.0, 1e15, low_inclusive=True)
gpu_memory_gib = float_range(0.0, MAX_GPU_MEMORY_GIB)
fraction = float_range(0.0, 1.0)
# The profile's `monitoring.interval_seconds` bounds, so scrape and status sample alike.
interval_seconds = float_range(0.1, 60.0, low_inclusive=True)
percent = float_range(0.0, 1000.0, low_inclusive=True)


def http_url(text: str) -> str:
    """An http(s) base URL with a host; the text is returned unchanged."""
    try:
        parsed = urllib.parse.urlsplit(text.strip())
        parsed.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as error:
        raise _fail(text, f"is not a URL ({error}): write e.g. http://127.0.0.1:8000/v1") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _fail(text, "is not an http(s) URL with a host: write e.g. http://127.0.0.1:8000/v1")
    return text.strip()


def vllm_version(text: str) -> str:
    """A vLLM release number such as 0.32.0 or v0.10.1.1."""
    if not _VERSION_RE.match(text.strip()):
        raise _fail(text, "is not a vLLM release: write MAJOR.MINOR[.PATCH], e.g. 0.32.0")
    return text.strip()


def output_file(text: str) -> Path:
    """A file to write: not a directory, in a directory that exists and this user may write.

    `-` passes through (commands that can write to stdout take it so).
    """
    if not text.strip():
        raise _fail(text, "is not a file name: give the file to write, e.g. -o out.yaml")
    path = Path(text)
    if text == "-":
        return path
    _usable(text, path)
    if path.is_dir():
        raise _fail(text, f"is a directory: name a file in it, e.g. -o {path / 'out.yaml'}")
    parent = path.parent
    if not parent.is_dir():
        raise _fail(text, f"cannot be written: {parent} is not a directory (create it first)")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise _fail(text, "cannot be written by this user: choose another place, or fix the rights")
    return path


def output_dir(text: str) -> Path:
    """A directory to write files into; made if missing, so only an existing file is refused."""
    if not text.strip():
        raise _fail(text, "is not a directory name: give one, e.g. -o k8s/")
    path = Path(text)
    _usable(text, path)
    if path.exists() and not path.is_dir():
        raise _fail(text, "is a file, not a directory: give a directory, e.g. -o k8s/")
    return path


def directory(text: str) -> Path:
    """A directory the command keeps things in (models, state); made when missing."""
    if not text.strip():
        raise _fail(text, "is not a directory name: give one, e.g. /var/lib/llm-appliance/state")
    path = Path(text)
    _usable(text, path)
    if path.exists() and not path.is_dir():
        raise _fail(text, "is a file, not a directory: give a directory")
    return path


def _usable(text: str, path: Path) -> None:
    """Refuse a name the OS rejects before anything is looked up (too long, a NUL byte)."""
    try:
        path.stat()
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        if isinstance(error, NotADirectoryError):
            raise _fail(text, "lies under a file, not a directory: fix the path") from None
        reason = getattr(error, "strerror", None) or str(error)
        raise _fail(text[:80], f"cannot be used as a path ({reason})") from None


def input_file(text: str) -> Path:
    """A regular file that exists and this user may read."""
    path = Path(text)
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise _fail(text[:80], f"cannot be read ({reason})") from None
    if not stat.S_ISREG(mode):
        raise _fail(text, "is not a regular file: give the file itself")
    if not os.access(path, os.R_OK):
        raise _fail(text, "cannot be read by this user: fix its rights or run as its owner")
    return path
