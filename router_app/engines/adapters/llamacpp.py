"""llama.cpp's llama-server: 503 `Loading model` on /health until ready, Bearer auth (--api-key)."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from router_app.engines.adapters.base import EngineAdapter, EngineError


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

    async def props(self) -> dict[str, Any]:
        """GET /props: build, model file, context per slot (`default_generation_settings.n_ctx`), `total_slots`
        (tools/server/server-context.cpp get_res_props, b11312)."""
        return await self._json("GET", "/props")

    async def slots(self) -> list[dict[str, Any]]:
        """GET /slots: per slot `id` and, once it served a request, `n_prompt_tokens` (the tokens it holds)
        (server-context.cpp:656-690; on unless --no-slots, b11312)."""
        data = await self._json("GET", "/slots")
        return list(data) if isinstance(data, list) else []

    async def slot_action(self, slot: int, action: str, filename: str) -> dict[str, Any]:
        """POST /slots/{slot}?action=save|restore {"filename": name}, a bare name inside --slot-save-path.

        Answers {"id_slot", "filename", "n_saved"|"n_restored" (tokens), "n_written"|"n_read" (bytes),
        "timings": {"save_ms"|"restore_ms"}}; a busy slot is deferred until idle; an error (no --slot-save-path,
        "Unable to save slot", "Unable to restore slot: ...") comes as an error object
        (server-context.cpp:2526-2640, 4751-4785, 5271-5345; server-task.cpp:1622-1644, b11312).
        """
        return await self._json("POST", f"/slots/{slot}?action={action}", {"filename": filename})

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = await self.client.request(
                method, self.base_url + path, json=body, headers=self.auth_headers(), timeout=None
            )
        except httpx.HTTPError as exc:
            raise EngineError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict | list):
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else response.text[:300]
            raise EngineError(f"{method} {path} answered {response.status_code}: {message}")
        return data
