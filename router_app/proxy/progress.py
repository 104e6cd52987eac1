"""What the router itself writes into each API's event stream: waiting status, errors, the end.

- Chat and legacy completions: status lines in the configured `status_style` (chunks shaped like the stream).
- Responses API: it has no status event, so SSE comments (every SSE parser skips them).
- Anthropic Messages: `event: ping` (the API's own keep-alive, skipped by its SDKs) plus a comment with the text;
  errors as `event: error` with the Anthropic error object.
- llama.cpp native streams (infill): comments.
"""

from __future__ import annotations

import json
import re
from typing import Any

from router_app.config import StatusStyle
from router_app.proxy.endpoints import Kind
from router_app.wire import sse
from router_app.wire.errors import anthropic_payload

_ANTHROPIC_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def named_event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class Shape:
    """The router's own events for one stream: comments, and an error the way SSE clients read any error."""

    end = re.compile(rb"")  # matches the event that completes an engine's stream; empty: never checked

    def __init__(self, model: str) -> None:
        self.model = model

    def waiting(self, text: str) -> bytes:
        return sse.KEEPALIVE + sse.comment(text)

    def waited(self, text: str, failed: bool) -> bytes:
        return sse.comment(text)

    def error(self, message: str, type_: str, code: str | int | None, status: int) -> bytes:
        return sse.error_event(message, type_, code)

    def closing(self) -> bytes:
        """Written after a failure: the stream's terminator, if it has one."""
        return b""


class OpenAIShape(Shape):
    """Chat and legacy completions: status chunks in the configured style, `data: [DONE]` at the end."""

    end = re.compile(rb"data: ?\[DONE\]\n\n")

    def __init__(self, model: str, chat: bool, style: StatusStyle) -> None:
        super().__init__(model)
        self.factory = sse.ChunkFactory(model, chat)
        self.style = style

    def waiting(self, text: str) -> bytes:
        return sse.KEEPALIVE + self.factory.status(self.style, text, done=False)

    def waited(self, text: str, failed: bool) -> bytes:
        if failed or self.style is not StatusStyle.CONTENT:
            return self.factory.status(self.style, text, done=True)
        return b""

    def closing(self) -> bytes:
        return sse.DONE


class ResponsesShape(Shape):
    end = re.compile(rb"event: ?response\.(?:completed|failed|incomplete)\n")

    def error(self, message: str, type_: str, code: str | int | None, status: int) -> bytes:
        return named_event("error", {"type": "error", "code": str(code or type_), "message": message, "param": None})


class MessagesShape(Shape):
    end = re.compile(rb"event: ?message_stop\n")

    def waiting(self, text: str) -> bytes:
        return _ANTHROPIC_PING + sse.comment(text)

    def error(self, message: str, type_: str, code: str | int | None, status: int) -> bytes:
        return named_event("error", anthropic_payload(status, message))


def shape_for(kind: Kind, model: str, style: StatusStyle) -> Shape:
    if kind in (Kind.CHAT, Kind.COMPLETIONS):
        return OpenAIShape(model, kind is Kind.CHAT, style)
    if kind is Kind.RESPONSES:
        return ResponsesShape(model)
    if kind is Kind.MESSAGES:
        return MessagesShape(model)
    return Shape(model)
