"""Writing an export to the file the operator named."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import BadInputError


def write_text(output: Path, text: str) -> None:
    """Write `text` to `output`; an OS error becomes a `BadInputError` naming the file."""
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot write {output}: {exc.strerror or exc}") from None
