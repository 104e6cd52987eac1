"""Request parsing: strict JSON, per-model parameters, and bytes passed through untouched when nothing changes."""

from __future__ import annotations

import json

import pytest

from router_app.config import parse_config
from router_app.proxy.endpoints import CHAT, DETOKENIZE, MESSAGES, RESPONSES, ROUTES, Kind
from router_app.proxy.parse import BadRequest, Exchange, UnknownModel, decode_json, parse

CONFIG = parse_config(
    {
        "models": [
            {"id": "plain", "backend": "openai", "url": "http://127.0.0.1:9/v1", "aliases": ["p"]},
            {
                "id": "tuned",
                "backend": "openai",
                "url": "http://127.0.0.1:9/v1",
                "defaults": {"max_tokens": 64, "temperature": 0.2},
                "overrides": {"top_p": 0.9},
                "strip": ["logit_bias"],
            },
            {"id": "renamed", "backend": "openai", "url": "http://127.0.0.1:9/v1", "served_name": "engine-name"},
        ]
    }
)


def ok(raw: bytes, endpoint=CHAT) -> Exchange:
    result = parse(raw, endpoint, CONFIG)
    assert isinstance(result, Exchange), bytes(result.body)
    return result


def status(raw: bytes, endpoint=CHAT) -> int:
    result = parse(raw, endpoint, CONFIG)
    assert not isinstance(result, Exchange)
    return (result.response if isinstance(result, UnknownModel) else result).status_code


@pytest.mark.parametrize(
    "raw",
    [
        b"NaN",
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": "\xff"}',
        b'{"a": 1,}',
    ],
)
def test_hostile_json_is_bad_request(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_json(raw)


def test_unchanged_request_passes_as_its_bytes() -> None:
    raw = b'{"model": "plain", "messages": [{"role": "user", "content": "hi \\u00e9"}], "stream": false}'
    assert ok(raw).content is raw
    streamed = b'{"model":"plain","messages":[],"stream":true,"stream_options":{"include_usage":true}}'
    assert ok(streamed).content is streamed
    assert ok(b'{"model":"plain","input":"hi","stream":true}', RESPONSES).content.startswith(b'{"model":"plain"')


def test_changes_are_encoded_once() -> None:
    alias = ok(b'{"model":"p","messages":[]}')
    assert json.loads(alias.content)["model"] == "plain" and alias.requested_name == "p"
    assert json.loads(ok(b'{"model":"renamed","messages":[]}').content)["model"] == "engine-name"
    streamed = json.loads(ok(b'{"model":"plain","messages":[],"stream":true}').content)
    assert streamed["stream_options"] == {"include_usage": True}  # for the speed report


def test_per_model_parameters() -> None:
    body = json.loads(ok(b'{"model":"tuned","messages":[],"temperature":1.0,"top_p":0.1,"logit_bias":{"1":2}}').content)
    assert body == {"model": "tuned", "messages": [], "temperature": 1.0, "top_p": 0.9, "max_tokens": 64}
    responses = json.loads(ok(b'{"model":"tuned","input":"hi"}', RESPONSES).content)
    assert responses["max_output_tokens"] == 64 and "max_tokens" not in responses
    # Not for routes that generate nothing.
    assert ok(b'{"model":"tuned","tokens":[1]}', DETOKENIZE).content == b'{"model":"tuned","tokens":[1]}'


def test_request_shape_checks() -> None:
    assert status(b'{"model":"plain"}') == 400
    assert status(b'{"model":"plain","messages":[],"tools":{}}') == 400
    assert status(b'{"model":"plain","messages":[{"role":"user","content":"\\udc00"}]}') == 400
    assert ok(b'{"model":"plain","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}')
    assert status(b'{"model":"nope","messages":[]}') == 404
    anthropic = parse(b'{"model":"plain","messages":[]}', MESSAGES, CONFIG)
    assert anthropic.status_code == 400
    assert json.loads(bytes(anthropic.body))["error"]["type"] == "invalid_request_error"


def test_route_table_kinds() -> None:
    assert ROUTES["/v1/messages"].anthropic and not ROUTES["/v1/responses"].anthropic
    assert ROUTES["/tokenize"].url("http://e/v1", "http://e") == "http://e/tokenize"
    assert ROUTES["/v1/responses"].url("http://e/v1", "http://e") == "http://e/v1/responses"
    assert ROUTES["/infill"].kind is Kind.RAW and ROUTES["/v1/embeddings"].kind is Kind.UNARY


def test_config_of_new_settings() -> None:
    from router_app.config import ConfigError

    settings = parse_config({"router": {"max_request_size": "8MiB"}, "models": CONFIG.model_dump()["models"][:1]})
    assert settings.router.max_request_size == 8 * 1024 * 1024 and settings.router.model_control == "clients"
    base = {"id": "m", "backend": "openai", "url": "http://h/v1"}
    for bad, words in (
        ({"overrides": {"stream": True}}, "'stream' is the request itself"),
        ({"defaults": {"top_p": 1}, "strip": ["top_p"]}, "both set and stripped: top_p"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_config({"models": [{**base, **bad}]})
    with pytest.raises(ConfigError, match="model_control"):
        parse_config({"router": {"model_control": "everyone"}, "models": [base]})
