"""The router's own events inside each API's stream, and the relay's end-of-stream check per API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from router_app.config import StatusStyle, parse_config
from router_app.proxy.endpoints import CHAT, MESSAGES, RESPONSES
from router_app.proxy.parse import parse
from router_app.proxy.progress import MessagesShape, ResponsesShape, shape_for
from router_app.proxy.relay import StreamBroken, relay

CONFIG = parse_config({"models": [{"id": "m", "backend": "openai", "url": "http://127.0.0.1:9/v1", "aliases": ["a"]}]})


class FakeUpstream:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_raw(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def run_relay(endpoint, body: bytes, pieces: list[bytes]) -> bytes:
    exchange = parse(body, endpoint, CONFIG)
    shape = shape_for(endpoint.kind, exchange.requested_name, StatusStyle.OPENWEBUI)

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in relay(CONFIG.router, exchange, FakeUpstream(pieces), shape)])

    return asyncio.run(collect())


def test_waiting_and_errors_per_api() -> None:
    messages = MessagesShape("m")
    assert messages.waiting("Loading m… 3 s").startswith(b'event: ping\ndata: {"type":"ping"}\n\n: Loading')
    error = messages.error("load failed", "service_unavailable", "model_load_failed", 503)
    assert error.startswith(b"event: error\ndata: ")
    assert json.loads(error.split(b"data: ")[1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "load failed"},
    }
    responses = ResponsesShape("m")
    assert responses.waiting("Loading") == b": keep-alive\n\n: Loading\n\n"
    event = json.loads(responses.error("boom", "engine_error", 502, 502).split(b"data: ")[1])
    assert event["type"] == "error" and event["message"] == "boom"
    assert messages.closing() == responses.closing() == b""


def test_relay_renames_and_checks_each_api_end() -> None:
    completed = b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"m"}}\n\n'
    out = run_relay(RESPONSES, b'{"model":"a","input":"x","stream":true}', [completed[:30], completed[30:]])
    assert b'"model":"a"' in out and b'"model":"m"' not in out
    with pytest.raises(StreamBroken):
        run_relay(RESPONSES, b'{"model":"m","input":"x","stream":true}', [b"event: response.created\ndata: {}\n\n"])
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert run_relay(MESSAGES, b'{"model":"m","max_tokens":1,"messages":[],"stream":true}', [stop]) == stop
    chat = run_relay(CHAT, b'{"model":"a","messages":[],"stream":true}', [b'data: {"model":"m"}\n\ndata: [DONE]\n\n'])
    assert chat == b'data: {"model":"a"}\n\ndata: [DONE]\n\n'
