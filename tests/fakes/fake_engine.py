"""A stand-in for engines that cannot run on a CPU box (SGLang, vLLM, TabbyAPI).

It answers what each engine answers, as far as the router relies on it (sources read at the
versions the role pins; see /work/shared/research/engine-audit.md):

- vllm (0.32.0, the role's CUDA 13 pin; tests/engine_code runs the real one): the socket opens only after the model
  has loaded; `/health` 200; sleep mode (registered with VLLM_SERVER_DEV_MODE=1; 0.32.0
  entrypoints/serve/dev/sleep/api_router.py:26-61): `POST /sleep?level=N` with N an int 0..2 (default 1)
  -> `{"status": "sleeping", "level": N}`, `POST /wake_up` -> `{"status": "awake", "tags": null}`,
  `GET /is_sleeping` -> `{"is_sleeping": bool}`; a level outside 0..2 gets vLLM's validation answer (400, OpenAI-shaped
  error, serve/exception_handling/handlers/validation.py:149-195). tests/engine_code/test_vllm_real.py compares
  these answers with the real engine's.
  Auth as vLLM's AuthenticationMiddleware (0.32.0 vllm/entrypoints/serve/middleware/authenticate.py:11-61,
  added by serve/middleware/register.py:32-36 with `--api-key` taking precedence over env VLLM_API_KEY; 0.19.1
  entrypoints/openai/server_utils.py:47-82, api_server.py:265-269): only paths under /v1, /v2, /inference and
  /cohere (0.19.1: /v1) need `Authorization: Bearer <key>` (scheme case-insensitive), OPTIONS never; else 401
  `{"error": "Unauthorized"}`. So /sleep, /wake_up and /is_sleeping stay open with `--api-key` alone. Each
  `--middleware module.Class` is imported and added with `app.add_middleware(cls)` (0.32.0
  serve/middleware/register.py:65-69; 0.19.1 api_server.py:295-301) as the outermost layer, like the role's
  llm_router_engine_auth.RequireKey.
- sglang (0.5.19 / 0.5.23 wheels): the HTTP server is up while loading and `/health` answers 503 until ready;
  auth as sglang/srt/utils/auth.py (0.5.23:74-213, 0.5.10.post1 the same but without /ready): `--api-key`
  (also from a `--config` YAML, key `api-key`: srt/utils/server_args_config_parser.py) protects every path
  except OPTIONS and paths starting with /health, /ready or /metrics (so /health_generate too), with
  `Bearer <key>` (scheme case-insensitive, constant-time compare); else 401 `{"error": "Unauthorized"}`.
  The memory routes are ADMIN_OPTIONAL, which without `--admin-api-key` takes the same `--api-key`.
  `GET|POST /release_memory_occupation` and `/resume_memory_occupation`
  (sglang/srt/entrypoints/http_server.py 0.5.23:1575-1596) take `{"tags": [...]}` where a missing or empty
  `tags` means every type, GPU_MEMORY_ALL_TYPES = [kv_cache, weights, cuda_graph] (srt/constants.py:6-10,
  srt/managers/io_struct.py 0.5.23:2177-2190, scheduler_components/weight_updater.py 0.5.23:345-346, 386-387);
  they answer 200 `null`. Resume removes each tag from the released set (weight_updater.py 0.5.23:389-390); a tag
  that was not released raises KeyError there, which the fake answers as SGLang's `_create_error_response`
  (http_server.py 0.5.23:2246-2250): 400 `{"error": {"message": ...}}`.
- tabbyapi (theroyallab/tabbyAPI @e632af4): a model named at start loads before the socket opens
  (main.py:53-63, then start_api at 97); `/health` needs no key; `GET /v1/model` and admin `POST /v1/model/unload`
  answer 503 `{"detail": "No models are currently loaded."}` without a model (check_model_container,
  common/model.py:298-307; endpoints/core/router.py:127-130, 206-213); admin `POST /v1/model/load` answers 400
  without `model_name` (router.py:184-190), else 200 and an SSE stream (router.py:203) of
  `{"model_type","module","modules","status"}` events: `processing` for modules 1..n, then `finished`
  (endpoints/core/utils/model.py:123-142), `processing`+`finished` for 1/1 when already loaded (common/model.py:
  158-164); a failed load is one `{"error": {"message", "trace"}}` event in the same 200 stream
  (utils/model.py:119-121, common/networking.py:28-46). The model counts as loaded only when the stream ends
  (common/model.py:229). Framing as sse-starlette: `\\r\\n` separators, `: ping - <time>` comments
  (sse-starlette 3.7.0 event.py:13, sse.py:500-504). Keys from api_tokens.yml in `x-api-key` (or Bearer)
  and `x-admin-key`.

`/fake/*` (test introspection, no engine has it) needs no key.

Sampling (sglang only, `--sampling-jit-broken`): as SGLang whose FlashInfer JIT cannot find `ninja` (the venv's bin/
not on PATH, engine-audit-2 #2): a greedy request (temperature 0) takes argmax and answers (0.5.23
layers/sampler.py:105); any other goes through FlashInfer's sampling kernels (sampler.py:47-52, 435), whose first use
builds them (flashinfer 0.7.2 jit/cpp_ext.py:419 `subprocess.run(["ninja", ...])`), so the scheduler dies with
FileNotFoundError and the server exits (SIGQUIT from the child; public reports in engine-audit-2 #2).

Replies are `tok0 tok1 ...` with OpenAI usage. Test options: `--wake-garbage` makes answers change after a wake
(like SGLang resuming without `--enable-weights-cpu-backup`, engine-audit #5); `--wake-glitch` changes only the
first multi-token answer after a wake (a near-tie token that flips once); `--nondeterministic` makes every
answer random; `--fail-load MESSAGE` makes TabbyAPI API loads fail with an error event. `GET /fake/stats`
exposes what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import random
import time
from datetime import UTC, datetime

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SGLANG_MEMORY_TYPES = ["kv_cache", "weights", "cuda_graph"]  # sglang/srt/constants.py:6-10 GPU_MEMORY_ALL_TYPES
TABBY_NO_MODEL = "No models are currently loaded."  # tabbyAPI common/model.py:302-307
SSE_SEP = "\r\n"  # sse-starlette DEFAULT_SEPARATOR (event.py:13)
VLLM_GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")  # vllm 0.32.0 serve/middleware/authenticate.py:11
SGLANG_PUBLIC_PREFIX = ("/health", "/ready", "/metrics")  # sglang 0.5.23 srt/utils/auth.py:101-105
UNAUTHORIZED = {"error": "Unauthorized"}  # vllm authenticate.py:60, sglang utils/auth.py:193-201 (both 401)


def bearer_matches(header: str | None, key: str) -> bool:
    """`Bearer <key>`, scheme case-insensitive (vllm authenticate.py:30-45, sglang utils/auth.py:108-117)."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and token == key


def engine_key(args: argparse.Namespace) -> str | None:
    """The key the engine would use: vLLM `--api-key` else env VLLM_API_KEY (register.py:32-33); SGLang
    `--api-key`, else `api-key`/`api_key` from the `--config` YAML (CLI > config, server_args_config_parser.py)."""
    if args.api_key:
        return args.api_key
    if args.kind == "vllm":
        return os.environ.get("VLLM_API_KEY") or None
    if args.kind == "sglang" and args.config:
        with open(args.config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
        value = config.get("api-key", config.get("api_key"))
        return None if value is None else str(value)
    return None


class EngineAuth:
    """The engine's own API-key middleware (vLLM's or SGLang's, see the module docstring); ASGI."""

    def __init__(self, app, *, kind: str, key: str | None, seen: list) -> None:
        self.app, self.kind, self.key, self.seen = app, kind, key, seen

    def guarded(self, path: str) -> bool:
        if path.startswith("/fake/"):
            return False
        if self.kind == "vllm":
            return path.startswith(VLLM_GUARDED_PREFIX)
        return not path.startswith(SGLANG_PUBLIC_PREFIX)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.key or scope["method"] == "OPTIONS" or not self.guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = Request(scope).headers.get("authorization")
        self.seen.append(header[7:] if header and header.lower().startswith("bearer ") else header)
        if bearer_matches(header, self.key):
            await self.app(scope, receive, send)
            return
        await JSONResponse(UNAUTHORIZED, 401)(scope, receive, send)


def vllm_level_error(raw: str) -> dict | None:
    """pydantic's error for `level: Annotated[int, Query(ge=0, le=2)]` (vllm 0.32.0 sleep/api_router.py:29)."""
    loc = "query.level"
    try:
        level = int(raw)
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        return {"type": "int_parsing", "loc": loc, "msg": msg, "input": raw}
    if level > 2:
        msg = "Input should be less than or equal to 2"
        return {"type": "less_than_equal", "loc": loc, "msg": msg, "input": raw, "ctx": {"le": 2}}
    if level < 0:
        msg = "Input should be greater than or equal to 0"
        return {"type": "greater_than_equal", "loc": loc, "msg": msg, "input": raw, "ctx": {"ge": 0}}
    return None


def vllm_validation_error(error: dict, param: str) -> JSONResponse:
    """vLLM's answer to a request that fails validation: 400 with an OpenAI-shaped error whose message lists the
    errors (vllm 0.32.0 entrypoints/serve/exception_handling/handlers/validation.py:149-195)."""
    message = f"1 validation error:\n  {error}"
    body = {"error": {"message": message, "type": "Bad Request", "param": param, "code": 400}}
    return JSONResponse(body, 400)


def tabby_event(payload: dict) -> str:
    """One SSE event as TabbyAPI/sse-starlette frame it (pydantic model_dump_json is compact)."""
    return "data: " + json.dumps(payload, separators=(",", ":")) + SSE_SEP + SSE_SEP


def make_app(args: argparse.Namespace) -> Starlette:
    state = {
        "ready_at": time.monotonic() + (args.load_seconds if args.kind == "sglang" else 0.0),
        "sleeping": False,
        "loaded": args.kind != "tabbyapi" or bool(args.model_name),
        "garbage": False,
        "glitches": 0,
        "requests": 0,
        "auth_seen": [],
        "sleeps": 0,
        "sleep_levels": [],
        "wakes": 0,
        "released": [],
        "memory_bodies": [],
        "load_events": [],
    }
    api_key, admin_key = args.api_key, None
    if args.api_tokens:
        with open(args.api_tokens, encoding="utf-8") as handle:
            tokens = yaml.safe_load(handle)
        api_key, admin_key = tokens["api_key"], tokens["admin_key"]

    def ready() -> bool:
        return time.monotonic() >= state["ready_at"]

    def woke() -> None:
        state["wakes"] += 1
        if args.wake_garbage:
            state["garbage"] = True
        if args.wake_glitch:
            state["glitches"] = 1

    def tokens(n: int) -> list[str]:
        if args.nondeterministic:
            return [f"r{random.randrange(10**6)} " for _ in range(n)]
        glitch = state["glitches"] > 0 and n > 1  # the router's 1-token readiness probe does not count
        if glitch:
            state["glitches"] -= 1
        return [f"{'zap' if state['garbage'] or glitch else 'tok'}{i} " for i in range(n)]

    def presented(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return request.headers.get("x-api-key")

    def client_denied(request: Request) -> Response | None:
        """TabbyAPI's key check in its handlers; vLLM and SGLang check keys in EngineAuth (middleware)."""
        if args.kind != "tabbyapi":
            return None
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

    def no_tabby_model() -> JSONResponse:
        return JSONResponse({"detail": TABBY_NO_MODEL}, 503)

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
        if args.kind == "tabbyapi" and not state["loaded"]:
            return no_tabby_model()
        if state["sleeping"] or not state["loaded"] or not ready():
            return JSONResponse({"error": {"message": "model is not loaded", "type": "unavailable_error"}}, 503)
        state["requests"] += 1
        body = await request.json()
        state["last_body"] = body
        if args.sampling_jit_broken and body.get("temperature", 1.0) != 0:
            print("FileNotFoundError: [Errno 2] No such file or directory: 'ninja'", flush=True)
            print("Received sigquit from a child process. It usually means the child failed.", flush=True)
            os._exit(1)
        chat = request.url.path.endswith("chat/completions")
        n = int(body.get("max_tokens") or 8)
        name = args.model_name or args.served_name
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        if not body.get("stream"):
            text = "".join(tokens(n))
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
            for piece in tokens(n):
                delta = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
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

    async def vllm_sleep(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        raw = request.query_params.get("level", "1")
        error = vllm_level_error(raw)
        if error is not None:
            return vllm_validation_error(error, "query.level")
        level = int(raw)
        state["sleeping"] = True
        state["sleeps"] += 1
        state["sleep_levels"].append(level)
        return JSONResponse({"status": "sleeping", "level": level})

    async def vllm_wake(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        state["sleeping"] = False
        woke()
        return JSONResponse({"status": "awake", "tags": None})

    async def is_sleeping(_request: Request) -> Response:
        return JSONResponse({"is_sleeping": state["sleeping"]})

    async def memory_tags(request: Request) -> list[str]:
        raw = await request.body()
        body = json.loads(raw) if raw.strip() else {}
        state["memory_bodies"].append(body)
        return list(body.get("tags") or SGLANG_MEMORY_TYPES)  # None or [] -> GPU_MEMORY_ALL_TYPES

    async def sglang_release(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        tags = await memory_tags(request)
        state["released"] = sorted(set(state["released"]) | set(tags))
        state["sleeping"] = True
        state["sleeps"] += 1
        return JSONResponse(None)

    async def sglang_resume(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        tags = await memory_tags(request)
        missing = [tag for tag in tags if tag not in state["released"]]
        if missing:
            return JSONResponse({"error": {"message": repr(missing[0])}}, 400)  # KeyError from set.remove
        state["released"] = sorted(set(state["released"]) - set(tags))
        state["sleeping"] = bool(state["released"])
        woke()
        return JSONResponse(None)

    async def tabby_model(request: Request) -> Response:
        denied = client_denied(request)
        if denied:
            return denied
        if not state["loaded"]:
            return no_tabby_model()
        return JSONResponse({"id": args.model_name, "object": "model", "owned_by": "tabbyAPI"})

    async def tabby_unload(request: Request) -> Response:
        denied = admin_denied(request)
        if denied:
            return denied
        if not state["loaded"]:
            return no_tabby_model()
        state["loaded"] = False
        state["sleeps"] += 1
        return JSONResponse(None)

    async def tabby_load(request: Request) -> Response:
        denied = admin_denied(request)
        if denied:
            return denied
        body = await request.json()
        name = body.get("model_name")
        if not name:
            return JSONResponse({"detail": "A model name was not provided for load."}, 400)
        already = state["loaded"] and name == args.model_name
        if not already:
            state["loaded"] = False  # the container is reset before loading (common/model.py:170-171)
        args.model_name = name

        def emit(payload: dict) -> str:
            state["load_events"].append(payload)
            return tabby_event(payload)

        async def progress():
            if already:
                for status in ("processing", "finished"):
                    yield emit({"model_type": "model", "module": 1, "modules": 1, "status": status})
                return
            modules = 3
            for module in range(1, modules + 1):
                await asyncio.sleep(args.load_seconds / modules)
                yield emit({"model_type": "model", "module": module, "modules": modules, "status": "processing"})
                if module == 1:
                    yield f": ping - {datetime.now(UTC)}{SSE_SEP}{SSE_SEP}"
                    if args.fail_load:
                        yield emit({"error": {"message": args.fail_load, "trace": None}})
                        return
            yield emit({"model_type": "model", "module": modules, "modules": modules, "status": "finished"})
            state["loaded"] = True
            woke()

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
            Route("/sleep", vllm_sleep, methods=["POST"]),
            Route("/wake_up", vllm_wake, methods=["POST"]),
            Route("/is_sleeping", is_sleeping),
        ]
    if args.kind == "sglang":
        routes += [
            Route("/release_memory_occupation", sglang_release, methods=["POST", "GET"]),
            Route("/resume_memory_occupation", sglang_resume, methods=["POST", "GET"]),
        ]
    if args.kind == "tabbyapi":
        routes += [
            Route("/v1/model", tabby_model),
            Route("/v1/model/unload", tabby_unload, methods=["POST"]),
            Route("/v1/model/load", tabby_load, methods=["POST"]),
        ]
    app = Starlette(routes=routes)
    if args.kind in ("vllm", "sglang"):
        app.add_middleware(EngineAuth, kind=args.kind, key=engine_key(args), seen=state["auth_seen"])
    for path in args.middleware:  # vLLM --middleware: added last, so outermost
        module, _, name = path.rpartition(".")
        app.add_middleware(getattr(importlib.import_module(module), name))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["vllm", "sglang", "tabbyapi"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", default="fake")
    parser.add_argument("--model-name", default=None, help="tabbyapi: model loaded at start")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--api-tokens", default=None, help="tabbyapi: api_tokens.yml")
    parser.add_argument("--config", default=None, help="sglang: YAML of flags (api-key)")
    parser.add_argument("--middleware", action="append", default=[], help="vllm: ASGI middleware class to add")
    parser.add_argument("--load-seconds", type=float, default=0.3)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--wake-garbage", action="store_true", help="answers change after a wake (other weights)")
    parser.add_argument("--wake-glitch", action="store_true", help="one answer after a wake differs")
    parser.add_argument("--nondeterministic", action="store_true", help="every answer is random")
    parser.add_argument("--fail-load", default=None, metavar="MESSAGE", help="tabbyapi: API loads fail with MESSAGE")
    parser.add_argument("--sampling-jit-broken", action="store_true", help="sglang: a sampled request kills it")
    args = parser.parse_args()
    if args.kind == "vllm" or (args.kind == "tabbyapi" and args.model_name):
        time.sleep(args.load_seconds)  # vLLM, and TabbyAPI with a start model, open the socket once loaded
    uvicorn.run(make_app(args), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
