"""One small adapter per engine kind; `adapter_for` picks it from the model's backend."""

from __future__ import annotations

import httpx

from router_app.config import Backend, ModelConfig
from router_app.engines.adapters.base import EngineAdapter, EngineError, Health, control_client
from router_app.engines.adapters.llamacpp import LlamaCppAdapter
from router_app.engines.adapters.openai_remote import OpenAIRemoteAdapter
from router_app.engines.adapters.sglang import SGLangAdapter
from router_app.engines.adapters.tabbyapi import TabbyAPIAdapter
from router_app.engines.adapters.vllm import VLLMAdapter

ADAPTERS: dict[Backend, type[EngineAdapter]] = {
    Backend.LLAMACPP: LlamaCppAdapter,
    Backend.SGLANG: SGLangAdapter,
    Backend.TABBYAPI: TabbyAPIAdapter,
    Backend.VLLM: VLLMAdapter,
    Backend.OPENAI: OpenAIRemoteAdapter,
}


def adapter_for(model: ModelConfig, client: httpx.AsyncClient) -> EngineAdapter:
    return ADAPTERS[model.backend](model, client)


__all__ = ["EngineAdapter", "EngineError", "Health", "adapter_for", "control_client"]
