"""The proxy's connections to engines: opened by the event loop itself (no thread-pool hop), failures typed."""

from __future__ import annotations

import asyncio

import pytest

from router_app.proxy.upstream import DirectConnector, Upstream, UpstreamError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """uvloop, as uvicorn runs the router: the thread-pool hop is in its `sock_connect`."""
    return "asyncio", {"use_uvloop": True}


class Engine:
    def __init__(self, socket: str | None = None) -> None:
        from router_app.config import ModelConfig

        self.model = ModelConfig(id="m", backend="llamacpp", port=1, command=["x"])  # no keep-alive, as llama-server
        self.socket = socket


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    writer.close()


async def test_a_request_connects_through_the_loop_without_sock_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    async def no_sock_connect(*_args: object) -> None:
        raise AssertionError("sock_connect: the path that resolves again in uvloop's thread pool")

    monkeypatch.setattr(loop, "sock_connect", no_sock_connect)
    upstream, engine = Upstream(), Engine()
    assert isinstance(upstream._client(engine).connector, DirectConnector)
    for _ in range(3):  # a new connection each time (llama-server: no keep-alive)
        response = await upstream.post(engine, f"http://127.0.0.1:{port}/v1/chat", b"{}", {})
        assert response.status == 200 and await response.read() == b"{}"
    await upstream.close()
    server.close()


async def test_a_refused_connection_is_a_connect_failure() -> None:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    upstream = Upstream()
    with pytest.raises(UpstreamError) as failed:
        await upstream.post(Engine(), f"http://127.0.0.1:{port}/v1/chat", b"{}", {})
    assert failed.value.connect_failed, "the proxy marks the engine unreachable only on a connect failure"
    await upstream.close()


async def test_an_engine_on_a_unix_socket_is_reached_there(tmp_path) -> None:
    path = str(tmp_path / "engine.sock")
    server = await asyncio.start_unix_server(answer, path)
    upstream, engine = Upstream(), Engine(socket=path)
    for _ in range(3):  # the URL's host and port are not where it goes
        response = await upstream.post(engine, "http://localhost/v1/chat", b"{}", {})
        assert response.status == 200 and await response.read() == b"{}"
    await upstream.close()
    server.close()
