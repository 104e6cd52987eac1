"""Waiting on behalf of a client that may leave: disconnect races and a disconnect-aware stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected while we were waiting for something on its behalf."""


class DisconnectAwareStreamingResponse(StreamingResponse):
    """Streams and, at the same time, listens for the client leaving: the body generator is
    closed at once (its `finally` closes the upstream request), not only at the next write."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        on_close: Callable[[], None],
        farewell: Callable[[], bytes | None] | None = None,
        until: asyncio.Event | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close
        # An endless stream (status feeds) ends, properly, once this is set: the server is shutting down and waits
        # for every response to finish.
        self._until = until
        self._ended = False
        # After a disconnect that was not the client's (an operator's cancel, proxy.activity): the last bytes to send
        # before ending the body properly, or None when the client really left.
        self._farewell = farewell

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                async def end_when_told() -> None:
                    assert self._until is not None
                    await self._until.wait()
                    self._ended = True
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                if self._until is not None:
                    group.start_soon(end_when_told)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            self._on_close()
        last = b"" if self._ended else self._farewell() if self._farewell is not None else None
        if last is not None:
            with contextlib.suppress(Exception):  # the client may have left meanwhile after all
                await send({"type": "http.response.body", "body": last, "more_body": False})


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` in this task, but cancel it (raising ClientGone) if the client disconnects first."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(request)
        gone = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await awaitable
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()
