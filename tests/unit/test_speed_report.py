"""The speed report's clock: generation counts from when the engine got the request, never the wait for a load."""

from __future__ import annotations

import json

import pytest

from router_app.config import parse_config
from router_app.proxy import report
from router_app.proxy.endpoints import CHAT
from router_app.proxy.parse import parse

CONFIG = parse_config({"models": [{"id": "m", "backend": "openai", "url": "http://127.0.0.1:9/v1"}]})
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


@pytest.mark.parametrize(
    ("sent", "timings", "expected"),
    [
        # vLLM's usage has no timings: a 57 s cold load, then 8 tokens in 1 s (real vLLM showed "0.1 tok/s").
        (57.0, None, "⚡ 8.0 tok/s · 8 tokens in 1.00 s"),
        (None, None, "⚡ 0.1 tok/s · 8 tokens in 58.00 s"),  # never sent (no engine time): from the arrival
        (57.0, 45.5, "⚡ 45.5 tok/s · 8 tokens in 1.00 s"),  # llama.cpp's own predicted_per_second wins
    ],
)
def test_generation_time_starts_when_the_engine_gets_the_request(monkeypatch, sent, timings, expected) -> None:
    exchange = parse(BODY, CHAT, CONFIG)
    exchange.started, exchange.sent, exchange.completion_tokens = 0.0, sent, 8
    exchange.engine_tokens_per_second = timings
    monkeypatch.setattr(report.time, "monotonic", lambda: 58.0)
    assert report.speed_report(exchange) == expected
