"""The operator console: the page (`GET /ui`, its script and style, no CDN) and the API behind it, usable without it.

- `GET /console/events`: one SSE stream (`data: {"kind", "seq", "time", …}`) of model status changes, loads,
  evictions, sleeps and wakes (`switch`), log lines of the router and of each engine (`log`), finished requests
  (`request`) and requests in flight (`inflight`). It opens with a `snapshot` (requests in flight and the last
  finished ones), then the recent model, switch and log events (`?replay=0`: none), then each new event.
- `GET /console/activity`: the requests in flight and the last finished ones.
- `GET /console/logs?source=&lines=`: the recent log lines (`source`: `router` or a model's id), oldest first: the
  process supervisor's engine output, or under systemd the engine units' journal.
- `POST /console/requests/{id}/cancel`: end a request in flight as if its client had left (the engine stops
  generating). Who may: `router.model_control`, as for `/models/load` (checked in web.entry).

Reading needs a client key where keys are set, like `/v1`. The page keeps a key in the tab only (sessionStorage,
sent as `Authorization`; no cookie, so no other site can act with it) and runs under a Content-Security-Policy
that allows its own script and style and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from router_app.events import EventHub
from router_app.proxy.activity import Activity
from router_app.web.routes.context import RouterContext
from router_app.wire import sse
from router_app.wire.disconnect import DisconnectAwareStreamingResponse
from router_app.wire.errors import json_error

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}


# Replayed to a new subscriber: what happened just before it came. Requests are in the snapshot instead.
REPLAYED = ("model", "switch", "log")


def _asset(name: str) -> bytes:
    return resources.files("router_app.web").joinpath("console", name).read_bytes()


def console_routes(ctx: RouterContext, hub: EventHub, activity: Activity) -> APIRouter:
    router = APIRouter()
    assets = {path: (_asset(name), media) for path, (name, media) in STATIC.items()}

    def page(path: str) -> Response:
        body, media = assets[path]
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    @router.get("/ui")
    async def ui() -> Response:
        return page("/ui")

    @router.get("/ui/app.js")
    async def ui_script() -> Response:
        return page("/ui/app.js")

    @router.get("/ui/app.css")
    async def ui_style() -> Response:
        return page("/ui/app.css")

    @router.get("/console/events")
    async def events(request: Request, replay: int = 1) -> Response:
        # Subscribed and snapshotted in one step of the event loop: nothing falls between the two.
        subscription = hub.subscribe(REPLAYED if replay else ())
        snapshot = sse.event({"kind": "snapshot", "time": round(time.time(), 3), **activity.report()})

        async def stream() -> AsyncIterator[bytes]:
            yield snapshot
            async for event in subscription:
                yield sse.event(event.as_dict())

        return DisconnectAwareStreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            on_close=subscription.close,
            until=ctx.shutting_down,
        )

    @router.get("/console/activity")
    async def activity_report() -> dict[str, Any]:
        return activity.report()

    @router.get("/console/logs")
    async def logs(source: str | None = None, lines: int = Query(200, ge=1, le=10_000)) -> dict[str, Any]:
        recent = [e for e in hub.recent(("log",)) if source is None or e.data.get("source") == source]
        return {"data": [e.as_dict() for e in recent[-lines:]]}

    @router.post("/console/requests/{request_id}/cancel")
    async def cancel(request: Request, request_id: int) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # A form on another site cannot send this type without the browser asking first (CORS preflight).
            return json_error(415, "send Content-Type: application/json", "invalid_request_error")
        record = activity.cancel(request_id)
        if record is None:
            return json_error(404, f"no request {request_id} in flight", "not_found_error", code="request_not_found")
        return JSONResponse({"cancelled": request_id, "model": record.model})

    return router
