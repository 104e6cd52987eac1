"""The console's event hub and request activity: ordering, replay, a slow subscriber, cancel as a disconnect."""

from __future__ import annotations

import asyncio
import logging

import pytest

from router_app.events import EventHub, HubLogHandler
from router_app.proxy.activity import Cancellation

pytestmark = pytest.mark.anyio


async def take(subscription, count: int) -> list:
    events = []
    async with asyncio.timeout(5):
        async for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_a_subscriber_gets_the_replayed_kinds_then_every_new_event_in_order() -> None:
    hub = EventHub(keep=10)
    hub.publish("log", source="router", line="before")
    hub.publish("request", request={"id": 1})
    subscription = hub.subscribe(replay_kinds=("log",))
    hub.publish("model", model="a", status="loading")
    hub.publish("model", model="a", status="loaded")
    events = await take(subscription, 3)
    assert [(e.kind, e.data.get("line") or e.data.get("status")) for e in events] == [
        ("log", "before"),
        ("model", "loading"),
        ("model", "loaded"),
    ]
    subscription.close()  # what the route does when its client leaves
    assert hub.subscribers == 0


async def test_a_subscriber_that_falls_behind_loses_the_oldest_events_and_is_told() -> None:
    hub = EventHub(subscriber_limit=3)
    subscription = hub.subscribe()
    for n in range(10):
        hub.publish("log", source="router", line=str(n))
    events = await take(subscription, 4)
    assert events[0].kind == "gap" and events[0].data == {"lost": 7}
    assert [e.data["line"] for e in events[1:]] == ["7", "8", "9"]


async def test_log_records_from_another_thread_reach_the_loop_and_are_redacted() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    logger = logging.getLogger("router_app.test_console")
    handler = HubLogHandler(hub, lambda line: line.replace("sk-secret", "***"))
    logger.addHandler(handler)
    try:
        await asyncio.to_thread(logger.warning, "engine said sk-secret")
        (event,) = await take(subscription, 1)
    finally:
        logger.removeHandler(handler)
    assert event.kind == "log" and event.data["level"] == "warning"
    assert event.data["line"].endswith("engine said ***")


async def test_a_cancel_reads_as_the_client_leaving() -> None:
    arrived: asyncio.Queue[dict] = asyncio.Queue()

    async def receive() -> dict:
        return await arrived.get()

    cancellation = Cancellation()
    wrapped = cancellation.wrap(receive)
    await arrived.put({"type": "http.request", "body": b""})
    assert (await wrapped())["type"] == "http.request"
    waiting = asyncio.ensure_future(wrapped())
    await asyncio.sleep(0)
    assert not waiting.done()
    cancellation.cancel()
    assert (await asyncio.wait_for(waiting, 1))["type"] == "http.disconnect"
    assert (await wrapped())["type"] == "http.disconnect"
