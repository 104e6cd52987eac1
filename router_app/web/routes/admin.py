"""Admin routes (admin key only): `POST /admin/load {"model"}`, `POST /admin/unload {"model"?}` and
`POST /admin/pin {"model", "pinned": true|false}` (until the router restarts)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from router_app.engines.instance import SwitchError
from router_app.web.routes.context import RouterContext
from router_app.wire.errors import json_error


def admin_routes(ctx: RouterContext) -> APIRouter:
    router = APIRouter()
    switcher = ctx.switcher

    async def requested_model(request: Request, required: bool) -> tuple[str | None, Response | None]:
        name, valid = await ctx.body_model(request)
        if not valid:
            return None, json_error(400, "request body is not valid JSON", "invalid_request_error")
        if name is None and not required:
            return None, None
        model = ctx.find(name) if isinstance(name, str) else None
        if model is None:
            return None, json_error(
                404 if name else 400,
                f"unknown model {name!r}",
                "invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return model.id, None

    @router.post("/admin/load")
    async def admin_load(request: Request) -> Response:
        model_id, error = await requested_model(request, required=True)
        if error is not None or model_id is None:
            return error or json_error(400, "missing 'model'", "invalid_request_error")
        try:
            await switcher.load(model_id)
        except SwitchError as exc:
            return json_error(503, str(exc), "service_unavailable", code=exc.code)
        return JSONResponse({"loaded": model_id, **ctx.model_health(model_id)})

    @router.post("/admin/pin")
    async def admin_pin(request: Request) -> Response:
        model_id, error = await requested_model(request, required=True)
        if error is not None or model_id is None:
            return error or json_error(400, "missing 'model'", "invalid_request_error")
        try:
            pinned = json.loads(await request.body()).get("pinned", True)
        except (ValueError, AttributeError, RecursionError):
            pinned = None
        if not isinstance(pinned, bool):
            return json_error(400, "'pinned' must be true or false", "invalid_request_error", param="pinned")
        try:
            await switcher.set_pinned(model_id, pinned)
        except SwitchError as exc:
            return json_error(503, str(exc), "service_unavailable", code=exc.code)
        return JSONResponse({"model": model_id, "pinned": pinned, **ctx.model_health(model_id)})

    @router.post("/admin/unload")
    async def admin_unload(request: Request) -> Response:
        model_id, error = await requested_model(request, required=False)
        if error is not None:
            return error
        targets = [model_id] if model_id else switcher.view.resident()
        unloaded = [m for m in targets if await switcher.unload(m)]
        return JSONResponse({"unloaded": unloaded})

    return router
