"""The proxy sends a granted request to the engine instance its ticket was granted (and through that instance's own
connection pool), whatever its name maps to now."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from router_app.config import Backend
from router_app.proxy.handler import Proxy
from router_app.proxy.upstream import Upstream, UpstreamError

pytestmark = pytest.mark.anyio


def engine(port: int) -> SimpleNamespace:
    adapter = SimpleNamespace(
        auth_headers=lambda: {}, openai_base=f"http://127.0.0.1:{port}/v1", base_url=f"http://127.0.0.1:{port}"
    )
    return SimpleNamespace(adapter=adapter)


class RecordingUpstream:
    def __init__(self, fail: bool = False) -> None:
        self.urls: list[str] = []
        self.fail = fail

    async def post(self, engine: object, url: str, content: bytes, headers: dict[str, str]) -> str:
        self.urls.append(url)
        if self.fail:
            raise UpstreamError("connection refused", connect_failed=True)
        return "answer"


def proxy_with(runtimes: dict, upstream: RecordingUpstream, unreachable: list) -> Proxy:
    switcher = SimpleNamespace(runtimes=runtimes, mark_unreachable=unreachable.append)
    return Proxy(SimpleNamespace(router=None), switcher, upstream, metrics=None)  # type: ignore[arg-type]


EXCHANGE = SimpleNamespace(
    model=SimpleNamespace(id="m"),
    endpoint=SimpleNamespace(url=lambda openai, base: openai + "/chat/completions"),
    content=b"{}",
    sent=None,
)


async def test_a_request_granted_before_a_reload_reaches_the_old_engine() -> None:
    old, new, upstream, unreachable = engine(1), engine(2), RecordingUpstream(), []
    proxy = proxy_with({"m": new}, upstream, unreachable)  # the reload put a new engine under m's name
    assert await proxy._send(EXCHANGE, SimpleNamespace(runtime=old)) == "answer"
    assert upstream.urls == ["http://127.0.0.1:1/v1/chat/completions"]


async def test_an_unreachable_engine_is_the_one_the_request_was_sent_to() -> None:
    old, new, upstream, unreachable = engine(1), engine(2), RecordingUpstream(fail=True), []
    proxy = proxy_with({"m": new}, upstream, unreachable)
    ticket = SimpleNamespace(runtime=old)
    with pytest.raises(UpstreamError) as failed:
        await proxy._send(EXCHANGE, ticket)
    proxy._upstream_failed(EXCHANGE, ticket, failed.value)
    assert unreachable == [old]


class Instance:
    """An engine instance as the pool sees it: identity and its model's definition."""

    def __init__(self, model_id: str) -> None:
        self.model = SimpleNamespace(id=model_id, backend=Backend.VLLM)
        self.socket = None


async def test_the_old_and_new_engine_of_a_reloaded_model_never_share_a_pool() -> None:
    upstream = Upstream()
    old, new = Instance("m"), Instance("m")
    old_pool, new_pool = upstream._client(old), upstream._client(new)
    assert old_pool is not new_pool
    await upstream.disconnect(old)  # the old engine is about to stop
    assert old_pool.closed and not new_pool.closed
    assert upstream._client(new) is new_pool
    await upstream.close()
