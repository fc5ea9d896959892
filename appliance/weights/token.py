"""The Hugging Face token: a 0600 token file, `HF_TOKEN`, or huggingface_hub's login, in
that order; handed only to huggingface_hub, never formatted into a message or a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    RefusedError,
)
from appliance.weights.layout import HubToken

if TYPE_CHECKING:
    pass

_log = logging.getLogger("appliance.weights")


# --- token --------------------------------------------------------------------------------------


def resolve_token(
    token_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> HubToken | None:
    """The token to use: a 0600 `token_file`, else `HF_TOKEN`, else huggingface_hub's login.

    A token file others can read is refused (the fix is in the hint); a missing one is bad input.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            # utf-8-sig: Windows editors start files with a byte-order mark, never part of a token
            text = token_file.read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError:
            raise BadInputError(
                f"token file {token_file} is not UTF-8 text",
                "save it as plain text holding only the token (hf_…)",
            ) from None
        except FileNotFoundError:
            raise BadInputError(
                f"token file {token_file} does not exist",
                "write the Hugging Face token into it and chmod 600 it",
            ) from None
        except OSError as exc:
            raise EnvironmentNotReadyError(
                f"cannot read token file {token_file}: {exc.strerror}",
                "run as the user that owns it, or fix its ownership",
            ) from None
        if mode & 0o077:
            raise RefusedError(
                f"token file {token_file} can be read by other users (mode {mode & 0o777:o})",
                f"make it private: chmod 600 {token_file}",
            )
        if not text:
            raise BadInputError(f"token file {token_file} is empty", "write the token into it")
        if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
            # An HTTP header cannot carry it; never echo the text, it may be the token itself.
            raise BadInputError(
                f"token file {token_file} holds more than a token (spaces, lines or non-ASCII)",
                "put only the token in it, on one line (hf_…)",
            )
        return HubToken(text, f"token file {token_file}")
    if value := env.get("HF_TOKEN", "").strip():
        return HubToken(value, "HF_TOKEN")
    from huggingface_hub import get_token  # noqa: TID251 - this is the Hub adapter

    stored = get_token()
    return HubToken(stored, "huggingface_hub login") if stored else None
