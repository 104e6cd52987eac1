"""One proxied request: parse → ticket for the model → wait (with progress) → relay the engine's answer.

- Model resident: the upstream request is opened before answering, so engine errors keep their HTTP status.
- Otherwise a streaming client gets `200 text/event-stream` at once, with status events and keep-alives in its
  API's stream shape (`progress.py`) while it waits; a non-streaming client just waits.
- Client disconnect cancels everything: the waiting ticket, or the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from router_app.config import Config, RouterSettings
from router_app.control.switcher import Switcher, Ticket
from router_app.engines.instance import SwitchError
from router_app.live import LiveConfig
from router_app.metrics import RouterMetrics
from router_app.proxy import report
from router_app.proxy.activity import Activity, Cancellation
from router_app.proxy.endpoints import Endpoint
from router_app.proxy.parse import Exchange, UnknownModel, parse
from router_app.proxy.progress import Shape, shape_for
from router_app.proxy.relay import MODEL_FIELD, StreamBroken, relay
from router_app.proxy.upstream import Upstream, UpstreamError, UpstreamResponse
from router_app.wire.disconnect import ClientGone, DisconnectAwareStreamingResponse, race_disconnect
from router_app.wire.errors import engine_error_as_anthropic, json_error

if TYPE_CHECKING:
    from router_app.fleet import Fleet

log = logging.getLogger(__name__)

_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def failure_code(error: BaseException | None) -> str:
    """The OpenAI error code for a request whose model could not be made resident."""
    return error.code if isinstance(error, SwitchError) else SwitchError.code


class Proxy:
    """Turns an HTTP request into: find model → wait for it → relay the engine's answer."""

    def __init__(
        self,
        live: LiveConfig,
        switcher: Switcher,
        upstream: Upstream,
        metrics: RouterMetrics,
        fleet: Fleet | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.activity = activity
        self.live = live
        self.switcher = switcher
        self.upstream = upstream
        self.metrics = metrics
        self.fleet = fleet

    @property
    def config(self) -> Config:
        return self.live.current.config

    @property
    def settings(self) -> RouterSettings:
        return self.live.current.settings

    async def handle(
        self,
        request: Request,
        endpoint: Endpoint,
        raw: bytes,
        client: str = "-",
        cancellation: Cancellation | None = None,
    ) -> Response:
        """Answer one proxied request. `client`: the label of the key it came with (for the console);
        `cancellation`: its cancel switch (the request's receive is already wrapped by it)."""
        parsed = parse(raw, endpoint, self.config)
        if isinstance(parsed, UnknownModel):
            return await self._to_peer(request, parsed.name, raw) or parsed.response
        if isinstance(parsed, Response):
            return parsed
        exchange = parsed
        backend = exchange.model.backend
        if backend not in endpoint.backends:
            return json_error(
                501,
                f"model '{exchange.requested_name}' runs on backend '{backend.value}', which does not serve "
                f"{request.scope['path']} (see README: API)",
                "not_supported_error",
                code="route_not_supported",
                anthropic=endpoint.anthropic,
            )
        ticket = self.switcher.ticket(exchange.model.id)
        self.metrics.inflight.labels(exchange.model.id).inc()
        exchange.cancellation = cancellation
        if self.activity is not None:
            exchange.record = self.activity.begin(exchange, client, cancellation)
        if ticket.granted.done() and ticket.granted.exception() is not None:  # decided at once: can never fit
            self._finish(exchange, ticket, "switch_failed")
            error = ticket.granted.exception()
            return json_error(
                503, str(error), "service_unavailable", code=failure_code(error), anthropic=endpoint.anthropic
            )
        try:
            if exchange.stream:
                return await self._stream(request, exchange, ticket)
            return await self._unary(request, exchange, ticket)
        except BaseException:
            self._finish(exchange, ticket, "error")
            raise

    async def _to_peer(self, request: Request, name: str, raw: bytes) -> Response | None:
        """A model this router does not serve: the answer of the peer that does (None if none does)."""
        if self.fleet is None or not self.fleet.forwards(request):
            return None
        found = await self.fleet.locate(name)
        if found is None:
            return None
        peer, model_id = found
        self.metrics.peer_requests.labels(peer.name, model_id).inc()
        return await self.fleet.forward(request, peer, raw)

    def _finish(self, exchange: Exchange, ticket: Ticket, outcome: str) -> None:
        """Release the model and count the request; only the first call for an exchange counts."""
        ticket.release()
        if exchange.finished:
            return
        exchange.finished = True
        self.metrics.inflight.labels(exchange.model.id).dec()
        self.metrics.requests.labels(exchange.model.id, exchange.endpoint.name, outcome).inc()
        if exchange.completion_tokens:
            self.metrics.completion_tokens.labels(exchange.model.id).inc(exchange.completion_tokens)
        if exchange.prompt_tokens is not None and exchange.cached_tokens is not None and ticket.runtime is not None:
            ticket.runtime.observe_prompt_cache(exchange.prompt_tokens, exchange.cached_tokens)
        if self.activity is not None and exchange.record is not None:
            self.activity.end(exchange.record, exchange, outcome)

    def _observe_wait(self, exchange: Exchange, ticket: Ticket) -> None:
        self.metrics.wait_seconds.labels(exchange.model.id).observe(time.monotonic() - ticket.created)
        if self.activity is not None and exchange.record is not None:
            self.activity.granted(exchange.record)

    async def _send(self, exchange: Exchange, ticket: Ticket) -> UpstreamResponse:
        # The engine instance the request was granted, never the one its name maps to now: a config reload may
        # have put a new engine, maybe not started yet, under that name since.
        runtime = ticket.runtime
        assert runtime is not None, "a granted ticket holds the engine it was granted"
        adapter = runtime.adapter
        headers = {"Content-Type": "application/json", **adapter.auth_headers()}
        url = exchange.endpoint.url(adapter.openai_base, adapter.base_url)
        exchange.sent = time.monotonic()
        return await self.upstream.post(runtime, url, exchange.content, headers)

    @staticmethod
    def _gone(exchange: Exchange) -> Response:
        """The answer to a request whose client left (nobody reads it), or that the operator cancelled."""
        if _cancelled(exchange):
            return json_error(
                499, CANCELLED, "cancelled", code="request_cancelled", anthropic=exchange.endpoint.anthropic
            )
        return Response(status_code=499)

    def _upstream_failed(self, exchange: Exchange, ticket: Ticket, exc: Exception) -> str:
        if isinstance(exc, UpstreamError) and exc.connect_failed and ticket.runtime is not None:
            self.switcher.mark_unreachable(ticket.runtime)
        return f"engine for {exchange.model.id} failed: {type(exc).__name__}: {exc or 'connection lost'}"

    def _engine_answer(self, exchange: Exchange, status: int, body: bytes, content_type: str) -> Response:
        """An engine's non-200 answer, passed on with its status (in Anthropic shape on /v1/messages)."""
        if exchange.endpoint.anthropic:
            return Response(engine_error_as_anthropic(body, status), status_code=status, media_type="application/json")
        return Response(body, status_code=status, media_type=content_type)

    # --- non-streaming -------------------------------------------------------------------

    async def _unary(self, request: Request, exchange: Exchange, ticket: Ticket) -> Response:
        anthropic = exchange.endpoint.anthropic
        try:
            if not ticket.granted.done():
                await race_disconnect(request, ticket.wait())
            self._observe_wait(exchange, ticket)
            upstream = await race_disconnect(request, self._send(exchange, ticket))
            content = await race_disconnect(request, upstream.read())
            if self.activity is not None and exchange.record is not None:
                self.activity.first_byte(exchange.record)
        except ClientGone:
            self._finish(exchange, ticket, "client_gone")
            return self._gone(exchange)
        except SwitchError as exc:
            self._finish(exchange, ticket, "switch_failed")
            return json_error(503, str(exc), "service_unavailable", code=failure_code(exc), anthropic=anthropic)
        except UpstreamError as exc:
            message = self._upstream_failed(exchange, ticket, exc)
            self._finish(exchange, ticket, "error")
            return json_error(502, message, "bad_gateway", code="engine_error", anthropic=anthropic)
        if upstream.status != 200:
            self._finish(exchange, ticket, f"http_{upstream.status}")
            return self._engine_answer(exchange, upstream.status, content, upstream.content_type)
        if b'"model"' in content:
            content = MODEL_FIELD.sub(lambda _m: exchange.model_field(), content)
        content = report.unary_footer(self.settings, exchange, content)
        self._finish(exchange, ticket, "ok")
        return Response(content, status_code=200, media_type=upstream.content_type)

    # --- streaming -----------------------------------------------------------------------

    async def _stream(self, request: Request, exchange: Exchange, ticket: Ticket) -> Response:
        shape = shape_for(exchange.endpoint.kind, exchange.requested_name, self.settings.status_style)
        upstream: UpstreamResponse | None = None
        if not ticket.waited:
            # Resident already: open the upstream first, so its HTTP errors keep their status code.
            try:
                upstream = await race_disconnect(request, self._send(exchange, ticket))
            except ClientGone:
                self._finish(exchange, ticket, "client_gone")
                return self._gone(exchange)
            except UpstreamError as exc:
                message = self._upstream_failed(exchange, ticket, exc)
                self._finish(exchange, ticket, "error")
                return json_error(
                    502, message, "bad_gateway", code="engine_error", anthropic=exchange.endpoint.anthropic
                )
            if upstream.status != 200:
                try:
                    body = await upstream.read()
                except UpstreamError as exc:
                    body = str(exc).encode()
                self._finish(exchange, ticket, f"http_{upstream.status}")
                return self._engine_answer(exchange, upstream.status, body, upstream.content_type)

        def farewell() -> bytes | None:
            if not _cancelled(exchange):
                return None
            return shape.error(CANCELLED, "cancelled", "request_cancelled", 499) + shape.closing()

        return DisconnectAwareStreamingResponse(
            self._stream_body(exchange, ticket, shape, upstream),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
            on_close=lambda: self._finish(exchange, ticket, "client_gone"),
            farewell=farewell,
        )

    async def _stream_body(
        self, exchange: Exchange, ticket: Ticket, shape: Shape, upstream: UpstreamResponse | None
    ) -> AsyncIterator[bytes]:
        outcome = "client_gone"
        try:
            if upstream is None:
                async for chunk in self._progress(exchange, ticket, shape):
                    yield chunk
                failed = ticket.granted.exception()
                if failed is not None:
                    outcome = "switch_failed"
                    yield (shape.error(str(failed), "service_unavailable", failure_code(failed), 503) + shape.closing())
                    return
                try:
                    upstream = await self._send(exchange, ticket)
                except UpstreamError as exc:
                    outcome = "error"
                    yield shape.error(
                        self._upstream_failed(exchange, ticket, exc), "service_unavailable", "engine_error", 502
                    )
                    yield shape.closing()
                    return
                if upstream.status != 200:
                    outcome = f"http_{upstream.status}"
                    message = _error_message(await upstream.read(), upstream.status)
                    yield shape.error(message, "engine_error", upstream.status, upstream.status) + shape.closing()
                    return
            async for chunk in relay(self.settings, exchange, upstream, shape):
                if self.activity is not None and exchange.record is not None and exchange.record.ttft_s is None:
                    self.activity.first_byte(exchange.record)
                yield chunk
            outcome = "ok"
        except UpstreamError as exc:
            outcome = "error"
            yield shape.error(self._upstream_failed(exchange, ticket, exc), "service_unavailable", "engine_error", 502)
            yield shape.closing()
        except StreamBroken as exc:
            outcome = "error"
            yield shape.error(str(exc), "service_unavailable", "engine_error", 502) + shape.closing()
        finally:
            if upstream is not None:
                upstream.close(finished=outcome == "ok")
            self._finish(exchange, ticket, outcome)

    async def _progress(self, exchange: Exchange, ticket: Ticket, shape: Shape) -> AsyncIterator[bytes]:
        """Status events and keep-alives until the model is resident (or the switch failed)."""
        while not ticket.granted.done():
            yield shape.waiting(ticket.status())
            await asyncio.wait({ticket.granted}, timeout=self.settings.progress_interval_s)
        self._observe_wait(exchange, ticket)
        waited = time.monotonic() - ticket.created
        if ticket.granted.exception() is not None:
            yield shape.waited(f"Loading {exchange.model.id} failed after {waited:.0f} s", failed=True)
        else:
            yield shape.waited(f"{exchange.model.id} loaded in {waited:.2f} s", failed=False)


# 499 (the client's request ended before its answer), not a 5xx: the SDKs retry those, and the operator meant it.
CANCELLED = "request cancelled by the router's operator (POST /console/requests/{id}/cancel)"


def _cancelled(exchange: Exchange) -> bool:
    return exchange.cancellation is not None and exchange.cancellation.cancelled


def _error_message(body: bytes, status: int) -> str:
    try:
        data = json.loads(body)
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return f"engine answered {status}: {message}"
    except (ValueError, AttributeError):
        pass
    return f"engine answered {status}: {body[:300].decode(errors='replace')}"
