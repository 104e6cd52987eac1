"""Wiring only: builds the router (engines, switcher, proxy, routes, reload) from a validated `Config`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from router_app import __version__
from router_app.config import Config, ModelConfig
from router_app.control.switcher import Switcher
from router_app.engines.adapters import adapter_for, control_client
from router_app.engines.instance import EngineInstance
from router_app.engines.slots import SlotBudget, SlotDir, SlotKeeper
from router_app.engines.sockets import SocketDir
from router_app.engines.supervisors import (
    JournalFollower,
    ProcessSupervisor,
    Supervisor,
    SystemdSupervisor,
    default_unit_name,
)
from router_app.events import EventHub, HubLogHandler
from router_app.fleet import Fleet
from router_app.live import Keys, Live, LiveConfig
from router_app.memory.devices import MemoryModel, Nvml
from router_app.memory.history import History
from router_app.memory.warming import PageCacheWarmer, auto_budget, read_meminfo, warm_files
from router_app.metrics import RouterMetrics
from router_app.proxy import Proxy
from router_app.proxy.activity import Activity
from router_app.proxy.upstream import Upstream
from router_app.reload import LiveParts, Reloader
from router_app.web.entry import EntryPoint, key_from
from router_app.web.routes import (
    RouterContext,
    admin_routes,
    console_routes,
    management_routes,
    model_routes,
    status_routes,
)
from router_app.wire.errors import json_error

log = logging.getLogger(__name__)


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


def redact_all(switcher: Switcher, text: str) -> str:
    """A router log line with every engine's keys blanked (a line may quote an engine's command or error)."""
    for runtime in switcher.instances.values():
        text = runtime.redact(text)
    return text


def create_app(config: Config, config_path: Path | None = None, reloadable: bool = False) -> EntryPoint:
    """The router as an ASGI app; engines are adopted on startup and (process supervisor) stopped on exit."""
    settings = config.router
    live = LiveConfig(Live(config, Keys(config)))
    metrics = RouterMetrics()
    hub = EventHub()
    activity = Activity(hub)
    client = control_client()
    sockets = SocketDir()
    kv_budget = SlotBudget(settings.kv_budget)
    journal = JournalFollower()

    def make_runtime(conf: Config, model: ModelConfig) -> EngineInstance:
        supervisor = build_supervisor(conf, model.id)
        adapter = adapter_for(model, client)
        kv_budget.limit = conf.router.kv_budget
        slot_dir = model.slot_directory(conf.router.state_dir) if supervisor is not None else None
        keeper = SlotKeeper(model, SlotDir(slot_dir), kv_budget, conf.router.kv_min_tokens) if slot_dir else None
        runtime = EngineInstance(
            model, adapter, supervisor, conf.router, metrics=metrics, sockets=sockets, slots=keeper
        )

        def engine_line(line: str) -> None:
            runtime.engine_wrote()
            hub.publish("log", source=model.id, line=runtime.redact(line))  # the console's live log

        if isinstance(supervisor, ProcessSupervisor):
            supervisor.on_line = engine_line
        elif isinstance(supervisor, SystemdSupervisor):
            journal.watch(supervisor.unit, engine_line)
        return runtime

    runtimes = {model.id: make_runtime(config, model) for model in config.models}
    budget = settings.page_cache_budget
    warmer = PageCacheWarmer(auto_budget(read_meminfo()) if budget == "auto" else budget, metrics=metrics)
    warmer.set_models({model.id: warm_files(model) for model in config.models})
    upstream = Upstream()
    switcher = Switcher(
        runtimes,
        settings,
        metrics,
        before_evict=upstream.disconnect,
        memory=MemoryModel(config, Nvml.open() if settings.memory.source in ("auto", "nvml") else None),
        history=History(settings.state_dir),
        warmer=warmer,
        events=hub,
    )
    switcher.subscribe(lambda model, status: hub.publish("model", model=model, status=status))
    fleet = Fleet(settings.peers, settings.peer_refresh_s)
    proxy = Proxy(live, switcher, upstream, metrics, fleet, activity)
    context = RouterContext(live, switcher, metrics, fleet)
    reloader = Reloader(LiveParts(live, switcher, make_runtime, Keys, fleet), config_path)
    reloads: set[asyncio.Future[bool]] = set()

    log_handler = HubLogHandler(hub, lambda line: redact_all(switcher, line))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("router_app").addHandler(log_handler)
        await switcher.start()
        warmer.start()
        journal.start()
        log.info(
            "llm-router %s serving %d model(s): %s%s",
            __version__,
            len(config.models),
            ", ".join(m.id for m in config.models),
            f"; peers: {', '.join(f'{p.name} ({p.url})' for p in settings.peers)}" if settings.peers else "",
        )
        loop = asyncio.get_running_loop()

        def reload_now() -> None:
            task = asyncio.ensure_future(reloader.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        if reloadable:  # SIGHUP (systemctl reload) re-reads the config file
            loop.add_signal_handler(signal.SIGHUP, reload_now)
        try:
            yield
        finally:
            if reloadable:
                loop.remove_signal_handler(signal.SIGHUP)
            await warmer.stop()
            await journal.close()
            await switcher.shutdown(stop_engines=settings.supervisor == "process")
            await upstream.close()
            await fleet.close()
            await client.aclose()
            sockets.remove()
            logging.getLogger("router_app").removeHandler(log_handler)

    app = FastAPI(title="llm-router", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        type_ = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return json_error(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return json_error(400, f"invalid request: {exc.errors()}", "invalid_request_error")

    def is_admin(request: Request) -> bool:
        return entry.keys.admin_ok(key_from(request))

    for router in (
        model_routes(context),
        management_routes(context, is_admin),
        status_routes(context),
        admin_routes(context),
        console_routes(context, hub, activity),
    ):
        app.include_router(router)
    entry = EntryPoint(app, proxy, live, shutting_down=context.shutting_down)
    return entry
