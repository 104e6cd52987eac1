"""Requests in flight and recently finished, for the operator console: what each asked for, how long it waited and
took, its tokens and outcome, and a way to cancel one in flight (`POST /console/requests/{id}/cancel`).

A cancel is delivered as the client's own disconnect: the request's `receive` reports `http.disconnect`, so the
proxy takes the path it takes when a client leaves (a waiting ticket is dropped; an upstream request is closed, and
llama-server stops generating when its connection closes)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message, Receive

from router_app.events import EventHub
from router_app.proxy.parse import Exchange


@dataclass
class RequestRecord:
    """One proxied request as the console shows it (no body, no key: the key's label only)."""

    id: int
    model: str
    api: str
    client: str
    stream: bool
    started: float = field(default_factory=time.time)  # wall clock, for display
    began: float = field(default_factory=time.monotonic)
    waited_s: float | None = None  # until the model was resident (a switch, if it had to load)
    ttft_s: float | None = None  # from arrival to the first byte of the answer
    duration_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    outcome: str = "in_flight"
    cancelled: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "began"}
        for key in ("waited_s", "ttft_s", "duration_s", "tokens_per_s"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        data["started"] = round(self.started, 3)
        return data


class Cancellation:
    """A request's cancel switch: `wrap(receive)` reports a disconnect once `cancel()` was called."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wrap(self, receive: Receive) -> Receive:
        event = self._event

        async def receive_or_cancel() -> Message:
            if event.is_set():
                return {"type": "http.disconnect"}
            message = asyncio.ensure_future(receive())
            cancelled = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({message, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled.cancel()
            if message.done():
                return message.result()
            message.cancel()
            return {"type": "http.disconnect"}

        return receive_or_cancel


class Activity:
    """The requests in flight (with their cancel switches) and the last `keep` finished ones."""

    def __init__(self, hub: EventHub | None = None, keep: int = 200) -> None:
        self.hub = hub
        self._ids = itertools.count(1)
        self.inflight: dict[int, tuple[RequestRecord, Cancellation | None]] = {}
        self.finished: deque[RequestRecord] = deque(maxlen=keep)

    def begin(self, exchange: Exchange, client: str, cancellation: Cancellation | None) -> RequestRecord:
        record = RequestRecord(
            id=next(self._ids),
            model=exchange.model.id,
            api=exchange.endpoint.name,
            client=client,
            stream=exchange.stream,
        )
        self.inflight[record.id] = (record, cancellation)
        if self.hub is not None:
            self.hub.publish("inflight", action="started", request=record.as_dict())
        return record

    def granted(self, record: RequestRecord) -> None:
        if record.waited_s is None:
            record.waited_s = time.monotonic() - record.began

    def first_byte(self, record: RequestRecord) -> None:
        if record.ttft_s is None:
            record.ttft_s = time.monotonic() - record.began

    def end(self, record: RequestRecord, exchange: Exchange, outcome: str) -> None:
        if self.inflight.pop(record.id, None) is None:
            return
        record.duration_s = time.monotonic() - record.began
        record.prompt_tokens = exchange.prompt_tokens
        record.completion_tokens = exchange.completion_tokens
        generating = record.duration_s - (record.ttft_s or record.duration_s)
        if exchange.engine_tokens_per_second:
            record.tokens_per_s = exchange.engine_tokens_per_second
        elif exchange.completion_tokens and generating > 0:
            record.tokens_per_s = exchange.completion_tokens / generating
        record.outcome = "cancelled" if record.cancelled and outcome == "client_gone" else outcome
        self.finished.append(record)
        if self.hub is not None:
            self.hub.publish("inflight", action="ended", id=record.id)
            self.hub.publish("request", request=record.as_dict())

    def cancel(self, request_id: int) -> RequestRecord | None:
        """Cancel a request in flight as if its client had left; None if it is not in flight (or cannot be)."""
        found = self.inflight.get(request_id)
        if found is None or found[1] is None:
            return None
        record, cancellation = found
        record.cancelled = True
        assert cancellation is not None
        cancellation.cancel()
        return record

    def report(self) -> dict[str, Any]:
        return {
            "inflight": [record.as_dict() for record, _ in self.inflight.values()],
            "recent": [record.as_dict() for record in reversed(self.finished)],
        }
