"""Router-written SSE: status chunks per style, speed report, history clean-up."""

from __future__ import annotations

import json

from router_app.config import StatusStyle
from router_app.wire.sse import ChunkFactory, speed_report, strip_router_lines


def payload(chunk: bytes) -> dict:
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
    return json.loads(chunk[6:])


def test_openwebui_status_chunk_shape() -> None:
    data = payload(ChunkFactory("m", chat=True).status(StatusStyle.OPENWEBUI, "Loading m… 3 s", done=False))
    assert data["choices"] == [{"index": 0, "delta": {}, "finish_reason": None}] and data["model"] == "m"
    legacy = payload(ChunkFactory("m", chat=False).status(StatusStyle.OPENWEBUI, "Loading", done=True))
    assert legacy["choices"] == [{"index": 0, "text": "", "finish_reason": None}]
    assert data["event"] == {"type": "status", "data": {"description": "Loading m… 3 s", "done": False}}


def test_reasoning_and_content_styles() -> None:
    factory = ChunkFactory("m", chat=True)
    reasoning = payload(factory.status(StatusStyle.REASONING, "Loading", done=False))
    assert reasoning["choices"][0]["delta"] == {"reasoning_content": "Loading\n"}
    content = payload(factory.status(StatusStyle.CONTENT, "Loading", done=False))
    assert content["choices"][0]["delta"]["content"] == "\u23f3 Loading\n"
    assert factory.status(StatusStyle.NONE, "Loading", done=False) == b": Loading\n\n"
    legacy = payload(ChunkFactory("m", chat=False).status(StatusStyle.CONTENT, "Loading", done=False))
    assert legacy["choices"][0]["text"] == "\u23f3 Loading\n" and legacy["object"] == "text_completion"


def test_speed_report() -> None:
    assert speed_report(128, 2.83, 45.2) == "\u26a1 45.2 tok/s \u00b7 128 tokens in 2.83 s"
    assert speed_report(10, 2.0) == "\u26a1 5.0 tok/s \u00b7 10 tokens in 2.00 s"


def test_router_lines_are_stripped_from_history() -> None:
    text = "\u23f3 Loading m… 2 s\n\u23f3 Loading m… 4 s\nThe answer.\n\n\u26a1 45.2 tok/s · 1 tokens in 1.00 s"
    assert strip_router_lines(text) == "The answer."
    assert strip_router_lines("plain") == "plain"
