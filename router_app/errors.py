"""OpenAI-shaped error responses."""

from __future__ import annotations

import json

from starlette.responses import Response

from . import sse


def json_error(
    status: int, message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> Response:
    """An OpenAI-shaped error response."""
    body = json.dumps(sse.error_payload(message, type_, code, param)).encode()
    return Response(body, status_code=status, media_type="application/json")
