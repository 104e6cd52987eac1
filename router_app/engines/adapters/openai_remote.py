"""An already-running OpenAI-compatible endpoint (another server, a cloud API): no lifecycle."""

from __future__ import annotations

import httpx

from router_app.config import ModelConfig
from router_app.engines.adapters.base import EngineAdapter, Health


class OpenAIRemoteAdapter(EngineAdapter):
    """`url` is the remote base (ending in /v1); requests pass through with its API key."""

    def __init__(self, model: ModelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(model, client)
        self.base_url = (model.url or "").rstrip("/")

    @property
    def openai_base(self) -> str:
        return self.base_url

    async def health(self) -> Health:
        return Health.READY

    async def probe_generation(self) -> Health:
        return Health.READY
