"""vLLM middleware (`--middleware llm_router_engine_auth.RequireKey`): the engine key on every route.

vLLM's own `--api-key` / `VLLM_API_KEY` guards only paths under /v1, /v2, /inference and /cohere
(vllm 0.32.0 vllm/entrypoints/serve/middleware/authenticate.py:11,59; vllm 0.19.1
vllm/entrypoints/openai/server_utils.py:80, `/v1` only), so /sleep, /wake_up, /is_sleeping
(VLLM_SERVER_DEV_MODE=1), /collective_rpc, /invocations, /tokenize and the rest stay open to every local user.
vLLM adds each `--middleware` class with `app.add_middleware(cls)` (0.32.0 serve/middleware/register.py:65-69,
0.19.1 entrypoints/openai/api_server.py after the auth middleware), so it sits outside vLLM's own auth and sees
every request before any route. It is not guaranteed to be the outermost layer: in 0.32.0 `build_app` calls
`sagemaker_standards_bootstrap(app)` afterwards (launchers/app.py:54-55), which may add middleware of its own
outside this one; that bypasses nothing, since every request still passes through here. It reads the same key
as vLLM (`VLLM_API_KEY`, which the role's start script exports from the unit's credential) and answers like
vLLM's own middleware: 401 `{"error": "Unauthorized"}`.

Standard library only: it is imported inside vLLM's venv from PYTHONPATH, next to nothing of the router.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY_ENV = "VLLM_API_KEY"
_UNAUTHORIZED = json.dumps({"error": "Unauthorized"}).encode()


class RequireKey:
    """Every HTTP and WebSocket request needs `Authorization: Bearer <VLLM_API_KEY>`; no public path."""

    def __init__(self, app: ASGIApp) -> None:
        key = os.environ.get(KEY_ENV, "")
        if not key:
            raise RuntimeError(f"llm_router_engine_auth.RequireKey: {KEY_ENV} is empty; the engine would be open")
        self.app = app
        self._digest = hashlib.sha256(key.encode()).digest()

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return False
                return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_UNAUTHORIZED))],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
