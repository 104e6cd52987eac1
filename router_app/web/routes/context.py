"""What the routes read: the config, the engine instances, the switch owner and the metrics."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from router_app.config import Config, ModelConfig
from router_app.control.switcher import Switcher
from router_app.engines.instance import EngineInstance
from router_app.fleet import Fleet, Peer
from router_app.live import LiveConfig
from router_app.metrics import RouterMetrics
from router_app.wire.errors import json_error


@dataclass
class RouterContext:
    live: LiveConfig
    switcher: Switcher
    metrics: RouterMetrics
    fleet: Fleet | None = None
    started: float = field(default_factory=time.time)
    # Set when the server starts its graceful shutdown: endless streams (/models/sse, /console/events) end.
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def config(self) -> Config:
        return self.live.current.config

    @property
    def runtimes(self) -> dict[str, EngineInstance]:
        """The engine instance serving each model's new requests (a reload may have replaced some since)."""
        return self.switcher.view.instances()

    def find(self, name: str) -> ModelConfig | None:
        return self.config.find(name)

    def local_names(self) -> set[str]:
        return {name for model in self.config.models for name in (model.id, *model.aliases)}

    async def peer_entries(self, request: Request) -> list[dict[str, Any]]:
        """The peers' models for a model list (none when another router asks: it wants ours only)."""
        if self.fleet is None or not self.fleet.forwards(request):
            return []
        return await self.fleet.listing(self.local_names())

    async def peer_for(self, request: Request, name: str) -> tuple[Peer, str] | None:
        """The peer that serves `name`, for a model this router does not have."""
        if self.fleet is None or not self.fleet.forwards(request):
            return None
        return await self.fleet.locate(name)

    @staticmethod
    async def body_model(request: Request) -> tuple[object, bool]:
        """The `model` of a `{"model": …}` body (None if absent), and whether the body was valid JSON."""
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, RecursionError):
            return None, False
        return (body.get("model") if isinstance(body, dict) else None), True

    @staticmethod
    def unknown_model(name: str) -> Response:
        return json_error(404, f"The model '{name}' does not exist", "invalid_request_error", code="model_not_found")

    def model_health(self, model_id: str) -> dict[str, Any]:
        runtime = self.runtimes[model_id]
        data: dict[str, Any] = {
            "id": model_id,
            **runtime.info(),
            "inflight": self.switcher.view.inflight(model_id),
        }
        if self.switcher.view.manages(model_id):
            data["phase"] = self.switcher.view.phase(model_id).value
            estimate = self.switcher.view.load_estimate(model_id)
            if estimate is not None:
                data["median_load_s"] = round(estimate, 6)
            if self.switcher.view.pinned(model_id):
                data["pinned"] = True
            idle = self.switcher.view.idle_unload_in(model_id)
            if idle is not None:
                data["idle_unload_in_s"] = round(idle, 1)
        return data
