"""How uvicorn serves the router: its httptools protocol with a bound on a request's head, and a graceful shutdown.

httptools (llhttp) buffers a header line whole before it calls back and has no limit of its own, nor does uvicorn
for it: two 128 MiB headers to `GET /health` took the router from 85 to 456 MiB and were answered 200. Here the
bytes of a head (request line and headers) still incomplete are counted as they arrive; past `MAX_HEAD_BYTES` the
client gets `431 Request Header Fields Too Large` and the connection is closed, before any authentication, so the
router holds at most the bound plus one read of the socket.
"""

from __future__ import annotations

import asyncio
import json
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router_app.wire.sse import error_payload

# An idle client connection is closed after this long. uvicorn's 5 s equals httpx's own keep-alive expiry (the
# openai and anthropic SDKs), so the router closed connections just as such clients sent their next request on them
# (a ReadError before any answer; seen in the soak). nginx's default.
KEEP_ALIVE_S = 75

# nginx's default allows 4 × 8 KiB header lines, Node 16 KiB in all: 64 KiB is generous for any API client.
MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses a request head larger than `MAX_HEAD_BYTES` with a 431."""

    max_head_bytes = MAX_HEAD_BYTES

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self._head_complete = False  # the current request's head is complete: its body, if any, is arriving
        self._heads = 0  # heads completed on this connection
        self._messages = 0  # requests (head and body) completed on this connection
        self._head_bytes = 0
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        heads, messages = self._heads, self._messages
        super().data_received(data)
        # Counted only while one head stays incomplete: bytes that completed a head or a request are not part of the
        # next head, which starts within this read at most.
        if (
            (heads, messages) == (self._heads, self._messages)
            and not self._head_complete
            and not self.transport.is_closing()
        ):
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head()

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._heads += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._messages += 1
        self._head_complete = False  # the next request on this connection starts with its head
        self._head_bytes = 0

    def _refuse_head(self) -> None:
        message = f"request line and headers larger than {self.max_head_bytes} bytes"
        body = json.dumps(error_payload(message, "invalid_request_error", "headers_too_large")).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()


class GracefulServer(uvicorn.Server):
    """uvicorn's server that tells the app when its shutdown begins (SIGTERM: it stops accepting, then waits up to
    `timeout_graceful_shutdown`, `router.shutdown_grace_s`, for the responses in flight before it cuts them), so
    that the endless status streams (`/models/sse`, `/console/events`) end instead of holding it to the bound."""

    def __init__(self, config: uvicorn.Config, shutting_down: asyncio.Event) -> None:
        super().__init__(config)
        self._shutting_down = shutting_down

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._shutting_down.set()
        await super().shutdown(sockets)
