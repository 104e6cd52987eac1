"""The relay's event surgery on a batch (proxy/relay.py, proxy/report.py): only the usage events are cut out and
handed over or read, and the first `data:` payloads are read one at a time, whatever the batch's size; the result
is what splitting the whole batch into events gives (the earlier way, which cost a Python step per event)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from router_app.proxy.relay import data_events, with_usage_events
from router_app.proxy.report import USAGE_OBJECT, observe_usage, take_usage

content = st.builds(
    lambda text: {"id": "c1", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
    st.text(max_size=12),
)
usage = st.builds(
    lambda n, with_choice: {
        "id": "c1",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}] if with_choice else [],
        "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n},
    },
    st.integers(0, 9999),
    st.booleans(),
)
event = st.one_of(
    content.map(lambda d: b"data: " + json.dumps(d).encode()),
    usage.map(lambda d: b"data: " + json.dumps(d, separators=(",", ":")).encode()),
    st.just(b": keep-alive comment"),
    st.just(b"data: [DONE]"),
)
batches = st.lists(event, max_size=12).map(lambda events: b"".join(e + b"\n\n" for e in events))


def mark(block: bytes) -> bytes:
    """A handler that shows what it was given: the event, cut out exactly."""
    return b"<" + block + b">\n\n" if json.loads(block[5:]).get("choices") else b""


def split_whole(batch: bytes) -> bytes:
    return b"".join(mark(b) if USAGE_OBJECT.search(b) else b + b"\n\n" for b in batch.split(b"\n\n") if b)


@given(batches)
def test_only_usage_events_are_handed_over_and_the_rest_is_unchanged(batch: bytes) -> None:
    assert with_usage_events(batch, mark) == split_whole(batch)


@given(batches)
def test_data_payloads_one_at_a_time(batch: bytes) -> None:
    expected = [b[5:] for b in batch.split(b"\n\n") if b.startswith(b"data:")]
    assert list(data_events(batch)) == expected


def test_a_usage_event_first_last_and_alone() -> None:
    u = b'data: {"choices":[],"usage":{"total_tokens":1}}'
    c = b'data: {"choices":[{"delta":{"content":"x"}}]}'
    for events in ([u], [u, c], [c, u], [c, u, c, u]):
        batch = b"".join(e + b"\n\n" for e in events)
        assert with_usage_events(batch, lambda block: b"") == b"".join(e + b"\n\n" for e in events if e != u)


messages_events = st.lists(
    st.one_of(
        st.builds(lambda n: b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":%d}}' % n,
                  st.integers(0, 9999)),
        st.just(b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}'),
        st.just(b'event: ping\ndata: {"type": "ping"}'),
    ),
    max_size=12,
).map(lambda events: b"".join(e + b"\n\n" for e in events))  # fmt: skip


def tokens_counted(read: object, batch: bytes) -> int | None:
    exchange = SimpleNamespace(completion_tokens=None)
    read(exchange, batch)  # type: ignore[operator]
    return exchange.completion_tokens


def split_and_read(exchange: SimpleNamespace, batch: bytes) -> None:
    for block in batch.split(b"\n\n"):
        if USAGE_OBJECT.search(block) and (start := block.find(b"data:")) >= 0:
            take_usage(exchange, json.loads(block[start + 5 :]))  # type: ignore[arg-type]


@given(messages_events)
def test_usage_of_other_apis_read_from_its_events_only(batch: bytes) -> None:
    assert tokens_counted(observe_usage, batch) == tokens_counted(split_and_read, batch)
