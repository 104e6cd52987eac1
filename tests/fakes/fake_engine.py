"""A stand-in for engines that cannot run on a CPU box (SGLang, vLLM, TabbyAPI).

It follows each engine's documented HTTP protocol, as far as the router relies on it
(see ../shared/research/engines-and-ansible.md and the engines' docs):

- vllm: the socket opens only after the model has loaded; `/health` 200; Bearer auth on /v1
  (`--api-key`); sleep mode `POST /sleep?level=1`, `POST /wake_up`, `GET /is_sleeping`.
- sglang: the HTTP server is up while loading and `/health` answers 503 until ready; Bearer auth;
  `POST /release_memory_occupation` / `/resume_memory_occupation` with `{"tags": [...]}`.
- tabbyapi: `/health` is public and up before the model; `GET /v1/model` is 200 only with a model
  loaded; keys from api_tokens.yml in `x-api-key` (or Bearer) and `x-admin-key`; admin-only
  `POST /v1/model/unload` and `POST /v1/model/load` (which streams SSE progress).

Replies are `tok0 tok1 ...` with OpenAI usage. `GET /fake/stats` exposes what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def make_app(args: argparse.Namespace) -> Starlette:
    state = {
        "ready_at": time.monotonic() + (args.load_seconds if args.kind != "vllm" else 0.0),
        "sleeping": False,
        "loaded": args.kind != "tabbyapi" or bool(args.model_name),
        "requests": 0,
        "auth_seen": [],
        "sleeps": 0,
        "wakes": 0,
    }
    api_key, admin_key = args.api_key, None
    if args.api_tokens:
        with open(args.api_tokens, encoding="utf-8") as handle:
            tokens = yaml.safe_load(handle)
        api_key, admin_key = tokens["api_key"], tokens["admin_key"]
    if args.kind == "tabbyapi" and args.model_name:
        state["ready_at"] = time.monotonic() + args.load_seconds

    def ready() -> bool:
        return time.monotonic() >= state["ready_at"]

    def presented(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return request.headers.get("x-api-key")

    def client_denied(request: Request) -> Response | None:
        key = presented(request)
        state["auth_seen"].append(key)
        if api_key and key not in (api_key, admin_key):
            return JSONResponse({"error": {"message": "Invalid API key", "type": "authentication_error"}}, 401)
        return None

    def admin_denied(request: Request) -> Response | None:
        if request.headers.get("x-admin-key") != admin_key:
            return JSONResponse({"detail": "Invalid admin key"}, 401)
        return None

    def loading() -> JSONResponse:
        return JSONResponse({"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}, 503)

    async def health(_request: Request) -> Response:
        if args.kind == "tabbyapi":
            return JSONResponse({"status": "healthy", "issues": []})
        return Response(status_code=200) if ready() else loading()

    async def generate(request: Request) -> Response:
        if args.kind != "tabbyapi" and not ready():
            return loading()
        denied = client_denied(request)
        if denied:
            return denied
        if state["sleeping"] or not state["loaded"] or not ready():
            return JSONResponse({"error": {"message": "model is not loaded", "type": "unavailable_error"}}, 503)
        state["requests"] += 1
        body = await request.json()
        state["last_body"] = body
        chat = request.url.path.endswith("chat/completions")
        n = int(body.get("max_tokens") or 8)
        name = args.model_name or args.served_name
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        if not body.get("stream"):
            text = "".join(f"tok{i} " for i in range(n))
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "length"}
            )
            return JSONResponse(
                {
                    "id": "fake-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [choice],
                    "usage": usage,
                }
            )

        async def events():
            obj = "chat.completion.chunk" if chat else "text_completion"
            for i in range(n):
                delta = {"index": 0, "delta": {"content": f"tok{i} "}} if chat else {"index": 0, "text": f"tok{i} "}
                yield "data: " + json.dumps({"id": "fake-1", "object": obj, "model": name, "choices": [delta]}) + "\n\n"
                await asyncio.sleep(args.token_delay)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield (
                    "data: "
                    + json.dumps({"id": "fake-1", "object": obj, "model": name, "choices": [], "usage": usage})
                    + "\n\n"
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def sleep_(request: Request) -> Response:
        denied = client_denied(request) if args.kind != "tabbyapi" else admin_denied(request)
        if denied:
            return denied
        state["sleeping"] = True
        state["sleeps"] += 1
        return JSONResponse({})

    async def wake(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        state["sleeping"] = False
        state["wakes"] += 1
        return JSONResponse({})

    async def is_sleeping(_request: Request) -> Response:
        return JSONResponse({"is_sleeping": state["sleeping"]})

    async def tabby_model(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        if not state["loaded"] or not ready():
            return JSONResponse({"detail": "No models are currently loaded."}, 400)
        return JSONResponse({"id": args.model_name, "object": "model", "owned_by": "tabbyAPI"})

    async def tabby_unload(request: Request) -> Response:
        denied = admin_denied(request)
        if denied:
            return denied
        state["loaded"] = False
        state["sleeps"] += 1
        return JSONResponse({})

    async def tabby_load(request: Request) -> Response:
        denied = admin_denied(request)
        if denied:
            return denied
        body = await request.json()
        args.model_name = body["model_name"]

        async def progress():
            for module in range(1, 4):
                await asyncio.sleep(args.load_seconds / 3)
                yield (
                    "data: "
                    + json.dumps({"model_type": "model", "module": module, "modules": 3, "status": "processing"})
                    + "\n\n"
                )
            state["loaded"] = True
            state["wakes"] += 1
            yield (
                "data: " + json.dumps({"model_type": "model", "module": 3, "modules": 3, "status": "finished"}) + "\n\n"
            )

        return StreamingResponse(progress(), media_type="text/event-stream")

    async def stats(_request: Request) -> Response:
        return JSONResponse(state)

    routes = [
        Route("/health", health),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/fake/stats", stats),
    ]
    if args.kind == "vllm":
        routes += [
            Route("/sleep", sleep_, methods=["POST"]),
            Route("/wake_up", wake, methods=["POST"]),
            Route("/is_sleeping", is_sleeping),
        ]
    if args.kind == "sglang":
        routes += [
            Route("/release_memory_occupation", sleep_, methods=["POST", "GET"]),
            Route("/resume_memory_occupation", wake, methods=["POST", "GET"]),
        ]
    if args.kind == "tabbyapi":
        routes += [
            Route("/v1/model", tabby_model),
            Route("/v1/model/unload", tabby_unload, methods=["POST"]),
            Route("/v1/model/load", tabby_load, methods=["POST"]),
        ]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["vllm", "sglang", "tabbyapi"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", default="fake")
    parser.add_argument("--model-name", default=None, help="tabbyapi: model loaded at start")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--api-tokens", default=None, help="tabbyapi: api_tokens.yml")
    parser.add_argument("--load-seconds", type=float, default=0.3)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    if args.kind == "vllm":
        time.sleep(args.load_seconds)  # vLLM opens its socket only once the model is loaded
    uvicorn.run(make_app(args), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
