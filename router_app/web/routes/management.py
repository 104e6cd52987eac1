"""llama.cpp router-mode model management at the root (what Open-WebUI's provider "llama.cpp" drives):
`GET /models`, `POST /models/load`, `POST /models/unload`, `GET /models/sse`.

Shapes and errors follow llama.cpp b11312, tools/server/server-models.cpp: load 2003-2019 (unknown model 404
not_found_error, running 400 "model is already running", else `{"success": true}` at once while the load goes on),
unload 2097-2113 (unknown model 400 invalid_request_error, not running 400 "model is not running"), the list
2021-2095, SSE 2115-2131 with events from notify_sse (650-661): `{"model", "event", "data"}`, `model_status` when a
load starts (1191) and `status_change` for every change (1306-1320, `exit_code` on unloaded, `progress` while
loading). Who may load/unload is `router.model_control` (checked in api.EntryPoint). Models of peer routers
(`router.peers`, fleet.py) are listed too, and their load/unload goes to the peer; `/models/sse` reports this
router's models only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from router_app.engines.instance import SwitchError
from router_app.web.routes.context import RouterContext
from router_app.web.routes.models import load_progress, model_entry
from router_app.wire import sse
from router_app.wire.disconnect import DisconnectAwareStreamingResponse
from router_app.wire.errors import json_error

log = logging.getLogger(__name__)

RUNNING = ("loaded", "loading", "sleeping")
# How long POST /models/unload waits for the engine to stop before answering (Open-WebUI's eject call gives up
# after 30 s); the unload goes on either way, and `status` shows it.
UNLOAD_WAIT_S = 10.0


def _error(status: int, message: str) -> Response:
    type_ = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error"}[status]
    return json_error(status, message, type_, code=status)


def management_routes(ctx: RouterContext, is_admin: Callable[[Request], bool]) -> APIRouter:
    router = APIRouter()
    switcher = ctx.switcher
    tasks: set[asyncio.Task[Any]] = set()

    async def named_model(request: Request) -> tuple[str | None, Response | None]:
        name, valid = await ctx.body_model(request)
        if not valid:
            return None, _error(400, "request body is not valid JSON")
        if not isinstance(name, str) or not name:
            return None, _error(400, "model name is missing from the request")
        return name, None

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def finish_load(model_id: str, ticket: Any) -> None:
        try:
            await ticket.wait()
        except SwitchError as exc:
            log.warning("POST /models/load %s failed: %s", model_id, exc)
        finally:
            ticket.release()

    @router.get("/models")
    async def list_models(request: Request) -> dict[str, Any]:
        local = [model_entry(ctx, m.id) for m in ctx.config.models]
        return {"data": local + await ctx.peer_entries(request), "object": "list"}

    async def on_peer(request: Request, name: str) -> Response | None:
        """A load/unload of a model a peer serves: the peer's answer (its own model_control applies)."""
        found = await ctx.peer_for(request, name)
        if found is None or ctx.fleet is None:
            return None
        return await ctx.fleet.forward(request, found[0], await request.body())

    @router.post("/models/load")
    async def load(request: Request) -> Response:
        name, error = await named_model(request)
        if error is not None or name is None:
            return error or _error(400, "model name is missing from the request")
        model = ctx.find(name)
        if model is None:
            return await on_peer(request, name) or _error(404, "model is not found")
        if switcher.view.status(model.id) in RUNNING:
            return _error(400, "model is already running")
        ticket = switcher.ticket(model.id)  # the load starts now, so `status` says loading at once
        spawn(finish_load(model.id, ticket), f"models-load-{model.id}")
        return JSONResponse({"success": True})

    @router.post("/models/unload")
    async def unload(request: Request) -> Response:
        name, error = await named_model(request)
        if error is not None or name is None:
            return error or _error(400, "model name is missing from the request")
        model = ctx.find(name)
        if model is None:
            return await on_peer(request, name) or _error(400, "model is not found")
        if ctx.runtimes[model.id].supervisor is None:
            return _error(
                400, f"model {model.id} is a remote endpoint (backend {model.backend.value}): nothing to unload"
            )
        status = switcher.view.status(model.id)
        if status not in RUNNING:
            return _error(400, "model is not running")
        if status == "loading":
            return _error(400, "model is loading; unload it once it is loaded")
        if model.pinned and not is_admin(request):
            return _error(403, f"model {model.id} is pinned: only the admin key may unload it")
        task = spawn(switcher.unload(model.id), f"models-unload-{model.id}")
        await asyncio.wait({task}, timeout=UNLOAD_WAIT_S)
        return JSONResponse({"success": True})

    @router.get("/models/sse")
    async def events(request: Request) -> Response:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        unsubscribe = switcher.subscribe(lambda model, status: queue.put_nowait((model, status)))
        return DisconnectAwareStreamingResponse(
            _event_stream(ctx, queue),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            on_close=unsubscribe,
            until=ctx.shutting_down,
        )

    return router


def _event(model: str, event: str, data: dict[str, Any]) -> bytes:
    return sse.event({"model": model, "event": event, "data": data})


def status_event(ctx: RouterContext, model: str, status: str) -> bytes:
    """One status change in llama.cpp's words (`failed` is `unloaded` with a non-zero exit code there)."""
    if status == "loading":
        return _event(model, "model_status", {"status": "loading"})
    if status == "failed":
        data: dict[str, Any] = {"status": "unloaded", "exit_code": 1, "failed": True}
        runtime = ctx.runtimes.get(model)
        error = runtime.last_error if runtime is not None else None
        if error:
            data["error"] = error
        return _event(model, "status_change", data)
    if status == "unloaded":
        return _event(model, "status_change", {"status": "unloaded", "exit_code": 0})
    return _event(model, "status_change", {"status": status})


async def _event_stream(ctx: RouterContext, queue: asyncio.Queue[tuple[str, str]]) -> AsyncIterator[bytes]:
    """Status changes as they happen; every `progress_interval_s` the progress of each load, and a keep-alive."""
    interval = ctx.config.router.progress_interval_s
    yield sse.KEEPALIVE  # headers and a first byte at once, so clients see the stream open
    while True:
        try:
            model, status = await asyncio.wait_for(queue.get(), timeout=interval)
        except TimeoutError:
            loading = [m.id for m in ctx.config.models if ctx.switcher.view.status(m.id) == "loading"]
            progress = b"".join(
                _event(m, "status_change", {"status": "loading", "progress": load_progress(ctx, m)}) for m in loading
            )
            yield progress + sse.KEEPALIVE
            continue
        yield status_event(ctx, model, status)
