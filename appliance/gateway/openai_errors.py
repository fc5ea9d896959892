"""Every error the gateway answers, in OpenAI's shape, which every SDK knows how to show.

`{"error": {"message", "type", "param", "code"}}` with `type` one of OpenAI's kinds and `code` a
string or null. The engines speak dialects of it: vLLM answers `{"error": {…, "type":
"NotFoundError", "code": 404}}` (older releases put those fields at the top level beside
`"object": "error"`), TEI `{"error": "…", "error_type": "Validation"}`, and a crashing server
plain text. `normalised` keeps the engine's message and puts it in OpenAI's shape.
"""

from __future__ import annotations

import json
from typing import Any

# OpenAI's error type per status, as its API answers them.
_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "requests",
}
# OpenAI's codes for the statuses an engine answers where the status alone says what happened.
_CODE_BY_STATUS = {
    404: "model_not_found",  # the engines answer 404 on these routes for an unknown model
    413: "request_too_large",
    429: "rate_limit_exceeded",
}
_MESSAGE_LIMIT = 2000  # an engine's error can quote the whole prompt back


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    """OpenAI's error shape."""
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    ).encode()


def kind_for(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def _fields(document: Any) -> tuple[str | None, Any, Any]:
    """(message, param, code) from any of the engines' error documents."""
    if not isinstance(document, dict):
        return None, None, None
    inner = document.get("error")
    if isinstance(inner, dict):
        message = inner.get("message")
        text = message if isinstance(message, str) else None
        return text, inner.get("param"), inner.get("code")
    if isinstance(inner, str):  # TEI
        return inner, None, None
    message = document.get("message") or document.get("detail")
    if isinstance(message, str):  # vLLM before its errors nested under "error"; Starlette
        return message, document.get("param"), document.get("code")
    return None, None, None


def _is_openai(document: Any) -> bool:
    """OpenAI's own shape: a string type in its words (vLLM's are class names like
    `NotFoundError`) and a string or null code (vLLM's is the status number)."""
    if not isinstance(document, dict) or not isinstance(document.get("error"), dict):
        return False
    inner = document["error"]
    kind, code = inner.get("type"), inner.get("code")
    return (
        isinstance(inner.get("message"), str)
        and isinstance(kind, str)
        and not kind.endswith("Error")
        and (code is None or isinstance(code, str))
    )


def normalised(status: int, body: bytes) -> bytes:
    """`body`, an upstream's error answer with `status`, in OpenAI's shape with its message.

    A body already in OpenAI's shape (the remote API's) comes back unchanged.
    """
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if _is_openai(document):
        return body
    message, param, code = _fields(document)
    if message is None:
        text = body.decode("utf-8", "replace").strip()
        message = text or f"The upstream answered HTTP {status} with no message."
    if not isinstance(code, str):
        code = _CODE_BY_STATUS.get(status)
        if status == 404 and "model" not in message.lower():
            code = None
    return error_body(
        message[:_MESSAGE_LIMIT],
        kind_for(status),
        code,
        param if isinstance(param, str) else None,
    )
