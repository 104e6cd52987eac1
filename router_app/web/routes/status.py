"""Status for people and monitors: `/health`, `/health/all`, `/health/{model}`, `/running`, `/metrics`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from router_app import __version__
from router_app.engines.instance import ModelState
from router_app.metrics import CONTENT_TYPE_LATEST
from router_app.web.routes.context import RouterContext


def status_routes(ctx: RouterContext) -> APIRouter:
    router = APIRouter()
    switcher = ctx.switcher  # the config and the engine instances are read from ctx each time: a reload replaces them

    @router.get("/health")
    async def health() -> dict[str, Any]:
        backends: dict[str, dict[str, int]] = {}
        runtimes = ctx.runtimes
        for model in ctx.config.models:
            states = backends.setdefault(model.backend.value, {})
            state = runtimes[model.id].state.value
            states[state] = states.get(state, 0) + 1
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - ctx.started, 1),
            "current": switcher.view.resident(),
            "devices": switcher.view.current(),
            "memory": switcher.view.memory_report(),
            "switching": switcher.view.switching(),
            **({"page_cache": switcher.warmer.status()} if switcher.warmer is not None else {}),
            "backends": backends,
            "models": [ctx.model_health(m.id) for m in ctx.config.models],
            **({"peers": ctx.fleet.report()} if ctx.fleet is not None and ctx.fleet.peers else {}),
        }

    @router.get("/health/all")
    async def health_all() -> dict[str, Any]:
        return {"models": {m.id: ctx.model_health(m.id) for m in ctx.config.models}}

    @router.get("/health/{model_id:path}")
    async def health_model(model_id: str) -> Response:
        model = ctx.find(model_id)
        if model is None:
            return ctx.unknown_model(model_id)
        return JSONResponse(ctx.model_health(model.id))

    @router.get("/running")
    async def running() -> dict[str, Any]:
        runtimes = ctx.runtimes
        return {
            "running": [
                ctx.model_health(m.id)
                for m in ctx.config.models
                if runtimes[m.id].supervisor is not None and runtimes[m.id].state is not ModelState.STOPPED
            ]
        }

    @router.get("/metrics")
    async def prometheus() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
