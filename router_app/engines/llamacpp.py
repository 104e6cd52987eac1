"""llama.cpp's llama-server: 503 `Loading model` on /health until ready, Bearer auth (--api-key)."""

from __future__ import annotations

from .base import EngineAdapter


class LlamaCppAdapter(EngineAdapter):
    """All defaults apply; llama-server has no sleep endpoint, so eviction stops the process."""
