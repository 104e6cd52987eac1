"""llama.cpp's llama-server: 503 `Loading model` on /health until ready, Bearer auth (--api-key)."""

from __future__ import annotations

from typing import ClassVar

from router_app.engines.adapters.base import EngineAdapter


class LlamaCppAdapter(EngineAdapter):
    """Defaults apply; llama-server has no sleep endpoint, so eviction stops the process.

    `/health` is 200 only once the model is loaded: llama-server (b11312) starts its HTTP server first,
    answers every route with 503 "Loading model" from `middleware_server_state` until `is_ready` is set
    (tools/server/server-http.cpp:307-325), and sets it right after `load_model()` succeeded
    (tools/server/server.cpp:474-482). So no generation probe after it, and no sampled one either: nothing is
    compiled at first use (the role builds SASS for the host's GPUs), and an embedding-only model cannot generate.
    """

    health_means_loaded: ClassVar[bool] = True
    samples_on_load: ClassVar[bool] = False
