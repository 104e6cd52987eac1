"""The router's event feed for the operator console (`GET /console/events`): model status changes, loads and
evictions with their reasons, log lines of the router and of each engine, finished requests and requests in flight.

One `EventHub` per app. Publishing never blocks and never fails: every subscriber has a bounded queue, and one that
falls behind loses its oldest events (it is told how many with a `gap` event) instead of slowing the router. The last
`keep` events are replayed to a new subscriber, so a page opened now shows what happened just before."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("model", "switch", "log", "request", "inflight", "snapshot", "gap")


@dataclass(frozen=True)
class Event:
    """One thing that happened: `kind` (one of KINDS), wall-clock `time`, and what it is about."""

    seq: int
    kind: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "time": round(self.time, 3), **self.data}


class _Subscriber:
    def __init__(self, limit: int) -> None:
        self.queue: deque[Event] = deque()
        self.limit = limit
        self.lost = 0
        self.ready = asyncio.Event()

    def put(self, event: Event) -> None:
        if len(self.queue) >= self.limit:
            self.queue.popleft()
            self.lost += 1
        self.queue.append(event)
        self.ready.set()


class EventHub:
    """Fan-out of events to console subscribers, with the recent past kept for new ones."""

    def __init__(self, keep: int = 500, subscriber_limit: int = 2000) -> None:
        self._recent: deque[Event] = deque(maxlen=keep)
        self._subscribers: set[_Subscriber] = set()
        self._limit = subscriber_limit
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(self, kind: str, **data: Any) -> Event:
        """Record and hand out an event; from another thread (a log record of a worker thread) it is handed over
        to the event loop's thread."""
        event = Event(next(self._seq), kind, data)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._deliver, event)
                return event
        self._deliver(event)
        return event

    def _deliver(self, event: Event) -> None:
        self._recent.append(event)
        for subscriber in self._subscribers:
            subscriber.put(event)

    def recent(self, kinds: Iterable[str] | None = None) -> list[Event]:
        wanted = set(kinds) if kinds is not None else None
        return [e for e in self._recent if wanted is None or e.kind in wanted]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, replay_kinds: Iterable[str] = ()) -> Subscription:
        """A subscription that starts now: the recent events of `replay_kinds` first, then every new event."""
        self._loop = asyncio.get_running_loop()
        subscriber = _Subscriber(self._limit)
        kinds = set(replay_kinds)
        for event in self._recent:
            if event.kind in kinds:
                subscriber.put(event)
        self._subscribers.add(subscriber)
        return Subscription(self, subscriber)


class Subscription:
    """Events for one console client, in order; `close()` (or leaving `async for`) ends it."""

    def __init__(self, hub: EventHub, subscriber: _Subscriber) -> None:
        self._hub = hub
        self._subscriber = subscriber

    def close(self) -> None:
        self._hub._subscribers.discard(self._subscriber)

    async def __aiter__(self) -> AsyncIterator[Event]:
        subscriber = self._subscriber
        try:
            while True:
                if not subscriber.queue:
                    subscriber.ready.clear()
                    await subscriber.ready.wait()
                if subscriber.lost:
                    lost, subscriber.lost = subscriber.lost, 0
                    yield Event(0, "gap", {"lost": lost})
                while subscriber.queue:
                    yield subscriber.queue.popleft()
        finally:
            self.close()


class HubLogHandler(logging.Handler):
    """The router's own log records as `log` events (source `router`), with `redact` applied to each line."""

    def __init__(self, hub: EventHub, redact: Callable[[str], str]) -> None:
        super().__init__(logging.INFO)
        self.hub = hub
        self.redact = redact
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.redact(self.format(record))
        except Exception:  # a log handler must never raise into the code that logs
            return
        self.hub.publish("log", source="router", level=record.levelname.lower(), line=line)
