"""The speed report: usage read from the engine's answer, and the footer the router adds to it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from router_app.config import RouterSettings, StatusStyle
from router_app.proxy.parse import Exchange
from router_app.proxy.progress import OpenAIShape, Shape
from router_app.wire import sse

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def take_usage(exchange: Exchange, data: dict[str, Any]) -> None:
    """Generated tokens and the engine's own speed, from any API's usage object (chat, responses, messages)."""
    if isinstance(data.get("response"), dict):  # Responses API stream events wrap the response
        data = {**data["response"], **({"timings": data["timings"]} if "timings" in data else {})}
    usage = data.get("usage") or {}
    for key in ("completion_tokens", "output_tokens"):
        if isinstance(usage.get(key), int):
            exchange.completion_tokens = usage[key]
    for key in ("prompt_tokens", "input_tokens"):
        if isinstance(usage.get(key), int):
            exchange.prompt_tokens = usage[key]
    for key in ("prompt_tokens_details", "input_tokens_details"):
        details = usage.get(key)
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            exchange.cached_tokens = details["cached_tokens"]
    timings = data.get("timings") or {}
    if isinstance(timings.get("predicted_per_second"), int | float):
        exchange.engine_tokens_per_second = float(timings["predicted_per_second"])


def speed_report(exchange: Exchange) -> str:
    """Tokens and seconds since the request reached the engine (prefill included; a load wait not)."""
    since = exchange.sent if exchange.sent is not None else exchange.started
    seconds = time.monotonic() - since
    return sse.speed_report(exchange.completion_tokens or 0, seconds, exchange.engine_tokens_per_second)


def stream_footer(settings: RouterSettings, exchange: Exchange, shape: Shape) -> bytes:
    """The speed report at the end of a chat/completions stream (nothing for other APIs)."""
    if not settings.metrics_footer or not exchange.completion_tokens or not isinstance(shape, OpenAIShape):
        return b""
    report = speed_report(exchange)
    style = settings.status_style
    if style is StatusStyle.OPENWEBUI:
        return shape.factory.status(style, report, done=True)
    if style is StatusStyle.CONTENT and exchange.text_footer_allowed:
        return shape.factory.text("\n\n" + report)
    return sse.comment(report)


def unary_footer(settings: RouterSettings, exchange: Exchange, content: bytes) -> bytes:
    """Usage taken from a finished answer; the speed report appended to its text in `content` style."""
    if not exchange.endpoint.generates or not USAGE_OBJECT.search(content):
        return content
    try:
        data = json.loads(content)
    except ValueError:
        return content
    if not isinstance(data, dict):
        return content
    take_usage(exchange, data)
    if not (
        exchange.openai_stream
        and settings.metrics_footer
        and settings.status_style is StatusStyle.CONTENT
        and exchange.text_footer_allowed
        and exchange.completion_tokens
    ):
        return content
    report = speed_report(exchange)
    for choice in data.get("choices") or []:
        if exchange.chat and isinstance(choice.get("message", {}).get("content"), str):
            choice["message"]["content"] += "\n\n" + report
        elif not exchange.chat and isinstance(choice.get("text"), str):
            choice["text"] += "\n\n" + report
    return json.dumps(data, ensure_ascii=False).encode()


def usage_block(exchange: Exchange, block: bytes) -> tuple[bytes, bool]:
    """One chat/completions event, terminated, and whether it is the stream's usage chunk (usage, no choices): a
    usage event is recorded, and dropped or trimmed unless asked."""
    if not block.startswith(b"data") or not USAGE_OBJECT.search(block):
        return block + b"\n\n", False
    try:
        data = json.loads(block[block.index(b":") + 1 :].strip())
    except ValueError:
        return block + b"\n\n", False
    if not isinstance(data, dict):
        return block + b"\n\n", False
    take_usage(exchange, data)
    last = not data.get("choices")
    if exchange.client_wants_usage:
        return block + b"\n\n", last
    if last:
        return b"", last
    data.pop("usage", None)
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n", last


def usage_events(batch: bytes) -> Iterator[tuple[int, int]]:
    """Where each event of `batch` (whole events) that holds a usage object starts and ends (its blank line left
    out). Found by searching, not by stepping through every event: an engine that writes faster than the client
    reads hands over batches of thousands of events, and the usage event is one of them."""
    at = 0
    while found := USAGE_OBJECT.search(batch, at):
        start = batch.rfind(b"\n\n", at, found.start())
        start = at if start < 0 else start + 2
        end = batch.find(b"\n\n", found.end())
        end = len(batch) if end < 0 else end
        yield start, end
        at = end + 2


def observe_usage(exchange: Exchange, batch: bytes) -> None:
    """Read usage from other APIs' events (Responses, Anthropic) for the metrics, without changing them."""
    for first, last in usage_events(batch):
        block = batch[first:last]
        start = block.find(b"data:")
        if start < 0:
            continue
        try:
            data = json.loads(block[start + 5 :].strip())
        except ValueError:
            continue
        if isinstance(data, dict):
            take_usage(exchange, data)
