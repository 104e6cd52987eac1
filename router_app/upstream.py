"""HTTP client for the proxied requests to engines (the hot path).

aiohttp, for its C HTTP parser: relaying a streamed answer costs about 0.5 µs of CPU per event
with it against 1.8 µs with httpx (measured; see docs/benchmarks.md). Control calls to engines
(readiness, sleep/wake) stay on httpx in `router_app.engines`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from .config import Backend, ModelConfig


@dataclass(frozen=True)
class ConnectionPolicy:
    """How the proxy holds connections to one engine."""

    keep_alive: bool


def connection_policy(model: ModelConfig) -> ConnectionPolicy:
    """No keep-alive to llama-server; keep-alive to the Python engines (vLLM, SGLang, TabbyAPI: uvicorn/asyncio).

    llama-server serves each connection on one thread of a pool and keeps an idle keep-alive connection for 5 s
    (cpp-httplib, vendored in b11312: `CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND 5`; `ThreadPool::enqueue` adds a
    thread only when none is idle at that instant), so idle pooled connections made requests wait 5 s behind
    parked threads: the stalls after every switch (docs/benchmarks.md). A pool capped below its fixed threads
    (max(n_parallel + 4, cores - 1), server-http.cpp:149-152) would avoid that, but llama-server b11312 closes
    connections after streamed answers although it announces keep-alive, and a capped pool hands such a
    connection on at once: 30-45 % of mixed
    requests failed with "Cannot write to closing transport" (reproduced with aiohttp alone). One connection per
    request costs about 0.6 ms (bench/latency.py) and fails nothing."""
    return ConnectionPolicy(keep_alive=model.backend is not Backend.LLAMACPP)


class UpstreamError(Exception):
    """The engine could not be reached or broke the connection."""

    def __init__(self, message: str, *, connect_failed: bool) -> None:
        super().__init__(message)
        self.connect_failed = connect_failed


def _error(exc: BaseException) -> UpstreamError:
    connect_failed = isinstance(exc, aiohttp.ClientConnectorError)
    text = str(exc) or "connection lost"
    return UpstreamError(f"{type(exc).__name__}: {text}", connect_failed=connect_failed)


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class UpstreamResponse:
    """An engine's response whose body has not been read yet."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            body = await self._response.read()
        except _ERRORS as exc:
            self._response.close()
            raise _error(exc) from None
        except BaseException:  # cancelled (the client left): drop the connection
            self._response.close()
            raise
        self._response.release()
        return body

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (no decoding, no re-chunking)."""
        try:
            async for piece in self._response.content.iter_any():
                yield piece
        except _ERRORS as exc:
            raise _error(exc) from None

    def close(self, *, finished: bool) -> None:
        """Give the connection back when the answer was read to the end; else drop it, so the engine
        sees the client leave and stops generating."""
        if finished:
            self._response.release()
        else:
            self._response.close()


class Upstream:
    """A connection pool per engine, created inside the running event loop on first use.

    Per engine, so that its idle keep-alive connections can be closed before it is stopped:
    llama-server otherwise lingers about 100 ms on open connections when told to exit.
    """

    def __init__(self, policies: dict[str, ConnectionPolicy] | None = None) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._policies = policies or {}

    def _client(self, engine: str) -> aiohttp.ClientSession:
        session = self._sessions.get(engine)
        if session is None or session.closed:
            policy = self._policies.get(engine, ConnectionPolicy(keep_alive=True))
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=not policy.keep_alive),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
                auto_decompress=False,  # bytes pass through as the engine sent them
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
            self._sessions[engine] = session
        return session

    async def post(self, engine: str, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send a request to `engine` (a model id); returns once the status and headers arrived."""
        try:
            response = await self._client(engine).post(url, data=body, headers=headers)
        except _ERRORS as exc:
            raise _error(exc) from None
        return UpstreamResponse(response)

    def set_policy(self, engine: str, policy: ConnectionPolicy) -> None:
        self._policies[engine] = policy

    def rename(self, engine: str, new_name: str) -> None:
        """A retiring engine keeps its pool under its new name; the model's name gets a fresh one."""
        if engine in self._sessions:
            self._sessions[new_name] = self._sessions.pop(engine)
        if engine in self._policies:
            self._policies[new_name] = self._policies[engine]

    async def disconnect(self, engine: str) -> None:
        """Close the idle connections to an engine that is about to stop (busy ones close as they finish)."""
        session = self._sessions.pop(engine, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        for engine in list(self._sessions):
            await self.disconnect(engine)
