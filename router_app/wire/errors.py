"""Error responses in the caller's API shape: OpenAI everywhere, Anthropic on /v1/messages."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from router_app.wire import sse

# Anthropic error types by HTTP status (docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_payload(status: int, message: str) -> dict[str, Any]:
    """The Anthropic error object."""
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def json_error(
    status: int,
    message: str,
    type_: str,
    code: str | int | None = None,
    param: str | None = None,
    *,
    anthropic: bool = False,
) -> Response:
    """An OpenAI-shaped error response (Anthropic-shaped with `anthropic=True`)."""
    payload = anthropic_payload(status, message) if anthropic else sse.error_payload(message, type_, code, param)
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json")


def is_anthropic_path(path: str) -> bool:
    return path.startswith("/v1/messages")


def engine_error_as_anthropic(body: bytes, status: int) -> bytes:
    """An engine's error body (llama-server answers OpenAI-shaped errors on /v1/messages) in Anthropic shape."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict):
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or error)
    elif error is not None:
        message = str(error)
    else:
        message = body[:300].decode(errors="replace")
    return json.dumps(anthropic_payload(status, message)).encode()
