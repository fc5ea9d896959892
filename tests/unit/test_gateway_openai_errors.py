"""Engine error answers in OpenAI's shape, the engine's message kept (issue #13 item 5)."""

from __future__ import annotations

import json

from appliance.gateway.openai_errors import error_body, normalised


def _error(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert set(document) == {"error"}
    error: dict[str, object] = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_vllm_dialects_become_openai_errors() -> None:
    nested = {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                        "param": None, "code": 404}}  # fmt: skip
    flat = {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError",
            "param": "max_tokens", "code": 400}  # fmt: skip
    assert _error(normalised(404, json.dumps(nested).encode())) == {
        "message": "The model `x` does not exist.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert _error(normalised(400, json.dumps(flat).encode())) == {
        "message": "max_tokens is too large",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": None,
    }


def test_tei_plain_text_and_empty_bodies_keep_what_they_say() -> None:
    tei = json.dumps({"error": "Input validation error: inputs empty", "error_type": "Validation"})
    assert (
        _error(normalised(422, tei.encode()))["message"] == "Input validation error: inputs empty"
    )
    crashed = _error(normalised(500, b"Internal Server Error"))
    assert crashed["message"] == "Internal Server Error"
    assert crashed["type"] == "server_error"
    assert "503" in str(_error(normalised(503, b""))["message"])


def test_an_openai_error_passes_unchanged() -> None:
    body = error_body(
        "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"
    )
    assert normalised(429, body) is body
