"""HTTP routes: the OpenAI API, health/status, admin load/unload, metrics."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from . import __version__
from .config import Config, ConfigError, read_keys, read_secret
from .engines import adapter_for
from .metrics import CONTENT_TYPE_LATEST, RouterMetrics
from .proxy import CHAT, COMPLETIONS, EMBEDDINGS, Proxy, json_error
from .runtime import ModelRuntime, SwitchError
from .supervisor import ProcessSupervisor, Supervisor, SystemdSupervisor, default_unit_name
from .upstream import Upstream

log = logging.getLogger(__name__)


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


class Keys:
    """Client keys (any of them opens /v1) and the admin key (load/unload; also a client key)."""

    def __init__(self, config: Config) -> None:
        settings = config.router
        try:
            self.client = read_keys(settings.api_key_files)
            self.admin = read_secret(settings.admin_key_file)
        except OSError as exc:
            raise ConfigError("router.api_key_files/admin_key_file", [f"cannot read key file: {exc}"]) from None
        if settings.admin_key_file is not None and not self.admin:
            raise ConfigError(str(settings.admin_key_file), ["router.admin_key_file: the file holds no key"])

    def client_ok(self, presented: str | None) -> bool:
        if not self.client:
            return True
        return presented is not None and (
            any(secrets.compare_digest(presented, key) for key in self.client)
            or (self.admin is not None and secrets.compare_digest(presented, self.admin))
        )

    def admin_ok(self, presented: str | None) -> bool:
        return self.admin is not None and presented is not None and secrets.compare_digest(presented, self.admin)


PROXY_ROUTES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/v1/embeddings": EMBEDDINGS}


class EntryPoint:
    """The ASGI app uvicorn runs: auth for every request, then the OpenAI proxy routes straight to the
    proxy (the hot path skips FastAPI's routing and middleware layers: measured in bench/latency.py),
    everything else to the FastAPI app. Pure ASGI, so streamed responses are never buffered."""

    def __init__(self, app: FastAPI, proxy: Proxy, keys: Keys) -> None:
        self.app = app
        self.proxy = proxy
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        denial = self._check(request)
        if denial is not None:
            await denial(scope, receive, send)
            return
        endpoint = PROXY_ROUTES.get(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            response = json_error(405, f"use POST for {scope['path']}", "invalid_request_error")
        else:
            try:
                response = await self.proxy.handle(request, endpoint)
            except Exception as exc:  # a bug must still answer in OpenAI shape
                log.exception("proxy failed")
                response = json_error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        await response(scope, receive, send)

    def _check(self, request: Request) -> Response | None:
        path = request.scope["path"]
        if path.startswith("/admin/"):
            if self.keys.admin is None:
                return json_error(
                    403,
                    "admin API disabled: set router.admin_key_file in the config",
                    "permission_error",
                    code="admin_disabled",
                )
            if not self.keys.admin_ok(_key_from(request)):
                return json_error(
                    401,
                    "admin key required (Authorization: Bearer ADMIN_KEY)",
                    "authentication_error",
                    code="invalid_api_key",
                )
        elif path.startswith("/v1/") and not self.keys.client_ok(_key_from(request)):
            return json_error(
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                "authentication_error",
                code="invalid_api_key",
            )
        return None


def build_supervisor(config: Config, model_id: str) -> Supervisor | None:
    model = next(m for m in config.models if m.id == model_id)
    settings = config.router
    if not model.local:
        return None
    if settings.supervisor == "systemd":
        return SystemdSupervisor(model.unit or default_unit_name(model.id), systemctl=settings.systemctl)
    return ProcessSupervisor(
        model.id, stop_timeout_s=settings.stop_timeout_s, log_lines=settings.log_lines, workdir=model.workdir
    )


def create_app(config: Config) -> EntryPoint:
    """The router as an ASGI app; engines are adopted on startup and (process supervisor) stopped on exit."""
    from .switcher import Switcher

    settings = config.router
    keys = Keys(config)
    metrics = RouterMetrics()
    # Control calls to engines (readiness, sleep/wake): no keep-alive, because llama-server lingers about
    # 100 ms on exit while an idle connection is open, which every switch would pay.
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
    )
    runtimes = {
        model.id: ModelRuntime(
            model,
            adapter_for(model, client),
            build_supervisor(config, model.id),
            settings,
            metrics=metrics,
        )
        for model in config.models
    }
    upstream = Upstream()
    switcher = Switcher(runtimes, settings.drain_timeout_s, metrics, before_evict=upstream.disconnect)
    proxy = Proxy(config, switcher, upstream, metrics)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await switcher.start()
        log.info(
            "llm-router %s serving %d model(s): %s",
            __version__,
            len(config.models),
            ", ".join(m.id for m in config.models),
        )
        try:
            yield
        finally:
            await switcher.shutdown(stop_engines=settings.supervisor == "process")
            await upstream.close()
            await client.aclose()

    app = FastAPI(title="llm-router", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        type_ = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return json_error(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return json_error(400, f"invalid request: {exc.errors()}", "invalid_request_error")

    # --- OpenAI API ----------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = []
        for model in config.models:
            runtime = runtimes[model.id]
            data.append(
                {
                    "id": model.id,
                    "object": "model",
                    "created": int(started),
                    "owned_by": "llm-router",
                    "backend": model.backend.value,
                    "state": runtime.state.value,
                    "aliases": model.aliases,
                    "group": model.group,
                    **({"description": model.description} if model.description else {}),
                }
            )
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        model = config.find(model_id)
        if model is None:
            return json_error(
                404, f"The model '{model_id}' does not exist", "invalid_request_error", code="model_not_found"
            )
        return JSONResponse(
            {
                "id": model.id,
                "object": "model",
                "created": int(started),
                "owned_by": "llm-router",
                "backend": model.backend.value,
                "state": runtimes[model.id].state.value,
            }
        )

    # --- status --------------------------------------------------------------------------

    def _model_health(model_id: str) -> dict[str, Any]:
        runtime = runtimes[model_id]
        return {"id": model_id, **runtime.info(), "inflight": switcher.scheduler.inflight(model_id)}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        current = switcher.current()
        backends: dict[str, dict[str, int]] = {}
        for model in config.models:
            states = backends.setdefault(model.backend.value, {})
            state = runtimes[model.id].state.value
            states[state] = states.get(state, 0) + 1
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - started, 1),
            "current": [m for m in current.values() if m],
            "groups": current,
            "switching": switcher.switching(),
            "backends": backends,
            "models": [_model_health(m.id) for m in config.models],
        }

    @app.get("/health/all")
    async def health_all() -> dict[str, Any]:
        return {"models": {m.id: _model_health(m.id) for m in config.models}}

    @app.get("/health/{model_id:path}")
    async def health_model(model_id: str) -> Response:
        model = config.find(model_id)
        if model is None:
            return json_error(
                404, f"The model '{model_id}' does not exist", "invalid_request_error", code="model_not_found"
            )
        return JSONResponse(_model_health(model.id))

    @app.get("/running")
    async def running() -> dict[str, Any]:
        return {
            "running": [
                _model_health(m.id)
                for m in config.models
                if runtimes[m.id].supervisor is not None and runtimes[m.id].state.value != "stopped"
            ]
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # --- admin ---------------------------------------------------------------------------

    async def _admin_model(request: Request, required: bool) -> tuple[str | None, Response | None]:
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return None, json_error(400, "request body is not valid JSON", "invalid_request_error")
        name = body.get("model") if isinstance(body, dict) else None
        if name is None and not required:
            return None, None
        model = config.find(name) if isinstance(name, str) else None
        if model is None:
            return None, json_error(
                404 if name else 400,
                f"unknown model {name!r}",
                "invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return model.id, None

    @app.post("/admin/load")
    async def admin_load(request: Request) -> Response:
        model_id, error = await _admin_model(request, required=True)
        if error is not None or model_id is None:
            return error or json_error(400, "missing 'model'", "invalid_request_error")
        try:
            await switcher.load(model_id)
        except SwitchError as exc:
            return json_error(503, str(exc), "service_unavailable", code="model_load_failed")
        return JSONResponse({"loaded": model_id, **_model_health(model_id)})

    @app.post("/admin/unload")
    async def admin_unload(request: Request) -> Response:
        model_id, error = await _admin_model(request, required=False)
        if error is not None:
            return error
        targets = [model_id] if model_id else [m for m in switcher.current().values() if m]
        unloaded = [m for m in targets if await switcher.unload(m)]
        return JSONResponse({"unloaded": unloaded})

    return EntryPoint(app, proxy, keys)
