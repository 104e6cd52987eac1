"""One small adapter per engine kind; `adapter_for` picks it from the model's backend."""

from __future__ import annotations

import httpx

from ..config import Backend, ModelConfig
from .base import EngineAdapter, EngineError, Health
from .llamacpp import LlamaCppAdapter
from .openai_remote import OpenAIRemoteAdapter
from .sglang import SGLangAdapter
from .tabbyapi import TabbyAPIAdapter
from .vllm import VLLMAdapter

ADAPTERS: dict[Backend, type[EngineAdapter]] = {
    Backend.LLAMACPP: LlamaCppAdapter,
    Backend.SGLANG: SGLangAdapter,
    Backend.TABBYAPI: TabbyAPIAdapter,
    Backend.VLLM: VLLMAdapter,
    Backend.OPENAI: OpenAIRemoteAdapter,
}


def adapter_for(model: ModelConfig, client: httpx.AsyncClient) -> EngineAdapter:
    return ADAPTERS[model.backend](model, client)


__all__ = ["EngineAdapter", "EngineError", "Health", "adapter_for"]
