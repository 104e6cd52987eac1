"""The ASGI entry point uvicorn runs: body size limit, client and admin keys, then the proxied OpenAI calls
straight to the proxy and everything else to the FastAPI app."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from router_app.config import RouterSettings
from router_app.live import Keys, LiveConfig
from router_app.proxy import ROUTES, Proxy
from router_app.proxy.activity import Cancellation
from router_app.wire.errors import is_anthropic_path, json_error

log = logging.getLogger(__name__)


def key_from(request: Request) -> str | None:
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


def is_loopback(name: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name in a Host header, without its port and brackets, lower case: `[::1]:8002` → `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


class EntryPoint:
    """The ASGI app uvicorn runs: the size limit and auth for every request, then the proxied routes straight to
    the proxy (the hot path skips FastAPI's routing and middleware layers: measured in bench/latency.py),
    everything else to the FastAPI app. Pure ASGI, so streamed responses are never buffered."""

    def __init__(self, app: FastAPI, proxy: Proxy, live: LiveConfig, shutting_down: asyncio.Event) -> None:
        self.app = app
        self.proxy = proxy
        self.live = live
        # Set by the server when it stops accepting (SIGTERM): the endless status streams end, answers finish.
        self.shutting_down = shutting_down

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
        denial = self._cross_site(request) if not self.keys.client else None
        if denial is None:
            denial = self._check(request)
        if denial is None:
            denial = self._too_large(request)
        if denial is not None:
            await denial(scope, receive, send)
            return
        path = scope["path"]
        endpoint = ROUTES.get(path)
        if endpoint is None and (scope["method"] not in ("POST", "PUT", "PATCH") or not self._routed(scope)):
            # No body to read, or no route that takes one: FastAPI answers (404/405) without reading it.
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
            cancellation = Cancellation()
            receive = cancellation.wrap(receive)
            request = Request(scope, receive, send)
            try:
                response = await self.proxy.handle(
                    request, endpoint, body, self.keys.label(key_from(request)), cancellation
                )
            except Exception as exc:  # a bug must still answer in the API's shape
                log.exception("proxy failed")
                response = json_error(
                    500,
                    f"internal error: {type(exc).__name__}: {exc}",
                    "server_error",
                    anthropic=is_anthropic_path(path),
                )
        await response(scope, receive, send)

    def _routed(self, scope: Scope) -> bool:
        """Whether one of the app's routes takes this method and path."""
        return any(route.matches(scope)[0] is Match.FULL for route in self.app.router.routes)

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

    def _cross_site(self, request: Request) -> Response | None:
        """A router without client keys would obey any web page its users open: a foreign `Host` (DNS rebinding)
        is refused, and so is a body that is not JSON, the only type a page may send cross-site without the
        browser asking first (a CORS preflight, which the router never grants)."""
        host = host_name(request.headers.get("host", ""))
        allowed = self.settings.allowed_hosts
        if host and not is_loopback(host) and "*" not in allowed and host not in {h.lower() for h in allowed}:
            return json_error(
                403,
                f"host {host!r} not allowed: a router without client keys answers only loopback names and "
                "router.allowed_hosts (or set router.api_key_files)",
                "permission_error",
                code="host_not_allowed",
                anthropic=is_anthropic_path(request.scope["path"]),
            )
        if request.scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return json_error(
                    415,
                    "send Content-Type: application/json (a router without client keys takes no other body type)",
                    "invalid_request_error",
                    code="unsupported_media_type",
                    anthropic=is_anthropic_path(request.scope["path"]),
                )
        return None

    def _check(self, request: Request) -> Response | None:
        path = request.scope["path"]
        anthropic = is_anthropic_path(path)
        presented = key_from(request)
        if path.startswith("/admin/"):
            return self._need_admin(presented)
        controls = path in MODEL_CONTROL or (path.startswith("/console/requests/") and path.endswith("/cancel"))
        if controls and request.scope["method"] == "POST":
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
        needs_client = path.startswith(("/v1/", "/models/", "/console/")) or path in ROUTES or path == "/models"
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
