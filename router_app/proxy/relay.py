"""Relaying an engine's event stream: bytes pass in the batches they arrive in; only `model` is rewritten.

Works on whatever complete events one read delivered, with one C-level regex pass per batch: per-event
Python work is what limits relay throughput (bench/stream_relay.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from router_app.config import RouterSettings
from router_app.proxy import report
from router_app.proxy.parse import Exchange
from router_app.proxy.progress import OpenAIShape, Shape
from router_app.proxy.upstream import UpstreamResponse

MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


class StreamBroken(Exception):
    """The engine's stream ended before its API's final event."""


async def relay(
    settings: RouterSettings, exchange: Exchange, upstream: UpstreamResponse, shape: Shape
) -> AsyncIterator[bytes]:
    """The engine's events with the model name rewritten; for chat/completions the speed report before [DONE]."""
    pending = b""
    complete = not shape.end.pattern
    openai = isinstance(shape, OpenAIShape)
    target = exchange.model_field()
    model_template = target.replace(b"\\", b"\\\\")
    engine_field: bytes | None = None
    async for piece in upstream.iter_raw():
        if b"\r" in piece:
            piece = piece.replace(b"\r\n", b"\n")
        pending += piece
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        batch, pending = pending[: end + 2], pending[end + 2 :]
        if openai:
            if b"[DONE]" in batch:
                batch, found = shape.end.subn(b"", batch)
                complete = complete or found > 0
            if report.USAGE_OBJECT.search(batch):
                batch = b"".join(report.usage_block(exchange, block) for block in batch.split(b"\n\n") if block)
            if not batch:
                continue
        else:
            if not complete and shape.end.search(batch):
                complete = True
            if report.USAGE_OBJECT.search(batch):
                report.observe_usage(exchange, batch)
        # Engines repeat one exact `"model":"…"` field: a plain replace (C speed) instead of a regex pass,
        # with the regex as fallback whenever a batch holds any other model field.
        if engine_field is None:
            match = MODEL_FIELD.search(batch)
            engine_field = match.group(0) if match else None
        if engine_field is not None and engine_field != target:
            batch = batch.replace(engine_field, target)
        if batch.count(b'"model"') != batch.count(target):
            batch = MODEL_FIELD.sub(model_template, batch)
        yield batch
    if pending.strip() and not openai:
        yield pending
    if not complete:
        raise StreamBroken(
            f"engine for {exchange.model.id} ended the stream early (it may have crashed; see GET /health)"
        )
    if openai:
        footer = report.stream_footer(settings, exchange, shape)
        yield footer + shape.closing()
