"""Server-sent events the router writes itself: progress, speed report, errors, keep-alives."""

from __future__ import annotations

import json
import time
from typing import Any

from router_app.config import StatusStyle

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
STATUS_PREFIX = "\u23f3 "  # lines the router put into answers (content style) start with this
FOOTER_PREFIX = "\u26a1 "


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def comment(text: str) -> bytes:
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


def error_payload(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_event(message: str, type_: str = "service_unavailable", code: str | int | None = None) -> bytes:
    return event(error_payload(message, type_, code))


class ChunkFactory:
    """Chunks shaped like the endpoint's own stream (chat or legacy completions).

    Every chunk has a `choices[0]` (OpenAI's own quickstart loop reads `chunk.choices[0].delta`), and all share one
    `id`: the router's while it waits for an engine, which the relay then gives the engine's chunks too, or, when
    the engine answered first, the engine's (`adopt_id`)."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-router-{time.time_ns():x}"
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.written = False  # a chunk with `self.id` has been written to the client

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        self.written = True
        return event(
            {
                "id": self.id,
                "object": self.object,
                "created": int(time.time()),
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def status(self, style: StatusStyle, description: str, done: bool) -> bytes:
        """A progress line in the requested style (empty for `none`)."""
        if style is StatusStyle.OPENWEBUI:
            # Open-WebUI reads `event` before it looks at the choices (middleware.py of 0.12.4); the empty choice
            # keeps `choices[0]` valid for every other client.
            return self._chunk(
                [self._empty()], event={"type": "status", "data": {"description": description, "done": done}}
            )
        if style is StatusStyle.REASONING and self.chat:
            return self._chunk(
                [{"index": 0, "delta": {"reasoning_content": description + "\n"}, "finish_reason": None}]
            )
        if style is StatusStyle.CONTENT:
            return self.text(STATUS_PREFIX + description + "\n")
        return comment(description)

    def _empty(self) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "delta": {}, "finish_reason": None}
        return {"index": 0, "text": "", "finish_reason": None}

    def text(self, text: str) -> bytes:
        if self.chat:
            return self._chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
        return self._chunk([{"index": 0, "text": text, "finish_reason": None}])


def speed_report(completion_tokens: int, seconds: float, tokens_per_second: float | None = None) -> str:
    """E.g. '⚡ 45.2 tok/s · 128 tokens in 2.83 s'."""
    rate = tokens_per_second if tokens_per_second else (completion_tokens / seconds if seconds > 0 else 0.0)
    return f"{FOOTER_PREFIX}{rate:.1f} tok/s \u00b7 {completion_tokens} tokens in {seconds:.2f} s"


def strip_router_lines(text: str) -> str:
    """Remove the router's own status/speed lines from an assistant message replayed as history."""
    if STATUS_PREFIX not in text and FOOTER_PREFIX not in text:
        return text
    kept = [line for line in text.split("\n") if not line.startswith((STATUS_PREFIX, FOOTER_PREFIX))]
    return "\n".join(kept).strip("\n")
