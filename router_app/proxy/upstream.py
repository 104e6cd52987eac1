"""HTTP client for the proxied requests to engines (the hot path).

aiohttp, for its C HTTP parser: relaying a streamed answer costs about 0.5 µs of CPU per event
with it against 1.8 µs with httpx (measured; see docs/benchmarks.md). Control calls to engines
(readiness, sleep/wake) stay on httpx in `router_app.engines.adapters`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from router_app.config import Backend, ModelConfig


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


# What aiohttp 3.9-3.14 passes for a plain-HTTP connection; anything else: aiohttp's own way.
_PLAIN_KWARGS = {"ssl", "server_hostname"}


class DirectConnector(aiohttp.TCPConnector):
    """aiohttp's connector, with a connection to one resolved address opened by the event loop itself.

    aiohttp opens connections through aiohappyeyeballs, which calls `loop.sock_connect`; uvloop 0.23 resolves the
    address again there, without a socket type (loop.pyx:2638-2639), which misses its numeric fast path
    (dns.pyx:190-195) and sends every connect through libuv's thread pool. `loop.create_connection(host, port)`
    takes the fast path and connects in C: about 90 µs less CPU and 120 µs less latency per request to
    llama-server, which gets a new connection for every request (docs/benchmark-history.md). Several addresses,
    TLS or an aiohttp without this hook: aiohttp's own way."""

    async def _wrap_create_connection(  # type: ignore[override]
        self,
        *args: Any,
        addr_infos: list[Any],
        req: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's own hook, called with its timeouts)
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> Any:
        if len(addr_infos) != 1 or kwargs.get("ssl") or self._local_addr_infos or kwargs.keys() - _PLAIN_KWARGS:
            return await super()._wrap_create_connection(
                *args, addr_infos=addr_infos, req=req, timeout=timeout, client_error=client_error, **kwargs
            )
        family, _, proto, _, address = addr_infos[0]
        try:
            async with asyncio.timeout(timeout.sock_connect):
                return await self._loop.create_connection(
                    *args, host=address[0], port=address[1], family=family, proto=proto, **kwargs
                )
        except OSError as exc:
            if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc


# The aiohttp hook DirectConnector overrides, as this aiohttp calls it (checked once, at import).
_HOOK = inspect.signature(aiohttp.TCPConnector._wrap_create_connection).parameters
_HOOKED = {"addr_infos", "req", "timeout"} <= _HOOK.keys()


def _connector(keep_alive: bool, socket: str | None) -> aiohttp.BaseConnector:
    if socket is not None:
        return aiohttp.UnixConnector(socket, limit=0, force_close=not keep_alive)
    return (DirectConnector if _HOOKED else aiohttp.TCPConnector)(limit=0, force_close=not keep_alive)


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


class Engine(Protocol):
    """What the pool needs of an engine instance: its model's definition (for the connection policy), and the
    Unix socket it listens on, if it does."""

    @property
    def model(self) -> ModelConfig: ...

    @property
    def socket(self) -> str | None: ...


class Upstream:
    """A connection pool per engine instance, created inside the running event loop on first use.

    Per instance, so that its idle keep-alive connections can be closed before it is stopped (llama-server
    otherwise lingers about 100 ms on open connections when told to exit), and so that the old engine of a
    reloaded model and the new one under the same name never share a pool.
    """

    def __init__(self) -> None:
        self._sessions: dict[Engine, aiohttp.ClientSession] = {}

    def _client(self, engine: Engine) -> aiohttp.ClientSession:
        session = self._sessions.get(engine)
        if session is None or session.closed:
            policy = connection_policy(engine.model)
            session = aiohttp.ClientSession(
                connector=_connector(policy.keep_alive, engine.socket),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
                auto_decompress=False,  # bytes pass through as the engine sent them
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
            self._sessions[engine] = session
        return session

    async def post(self, engine: Engine, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send a request to `engine` (the instance its ticket was granted); returns once the status and headers
        arrived."""
        try:
            response = await self._client(engine).post(url, data=body, headers=headers)
        except _ERRORS as exc:
            raise _error(exc) from None
        return UpstreamResponse(response)

    async def disconnect(self, engine: Engine) -> None:
        """Close the idle connections to an engine that is about to stop (busy ones close as they finish)."""
        session = self._sessions.pop(engine, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        for engine in list(self._sessions):
            await self.disconnect(engine)
