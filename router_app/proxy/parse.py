"""From request bytes to an `Exchange`: hostile-input checks, model lookup, per-model parameters.

A request that needs no change (model named as the engine knows it, no parameters to apply) goes to the
engine as the client's bytes, without a JSON round trip.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from router_app.config import Config, ModelConfig, StatusStyle
from router_app.proxy.endpoints import Endpoint, Kind
from router_app.wire import sse
from router_app.wire.errors import json_error

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Where an API names a parameter differently from chat completions.
_RENAMED = {Kind.RESPONSES: {"max_tokens": "max_output_tokens"}}


@dataclass
class Exchange:
    """One client request on its way through the router."""

    endpoint: Endpoint
    model: ModelConfig
    requested_name: str
    body: dict[str, Any]
    content: bytes  # what the engine receives
    stream: bool
    client_wants_usage: bool
    text_footer_allowed: bool
    started: float = field(default_factory=time.monotonic)
    # When the request went to the engine: generation time for the speed report is counted from here, not from
    # `started`, which includes any wait for a load (vLLM's usage has no `timings`: a stream after a 57 s cold load
    # showed 0.1 tok/s; real-engines-cpu.md).
    sent: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # of the prompt, taken from the engine's cache (KV continuity's check)
    engine_tokens_per_second: float | None = None
    finished: bool = False
    record: Any = None  # its proxy.activity.RequestRecord, for the console
    cancellation: Any = None  # its proxy.activity.Cancellation (an operator may cancel it)

    @property
    def chat(self) -> bool:
        return self.endpoint.kind is Kind.CHAT

    @property
    def openai_stream(self) -> bool:
        """Chat or legacy completions: the router's status lines, usage and speed report apply."""
        return self.endpoint.kind in (Kind.CHAT, Kind.COMPLETIONS)

    def model_field(self) -> bytes:
        return b'"model":' + json.dumps(self.requested_name).encode()


@dataclass
class UnknownModel:
    """The body names a model this router does not serve: `response` is the 404 (unless a peer serves it)."""

    name: str
    response: Response


class BadRequest(ValueError):
    """The body cannot be used; the message says why (answered 400)."""


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"number {text[:40]} is out of range")
    return value


def decode_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, finite numbers, valid UTF-8, bounded nesting (all errors are BadRequest)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:  # JSONDecodeError, and int() beyond the digit limit
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def encode_json(body: Any) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate escape: keep it escaped
        return json.dumps(body, separators=(",", ":")).encode()
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None


def apply_parameters(body: dict[str, Any], model: ModelConfig, kind: Kind) -> bool:
    """The model's `defaults`, `overrides` and `strip`; returns whether the body changed."""
    renamed = _RENAMED.get(kind, {})
    changed = False
    for key, value in model.defaults.items():
        key = renamed.get(key, key)
        if key not in body:
            body[key] = value
            changed = True
    for key, value in model.overrides.items():
        key = renamed.get(key, key)
        if key not in body or body[key] != value:
            body[key] = value
            changed = True
    for key in model.strip:
        key = renamed.get(key, key)
        if key in body:
            del body[key]
            changed = True
    return changed


def parse(raw: bytes, endpoint: Endpoint, config: Config) -> Exchange | UnknownModel | Response:
    """Validate the body, find the model, apply its parameters; an error response otherwise."""
    anthropic = endpoint.anthropic
    try:
        if not raw.strip():
            raise BadRequest("request body is empty: send a JSON object with 'model'")
        body = decode_json(raw)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
    except BadRequest as exc:
        return json_error(400, str(exc), "invalid_request_error", anthropic=anthropic)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        return json_error(
            400,
            "missing 'model': name one of GET /v1/models",
            "invalid_request_error",
            param="model",
            anthropic=anthropic,
        )
    model = config.find(name)
    if model is None:
        return UnknownModel(
            name,
            json_error(
                404,
                f"The model '{name}' does not exist; see GET /v1/models for the available ones",
                "invalid_request_error",
                code="model_not_found",
                param="model",
                anthropic=anthropic,
            ),
        )
    kind = endpoint.kind
    stream = body.get("stream") is True and kind is not Kind.UNARY
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    changed = False
    if model.engine_name != name:
        body["model"] = model.engine_name
        changed = True
    if endpoint.generates:
        changed = apply_parameters(body, model, kind) or changed
    problem = _shape_problem(body, endpoint)
    if problem is None and _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        problem = "request body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff): not valid Unicode text"
    if problem is not None:
        return json_error(400, problem, "invalid_request_error", anthropic=anthropic)
    if stream and kind in (Kind.CHAT, Kind.COMPLETIONS) and options.get("include_usage") is not True:
        body["stream_options"] = {**options, "include_usage": True}  # for the speed report
        changed = True
    if config.router.status_style is StatusStyle.CONTENT and kind is Kind.CHAT:
        changed = _strip_router_history(body) or changed
    try:
        content = encode_json(body) if changed else raw
    except BadRequest as exc:
        return json_error(400, str(exc), "invalid_request_error", anthropic=anthropic)
    return Exchange(
        endpoint=endpoint,
        model=model,
        requested_name=name,
        body=body,
        content=content,
        stream=stream,
        client_wants_usage=bool(options.get("include_usage")),
        text_footer_allowed=not body.get("tools") and not body.get("response_format") and not body.get("functions"),
    )


def _shape_problem(body: dict[str, Any], endpoint: Endpoint) -> str | None:
    for key, types in endpoint.required:
        if not isinstance(body.get(key), types) or isinstance(body.get(key), bool):
            return f"'{key}' is required ({_type_names(types)})"
    for key, types in endpoint.typed:
        if key in body and body[key] is not None and not isinstance(body[key], types):
            return f"'{key}' must be {_type_names(types)}"
    return None


def _has_lone_surrogate(body: Any) -> bool:
    """Whether any string holds an unpaired surrogate (json.loads joins the valid pairs); engines reject them."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {"list": "an array", "str": "a string", "int": "an integer", "dict": "an object"}
    items = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t.__name__, t.__name__) for t in items)


def _strip_router_history(body: dict[str, Any]) -> bool:
    changed = False
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "assistant" and isinstance(message.get("content"), str):
            stripped = sse.strip_router_lines(message["content"])
            if stripped != message["content"]:
                message["content"] = stripped
                changed = True
    return changed
