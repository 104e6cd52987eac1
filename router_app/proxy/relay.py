"""Relaying an engine's event stream: bytes pass in the batches they arrive in; only `model` is rewritten.

Works on whatever complete events one read delivered, with one C-level regex pass per batch: per-event
Python work is what limits relay throughput (bench/stream_relay.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator

from router_app.config import RouterSettings
from router_app.proxy import report
from router_app.proxy.parse import Exchange
from router_app.proxy.progress import OpenAIShape, Shape
from router_app.proxy.upstream import UpstreamResponse
from router_app.wire.sse import ChunkFactory

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
    ids = _OneId(shape.factory) if isinstance(shape, OpenAIShape) else None
    footer_written = False

    def usage(block: bytes) -> bytes:
        nonlocal footer_written
        out, last = report.usage_block(exchange, block)
        if last and exchange.client_wants_usage and not footer_written:
            # The usage chunk the client asked for is the stream's last: the speed report goes before.
            out = report.stream_footer(settings, exchange, shape) + out
            footer_written = True
        return out

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
            assert ids is not None
            ids.learn(batch)
            if report.USAGE_OBJECT.search(batch):
                batch = with_usage_events(batch, usage)
            if not batch or batch.isspace():  # not strip(): that copies every batch to test it
                continue
            batch = ids.rewrite(batch)
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
        footer = b"" if footer_written else report.stream_footer(settings, exchange, shape)
        yield footer + shape.closing()


def with_usage_events(batch: bytes, handle: Callable[[bytes], bytes]) -> bytes:
    """`batch` (whole events) with each event that holds a usage object replaced by `handle(event)` (terminated, or
    empty to drop it), the others left as they are (report.usage_events)."""
    parts, at = [], 0
    for start, end in report.usage_events(batch):
        parts += [batch[at:start], handle(batch[start:end])]
        at = end + 2
    parts.append(batch[at:])
    return b"".join(parts)


def data_events(batch: bytes) -> Iterator[bytes]:
    """The `data:` payloads of a batch's events, one at a time (no split of the whole batch)."""
    at = 0
    while at < len(batch):
        end = batch.find(b"\n\n", at)
        end = len(batch) if end < 0 else end
        if batch.startswith(b"data:", at):
            yield batch[at + 5 : end]
        at = end + 2


class _OneId:
    """One `id` for every chunk of a chat/completions stream: where the router wrote chunks before the engine's
    (status while waiting), the engine's id is rewritten to the router's; otherwise the router's later chunks (the
    speed report) take the engine's."""

    def __init__(self, factory: ChunkFactory) -> None:
        self.factory = factory
        self.found = False
        self._engine_field: re.Pattern[bytes] | None = None
        self._router_field = b""

    def learn(self, batch: bytes) -> None:
        if self.found:
            return
        for payload in data_events(batch):
            if payload.strip() == b"[DONE]":
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                continue
            self.found = True
            engine_id = data["id"]
            if engine_id == self.factory.id:
                return
            if self.factory.written:
                self._engine_field = re.compile(rb'"id"\s*:\s*' + re.escape(json.dumps(engine_id).encode()))
                self._router_field = b'"id":' + json.dumps(self.factory.id).encode()
            else:
                self.factory.id = engine_id
            return

    def rewrite(self, batch: bytes) -> bytes:
        if self._engine_field is None:
            return batch
        return self._engine_field.sub(self._router_field, batch)
