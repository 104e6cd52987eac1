"""Proxying OpenAI requests to the resident engine: waiting with progress, relaying, speed report.

The engine's bytes are relayed as they come; per SSE event only the `model` field is
rewritten (a regex on bytes, no JSON round trip), and the usage chunk is parsed for the
speed report (and dropped when the client did not ask for usage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from . import sse
from .config import Config, ModelConfig, StatusStyle
from .errors import json_error
from .metrics import RouterMetrics
from .runtime import SwitchError
from .switcher import ModelTooLarge, Switcher, Ticket
from .upstream import Upstream, UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)

T = TypeVar("T")

CHAT = "chat/completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_DONE_EVENT = re.compile(rb"data: ?\[DONE\]\n\n")
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected while we were waiting for something on its behalf."""


class DisconnectAwareStreamingResponse(StreamingResponse):
    """Streams and, at the same time, listens for the client leaving: the body generator is
    closed at once (its `finally` closes the upstream request), not only at the next write."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            self._on_close()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` in this task, but cancel it (raising ClientGone) if the client disconnects first."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(request)
        gone = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await awaitable
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


@dataclass
class Exchange:
    """One client request on its way through the router."""

    endpoint: str
    model: ModelConfig
    requested_name: str
    body: dict[str, Any]
    stream: bool
    client_wants_usage: bool
    text_footer_allowed: bool
    started: float = field(default_factory=time.monotonic)
    completion_tokens: int | None = None
    engine_tokens_per_second: float | None = None
    finished: bool = False

    @property
    def chat(self) -> bool:
        return self.endpoint == CHAT

    def model_field(self) -> bytes:
        return b'"model":' + json.dumps(self.requested_name).encode()


class Proxy:
    """Turns an HTTP request into: find model → wait for it → relay the engine's answer."""

    def __init__(self, config: Config, switcher: Switcher, upstream: Upstream, metrics: RouterMetrics) -> None:
        self.config = config
        self.settings = config.router
        self.switcher = switcher
        self.upstream = upstream
        self.metrics = metrics

    # --- request parsing -----------------------------------------------------------------

    def parse(self, raw: bytes, endpoint: str) -> Exchange | Response:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return json_error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(body, dict):
            return json_error(400, "request body must be a JSON object", "invalid_request_error")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return json_error(
                400, "missing 'model': name one of GET /v1/models", "invalid_request_error", param="model"
            )
        model = self.config.find(name)
        if model is None:
            return json_error(
                404,
                f"The model '{name}' does not exist; see GET /v1/models for the available ones",
                "invalid_request_error",
                code="model_not_found",
                param="model",
            )
        stream = body.get("stream") is True and endpoint != EMBEDDINGS
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        exchange = Exchange(
            endpoint=endpoint,
            model=model,
            requested_name=name,
            body=body,
            stream=stream,
            client_wants_usage=bool(options.get("include_usage")),
            text_footer_allowed=not body.get("tools") and not body.get("response_format") and not body.get("functions"),
        )
        body["model"] = model.engine_name
        if stream:
            body["stream_options"] = {**options, "include_usage": True}
        if self.settings.status_style is StatusStyle.CONTENT and endpoint == CHAT:
            _strip_router_history(body)
        return exchange

    # --- entry point ---------------------------------------------------------------------

    async def handle(self, request: Request, endpoint: str) -> Response:
        parsed = self.parse(await request.body(), endpoint)
        if isinstance(parsed, Response):
            return parsed
        exchange = parsed
        ticket = self.switcher.ticket(exchange.model.id)
        self.metrics.inflight.labels(exchange.model.id).inc()
        if ticket.granted.done() and ticket.granted.exception() is not None:  # decided at once: can never fit
            self._finish(exchange, ticket, "switch_failed")
            error = ticket.granted.exception()
            code = "model_too_large" if isinstance(error, ModelTooLarge) else "model_load_failed"
            return json_error(503, str(error), "service_unavailable", code=code)
        try:
            if exchange.stream:
                return await self._stream(request, exchange, ticket)
            return await self._unary(request, exchange, ticket)
        except BaseException:
            self._finish(exchange, ticket, "error")
            raise

    def _finish(self, exchange: Exchange, ticket: Ticket, outcome: str) -> None:
        """Release the model and count the request; only the first call for an exchange counts."""
        ticket.release()
        if exchange.finished:
            return
        exchange.finished = True
        self.metrics.inflight.labels(exchange.model.id).dec()
        self.metrics.requests.labels(exchange.model.id, exchange.endpoint, outcome).inc()
        if exchange.completion_tokens:
            self.metrics.completion_tokens.labels(exchange.model.id).inc(exchange.completion_tokens)

    def _observe_wait(self, exchange: Exchange, ticket: Ticket) -> None:
        self.metrics.wait_seconds.labels(exchange.model.id).observe(time.monotonic() - ticket.created)

    async def _send(self, exchange: Exchange) -> UpstreamResponse:
        adapter = self.switcher.runtimes[exchange.model.id].adapter
        headers = {"Content-Type": "application/json", **adapter.auth_headers()}
        content = json.dumps(exchange.body, separators=(",", ":"), ensure_ascii=False).encode()
        return await self.upstream.post(
            exchange.model.id, f"{adapter.openai_base}/{exchange.endpoint}", content, headers
        )

    def _upstream_failed(self, exchange: Exchange, exc: Exception) -> str:
        if isinstance(exc, UpstreamError) and exc.connect_failed:
            self.switcher.mark_unreachable(exchange.model.id)
        return f"engine for {exchange.model.id} failed: {type(exc).__name__}: {exc or 'connection lost'}"

    # --- non-streaming -------------------------------------------------------------------

    async def _unary(self, request: Request, exchange: Exchange, ticket: Ticket) -> Response:
        try:
            if not ticket.granted.done():
                await race_disconnect(request, ticket.wait())
            self._observe_wait(exchange, ticket)
            upstream = await race_disconnect(request, self._send(exchange))
            content = await race_disconnect(request, upstream.read())
        except ClientGone:
            self._finish(exchange, ticket, "client_gone")
            return Response(status_code=499)
        except SwitchError as exc:
            self._finish(exchange, ticket, "switch_failed")
            return json_error(503, str(exc), "service_unavailable", code="model_load_failed")
        except UpstreamError as exc:
            message = self._upstream_failed(exchange, exc)
            self._finish(exchange, ticket, "error")
            return json_error(502, message, "bad_gateway", code="engine_error")
        if upstream.status == 200:
            content = _MODEL_FIELD.sub(lambda _m: exchange.model_field(), content)
            content = self._unary_footer(exchange, content)
        self._finish(exchange, ticket, "ok" if upstream.status == 200 else f"http_{upstream.status}")
        return Response(
            content,
            status_code=upstream.status,
            media_type=upstream.content_type,
        )

    def _unary_footer(self, exchange: Exchange, content: bytes) -> bytes:
        if exchange.endpoint == EMBEDDINGS or not _USAGE_OBJECT.search(content):
            return content
        try:
            data = json.loads(content)
        except ValueError:
            return content
        self._take_usage(exchange, data)
        if not (
            self.settings.metrics_footer
            and self.settings.status_style is StatusStyle.CONTENT
            and exchange.text_footer_allowed
            and exchange.completion_tokens
        ):
            return content
        report = self._report(exchange)
        for choice in data.get("choices") or []:
            if exchange.chat and isinstance(choice.get("message", {}).get("content"), str):
                choice["message"]["content"] += "\n\n" + report
            elif not exchange.chat and isinstance(choice.get("text"), str):
                choice["text"] += "\n\n" + report
        return json.dumps(data, ensure_ascii=False).encode()

    # --- streaming -----------------------------------------------------------------------

    async def _stream(self, request: Request, exchange: Exchange, ticket: Ticket) -> Response:
        factory = sse.ChunkFactory(exchange.requested_name, exchange.chat)
        if not ticket.waited:
            # Resident already: open the upstream first, so its HTTP errors keep their status code.
            try:
                upstream = await race_disconnect(request, self._send(exchange))
            except ClientGone:
                self._finish(exchange, ticket, "client_gone")
                return Response(status_code=499)
            except UpstreamError as exc:
                message = self._upstream_failed(exchange, exc)
                self._finish(exchange, ticket, "error")
                return json_error(502, message, "bad_gateway", code="engine_error")
            if upstream.status != 200:
                try:
                    body = await upstream.read()
                except UpstreamError as exc:
                    body = str(exc).encode()
                self._finish(exchange, ticket, f"http_{upstream.status}")
                return Response(
                    body,
                    status_code=upstream.status,
                    media_type=upstream.content_type,
                )
        else:
            upstream = None
        return DisconnectAwareStreamingResponse(
            self._stream_body(exchange, ticket, factory, upstream),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
            on_close=lambda: self._finish(exchange, ticket, "client_gone"),
        )

    async def _stream_body(
        self, exchange: Exchange, ticket: Ticket, factory: sse.ChunkFactory, upstream: UpstreamResponse | None
    ) -> AsyncIterator[bytes]:
        outcome = "client_gone"
        try:
            if upstream is None:
                async for chunk in self._progress(exchange, ticket, factory):
                    yield chunk
                if ticket.granted.exception() is not None:
                    outcome = "switch_failed"
                    yield sse.error_event(str(ticket.granted.exception()), code="model_load_failed")
                    yield sse.DONE
                    return
                try:
                    upstream = await self._send(exchange)
                except UpstreamError as exc:
                    outcome = "error"
                    yield sse.error_event(self._upstream_failed(exchange, exc), code="engine_error")
                    yield sse.DONE
                    return
                if upstream.status != 200:
                    outcome = f"http_{upstream.status}"
                    yield sse.error_event(
                        _error_message(await upstream.read(), upstream.status),
                        type_="engine_error",
                        code=upstream.status,
                    )
                    yield sse.DONE
                    return
            async for chunk in self._relay(exchange, upstream, factory):
                yield chunk
            outcome = "ok"
        except UpstreamError as exc:
            outcome = "error"
            yield sse.error_event(self._upstream_failed(exchange, exc), code="engine_error")
            yield sse.DONE
        except _StreamBroken as exc:
            outcome = "error"
            yield sse.error_event(str(exc), code="engine_error")
            yield sse.DONE
        finally:
            if upstream is not None:
                upstream.close(finished=outcome == "ok")
            self._finish(exchange, ticket, outcome)

    async def _progress(self, exchange: Exchange, ticket: Ticket, factory: sse.ChunkFactory) -> AsyncIterator[bytes]:
        """Status events and keep-alives until the model is resident (or the switch failed)."""
        style = self.settings.status_style
        while not ticket.granted.done():
            yield sse.KEEPALIVE + factory.status(style, ticket.status(), done=False)
            await asyncio.wait({ticket.granted}, timeout=self.settings.progress_interval_s)
        self._observe_wait(exchange, ticket)
        waited = time.monotonic() - ticket.created
        if ticket.granted.exception() is not None:
            yield factory.status(style, f"Loading {exchange.model.id} failed after {waited:.0f} s", done=True)
        elif style is not StatusStyle.CONTENT:
            yield factory.status(style, f"{exchange.model.id} loaded in {waited:.2f} s", done=True)

    async def _relay(
        self, exchange: Exchange, upstream: UpstreamResponse, factory: sse.ChunkFactory
    ) -> AsyncIterator[bytes]:
        """The engine's events with the model name rewritten; speed report before [DONE].

        Works on whatever complete events one read delivered, with one C-level regex pass per batch:
        per-event Python work is what limits relay throughput (bench/stream_relay.py).
        """
        pending = b""
        saw_done = False
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
            if b"[DONE]" in batch:
                batch, found = _DONE_EVENT.subn(b"", batch)
                saw_done = saw_done or found > 0
            if _USAGE_OBJECT.search(batch):
                batch = b"".join(self._usage_block(exchange, block) for block in batch.split(b"\n\n") if block)
            if not batch:
                continue
            # Engines repeat one exact `"model":"…"` field: a plain replace (C speed) instead of a regex pass,
            # with the regex as fallback whenever a batch holds any other model field.
            if engine_field is None:
                match = _MODEL_FIELD.search(batch)
                engine_field = match.group(0) if match else None
            if engine_field is not None and engine_field != target:
                batch = batch.replace(engine_field, target)
            if batch.count(b'"model"') != batch.count(target):
                batch = _MODEL_FIELD.sub(model_template, batch)
            yield batch
        if not saw_done:
            raise _StreamBroken(
                f"engine for {exchange.model.id} ended the stream before [DONE] (it may have crashed; see GET /health)"
            )
        footer = self._stream_footer(exchange, factory)
        yield footer + sse.DONE if footer else sse.DONE

    def _usage_block(self, exchange: Exchange, block: bytes) -> bytes:
        """One event, terminated; a usage event is recorded, and dropped or trimmed unless the client asked."""
        if not block.startswith(b"data") or not _USAGE_OBJECT.search(block):
            return block + b"\n\n"
        try:
            data = json.loads(block[block.index(b":") + 1 :].strip())
        except ValueError:
            return block + b"\n\n"
        self._take_usage(exchange, data)
        if exchange.client_wants_usage:
            return block + b"\n\n"
        if not data.get("choices"):
            return b""
        data.pop("usage", None)
        return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    @staticmethod
    def _take_usage(exchange: Exchange, data: dict[str, Any]) -> None:
        usage = data.get("usage") or {}
        if isinstance(usage.get("completion_tokens"), int):
            exchange.completion_tokens = usage["completion_tokens"]
        timings = data.get("timings") or {}
        if isinstance(timings.get("predicted_per_second"), int | float):
            exchange.engine_tokens_per_second = float(timings["predicted_per_second"])

    def _report(self, exchange: Exchange) -> str:
        return sse.speed_report(
            exchange.completion_tokens or 0, time.monotonic() - exchange.started, exchange.engine_tokens_per_second
        )

    def _stream_footer(self, exchange: Exchange, factory: sse.ChunkFactory) -> bytes:
        if not self.settings.metrics_footer or not exchange.completion_tokens:
            return b""
        report = self._report(exchange)
        style = self.settings.status_style
        if style is StatusStyle.OPENWEBUI:
            return factory.status(style, report, done=True)
        if style is StatusStyle.CONTENT and exchange.text_footer_allowed:
            return factory.text("\n\n" + report)
        return sse.comment(report)


class _StreamBroken(Exception):
    """The engine's stream ended without [DONE]."""


def _error_message(body: bytes, status: int) -> str:
    try:
        data = json.loads(body)
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else data.get("error")
        if message:
            return f"engine answered {status}: {message}"
    except (ValueError, AttributeError):
        pass
    return f"engine answered {status}: {body[:300].decode(errors='replace')}"


def _strip_router_history(body: dict[str, Any]) -> None:
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "assistant" and isinstance(message.get("content"), str):
            message["content"] = sse.strip_router_lines(message["content"])
