"""Numbers as the screens print them; None (the core's "cannot say") is always a dash."""

from __future__ import annotations

DASH = "\N{EN DASH}"


def gib(value: int | float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value / 2**30:.{digits}f} GiB"


def number(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return DASH
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def seconds(value: float | None) -> str:
    if value is None:
        return DASH
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"
