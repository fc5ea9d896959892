"""Numbers as an operator reads them: byte sizes, counts with units, durations.

Pure. None (the core's "cannot say") prints as `missing`: an en dash on screens, the caller's
choice where plain ASCII or a question mark reads better.
"""

from __future__ import annotations

EN_DASH = "\N{EN DASH}"


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"; GiB is the largest unit (model weights read best in GiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def gib(value: float | None, digits: int = 1, *, missing: str = EN_DASH) -> str:
    return missing if value is None else f"{value / 2**30:.{digits}f} GiB"


def number(value: float | None, digits: int = 0, unit: str = "", *, missing: str = EN_DASH) -> str:
    if value is None:
        return missing
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def seconds(value: float | None, *, missing: str = EN_DASH) -> str:
    if value is None:
        return missing
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"
