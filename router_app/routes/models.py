"""`GET /v1/models` and `GET /v1/models/{id}`: answered at once from the config, with each model's state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from ..errors import json_error
from .context import RouterContext


def model_routes(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    def entry(model_id: str) -> dict[str, Any]:
        model = next(m for m in ctx.config.models if m.id == model_id)
        return {
            "id": model.id,
            "object": "model",
            "created": int(ctx.started),
            "owned_by": "llm-router",
            "backend": model.backend.value,
            "state": ctx.runtimes[model.id].state.value,
            "aliases": model.aliases,
            **({"group": model.group} if model.group else {}),
            **({"description": model.description} if model.description else {}),
        }

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [entry(m.id) for m in ctx.config.models]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        model = ctx.find(model_id)
        if model is None:
            return json_error(
                404, f"The model '{model_id}' does not exist", "invalid_request_error", code="model_not_found"
            )
        return JSONResponse(entry(model.id))

    return router
