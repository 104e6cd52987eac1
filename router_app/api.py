"""HTTP routes: the OpenAI API, health/status, admin load/unload, metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import __version__
from .config import Config, ModelConfig, RouterSettings
from .engines import adapter_for
from .errors import is_anthropic_path, json_error
from .fleet import Fleet
from .history import History
from .live import Keys, Live, LiveConfig
from .memory import MemoryModel, Nvml
from .metrics import RouterMetrics
from .proxy import ROUTES, Proxy
from .reload import LiveParts, Reloader
from .routes import RouterContext, admin_routes, management_routes, model_routes, status_routes
from .runtime import ModelRuntime
from .supervisor import ProcessSupervisor, Supervisor, SystemdSupervisor, default_unit_name
from .switcher import Switcher
from .upstream import Upstream, connection_policy

log = logging.getLogger(__name__)


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


class BodyTooLarge(Exception):
    """The request body is larger than `router.max_request_size`."""


class ClientLeft(Exception):
    """The client disconnected while sending its body."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, counted as it arrives: stops reading (BodyTooLarge) once it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then the client's further messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


MODEL_CONTROL = ("/models/load", "/models/unload")


class EntryPoint:
    """The ASGI app uvicorn runs: the size limit and auth for every request, then the proxied routes straight to
    the proxy (the hot path skips FastAPI's routing and middleware layers: measured in bench/latency.py),
    everything else to the FastAPI app. Pure ASGI, so streamed responses are never buffered."""

    def __init__(self, app: FastAPI, proxy: Proxy, live: LiveConfig) -> None:
        self.app = app
        self.proxy = proxy
        self.live = live
        self.reloader: Reloader | None = None  # set by create_app: config reload on SIGHUP

    @property
    def keys(self) -> Keys:
        return self.live.current.keys

    @property
    def settings(self) -> RouterSettings:
        return self.live.current.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        denial = self._check(request)
        if denial is None:
            denial = self._too_large(request)
        if denial is not None:
            await denial(scope, receive, send)
            return
        path = scope["path"]
        endpoint = ROUTES.get(path)
        if scope["method"] not in ("POST", "PUT", "PATCH") and endpoint is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.settings.max_request_size)
        except BodyTooLarge:
            await self._size_error(path)(scope, receive, send)
            return
        except ClientLeft:
            return
        if endpoint is None:
            await self.app(scope, _replay(body, receive), send)
            return
        if scope["method"] != "POST":
            response = json_error(
                405, f"use POST for {path}", "invalid_request_error", anthropic=is_anthropic_path(path)
            )
        else:
            try:
                response = await self.proxy.handle(request, endpoint, body)
            except Exception as exc:  # a bug must still answer in the API's shape
                log.exception("proxy failed")
                response = json_error(
                    500,
                    f"internal error: {type(exc).__name__}: {exc}",
                    "server_error",
                    anthropic=is_anthropic_path(path),
                )
        await response(scope, receive, send)

    def _size_error(self, path: str) -> Response:
        limit = self.settings.max_request_size
        return json_error(
            413,
            f"request body larger than {limit} bytes (router.max_request_size)",
            "invalid_request_error",
            code="request_too_large",
            anthropic=is_anthropic_path(path),
        )

    def _too_large(self, request: Request) -> Response | None:
        """Refuse by Content-Length before reading anything."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_request_size:
            return self._size_error(request.scope["path"])
        return None

    def _check(self, request: Request) -> Response | None:
        path = request.scope["path"]
        anthropic = is_anthropic_path(path)
        presented = _key_from(request)
        if path.startswith("/admin/"):
            return self._need_admin(presented)
        if path in MODEL_CONTROL and request.scope["method"] == "POST":
            control = self.settings.model_control
            if control == "none":
                return json_error(
                    403,
                    "loading and unloading through /models is off: router.model_control is 'none'",
                    "permission_error",
                    code="model_control_disabled",
                )
            if control == "admin":
                return self._need_admin(presented)
        needs_client = path.startswith("/v1/") or path in ROUTES or path == "/models" or path.startswith("/models/")
        if needs_client and not self.keys.client_ok(presented):
            return json_error(
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                "authentication_error",
                code="invalid_api_key",
                anthropic=anthropic,
            )
        return None

    def _need_admin(self, presented: str | None) -> Response | None:
        if self.keys.admin is None:
            return json_error(
                403,
                "admin API disabled: set router.admin_key_file in the config",
                "permission_error",
                code="admin_disabled",
            )
        if not self.keys.admin_ok(presented):
            return json_error(
                401,
                "admin key required (Authorization: Bearer ADMIN_KEY)",
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


def create_app(config: Config, config_path: Path | None = None, reloadable: bool = False) -> EntryPoint:
    """The router as an ASGI app; engines are adopted on startup and (process supervisor) stopped on exit."""
    settings = config.router
    live = LiveConfig(Live(config, Keys(config)))
    metrics = RouterMetrics()
    # Control calls to engines (readiness, sleep/wake): no keep-alive, because llama-server lingers about
    # 100 ms on exit while an idle connection is open, which every switch would pay.
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
    )

    def make_runtime(conf: Config, model: ModelConfig) -> ModelRuntime:
        return ModelRuntime(
            model, adapter_for(model, client), build_supervisor(conf, model.id), conf.router, metrics=metrics
        )

    runtimes = {model.id: make_runtime(config, model) for model in config.models}
    upstream = Upstream({m.id: connection_policy(m) for m in config.models})
    switcher = Switcher(
        runtimes,
        settings,
        metrics,
        before_evict=upstream.disconnect,
        on_rename=upstream.rename,
        memory=MemoryModel(config, Nvml.open() if settings.memory.source in ("auto", "nvml") else None),
        history=History(settings.state_dir),
    )
    fleet = Fleet(settings.peers, settings.peer_refresh_s)
    proxy = Proxy(live, switcher, upstream, metrics, fleet)
    context = RouterContext(live, runtimes, switcher, metrics, fleet)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await switcher.start()
        log.info(
            "llm-router %s serving %d model(s): %s%s",
            __version__,
            len(config.models),
            ", ".join(m.id for m in config.models),
            f"; peers: {', '.join(f'{p.name} ({p.url})' for p in settings.peers)}" if settings.peers else "",
        )
        loop = asyncio.get_running_loop()

        def reload_now() -> None:
            if entry.reloader is not None:
                task = asyncio.ensure_future(entry.reloader.reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

        if reloadable:  # SIGHUP (systemctl reload) re-reads the config file
            loop.add_signal_handler(signal.SIGHUP, reload_now)
        try:
            yield
        finally:
            if reloadable:
                loop.remove_signal_handler(signal.SIGHUP)
            await switcher.shutdown(stop_engines=settings.supervisor == "process")
            await upstream.close()
            await fleet.close()
            await client.aclose()

    app = FastAPI(title="llm-router", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        type_ = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return json_error(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return json_error(400, f"invalid request: {exc.errors()}", "invalid_request_error")

    def is_admin(request: Request) -> bool:
        return entry.keys.admin_ok(_key_from(request))

    for router in (
        model_routes(context),
        management_routes(context, is_admin),
        status_routes(context),
        admin_routes(context),
    ):
        app.include_router(router)
    entry = EntryPoint(app, proxy, live)
    reloads: set[asyncio.Future[bool]] = set()
    parts = LiveParts(live, switcher, upstream, make_runtime, Keys, fleet)
    entry.reloader = Reloader(parts, config_path)
    return entry
