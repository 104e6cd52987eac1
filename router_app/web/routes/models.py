"""`GET /v1/models` and `GET /v1/models/{id}`: answered at once from the config, with each model's state and,
as llama.cpp's router mode does, `status: {"value": ...}` (what Open-WebUI's llama.cpp provider reads)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from router_app.web.routes.context import RouterContext
from router_app.wire.errors import json_error


def model_status(ctx: RouterContext, model_id: str) -> dict[str, Any]:
    """llama.cpp b11312 router mode's status object (tools/server/server-models.cpp:2034-2042).

    A failed model is `unloaded` with `failed: true` and an exit code there (llama.cpp has no `failed` value;
    Open-WebUI 0.12.4 counts only loaded/sleeping and loading/unloaded). `args` stays empty: engine command
    lines may hold keys. While loading, `progress` has llama.cpp's stage shape plus elapsed and estimated seconds.
    """
    value = ctx.switcher.view.status(model_id)
    status: dict[str, Any] = {"value": value, "args": []}
    if value == "failed":
        runtime = ctx.runtimes[model_id]
        status.update(value="unloaded", failed=True, exit_code=1)
        if runtime.last_error:
            status["error"] = runtime.last_error
    elif value == "loading":
        status["progress"] = load_progress(ctx, model_id)
    return status


def load_progress(ctx: RouterContext, model_id: str) -> dict[str, Any]:
    """llama.cpp's `{"stages", "current", "value"}` (server-context.cpp:975-979) with the router's timing."""
    progress: dict[str, Any] = {"stages": ["text_model"], "current": "text_model"}
    timing = ctx.switcher.view.switching().get(model_id, {})
    elapsed, estimate = timing.get("elapsed_s"), timing.get("estimate_s")
    fraction = ctx.runtimes[model_id].progress
    if fraction is None and isinstance(elapsed, float) and isinstance(estimate, float) and estimate > 0:
        fraction = min(elapsed / estimate, 0.99)  # from the median of past loads
    if fraction is not None:
        progress["value"] = round(fraction, 3)
    if elapsed is not None:
        progress["elapsed_s"] = elapsed
    if estimate is not None:
        progress["estimate_s"] = estimate
    return progress


def model_entry(ctx: RouterContext, model_id: str) -> dict[str, Any]:
    model = next(m for m in ctx.config.models if m.id == model_id)
    return {
        "id": model.id,
        "object": "model",
        "created": int(ctx.started),
        "owned_by": "llm-router",
        "backend": model.backend.value,
        "state": ctx.runtimes[model.id].state.value,
        "status": model_status(ctx, model.id),
        "aliases": model.aliases,
        **({"group": model.group} if model.group else {}),
        **({"description": model.description} if model.description else {}),
    }


def model_routes(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        local = [model_entry(ctx, m.id) for m in ctx.config.models]
        return {"object": "list", "data": local + await ctx.peer_entries(request)}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(request: Request, model_id: str) -> Response:
        model = ctx.find(model_id)
        if model is not None:
            return JSONResponse(model_entry(ctx, model.id))
        found = await ctx.peer_for(request, model_id)
        if found is None:
            return ctx.unknown_model(model_id)
        peer, peer_model = found
        entry = await ctx.fleet.entry(peer, peer_model) if ctx.fleet is not None else None
        if entry is None:
            return json_error(
                502,
                f"model {model_id!r} is served by peer router {peer.name} ({peer.config.url}), which does not answer",
                "bad_gateway",
                code="peer_unreachable",
            )
        return JSONResponse(entry)

    return router
