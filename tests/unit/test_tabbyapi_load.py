"""Engine adapter protocol details: TabbyAPI's load stream and unload, SGLang's release/resume body.

Event shapes are TabbyAPI's at theroyallab/tabbyAPI@e632af41eba68abeadc3437c62674360f2f8cbf1:
- progress: `ModelLoadResponse(model_type, module, modules, status)` dumped as compact JSON,
  `processing` per module and `finished` when module == modules (endpoints/core/utils/model.py:123-142,
  endpoints/core/types/model.py:128-137); parts load in the order vision, draft, model (common/model.py:196-227);
- failure: `get_generator_error(str(exc))` = `{"error": {"message": ..., "trace": ...}}` in the same 200 stream
  (endpoints/core/utils/model.py:119-121, common/networking.py:28-46);
- framing: sse-starlette, `data: <json>\\r\\n\\r\\n` and `: ping - <time>` comments (sse-starlette 3.7.0
  event.py:13,48-51, sse.py:500-504); httpx `aiter_lines` hands these over without line endings.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from router_app.config import ModelConfig
from router_app.engines.adapters import EngineError
from router_app.engines.adapters.sglang import SGLangAdapter
from router_app.engines.adapters.tabbyapi import LoadProgress, TabbyAPIAdapter, follow_load
from router_app.engines.adapters.vllm import VLLMAdapter


def event(**payload: object) -> list[str]:
    return ["data: " + json.dumps(payload, separators=(",", ":")), ""]


def progress(module: int, modules: int, status: str = "processing", model_type: str = "model") -> list[str]:
    return event(model_type=model_type, module=module, modules=modules, status=status)


def feed_all(lines: list[str]) -> LoadProgress:
    load = LoadProgress("M")
    for line in lines:
        load.feed(line)
    load.close()
    return load


def test_progress_then_finished_with_ping_comments() -> None:
    lines = [*progress(1, 2), ": ping - 2026-11-22 14:00:00+00:00", "", *progress(2, 2), *progress(2, 2, "finished")]
    assert feed_all(lines).finished


def test_already_loaded_model_sends_processing_and_finished_for_1_of_1() -> None:
    # common/model.py:158-164 yields (1, 1, "model") when the model is already loaded.
    assert feed_all([*progress(1, 1), *progress(1, 1, "finished")]).finished


def test_error_event_raises_at_once_with_the_engine_message() -> None:
    load = LoadProgress("Big-exl3")
    for line in progress(1, 40):
        load.feed(line)
    load.feed('data: {"error":{"message":"CUDA out of memory. Tried to allocate 2.00 GiB","trace":null}}')
    expected = "load of Big-exl3 failed: CUDA out of memory. Tried to allocate 2.00 GiB"
    with pytest.raises(EngineError, match=re.escape(expected)):
        load.feed("")


def test_stream_without_finished_fails() -> None:
    with pytest.raises(EngineError, match=r"ended without a 'finished' event.*\"module\": 2"):
        feed_all([*progress(1, 3), *progress(2, 3)])
    with pytest.raises(EngineError, match="no progress events"):
        feed_all([])


def test_finished_draft_is_not_the_model() -> None:
    lines = [*progress(1, 1, model_type="draft"), *progress(1, 1, "finished", model_type="draft"), *progress(1, 5)]
    with pytest.raises(EngineError, match="without a 'finished' event"):
        feed_all(lines)
    assert feed_all([*lines, *progress(5, 5), *progress(5, 5, "finished")]).finished


def test_multi_line_data_and_missing_space_and_last_event_without_blank_line() -> None:
    lines = ['data:{"model_type":"model",', 'data: "module":1,"modules":1,"status":"finished"}']
    assert feed_all(lines).finished, "multi-line data is joined with newlines (valid JSON whitespace)"


def test_non_json_event_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="non-JSON"):
        feed_all(["data: <html>", ""])


async def _lines(chunks: list[str]):
    for chunk in chunks:
        yield chunk


def test_follow_load_reads_to_the_end_and_tracks_the_model_fraction() -> None:
    load = LoadProgress("M")
    lines = [*progress(1, 1, "finished", model_type="draft"), *progress(1, 4)]
    for line in lines:
        load.feed(line)
    assert load.fraction == 0.25 and not load.finished
    asyncio.run(follow_load(_lines([*progress(4, 4), *progress(4, 4, "finished")]), load))
    assert load.fraction == 1.0 and load.finished


def _tabby(handler, tmp_path) -> TabbyAPIAdapter:
    tokens = tmp_path / "api_tokens.yml"
    tokens.write_text("api_key: k\nadmin_key: a\n")
    model = ModelConfig(id="t", backend="tabbyapi", port=5000, api_tokens_file=tokens)
    return TabbyAPIAdapter(model, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


# GET /v1/model without a model: check_model_container's 503 (tabbyAPI@e632af4 common/model.py:298-307).
NO_MODEL = httpx.Response(503, json={"detail": "No models are currently loaded."})


def test_wake_of_a_model_already_loaded_loads_nothing(tmp_path) -> None:
    """A unit systemd restarted loads its model at start; exl2-checkpoint's load of an already loaded model then ends
    its stream without any event (79126f9 common/model.py:150-156), which would read as a failed load
    (engine-audit-2 #9). The loaded model is ModelCard `id` = its folder's name."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/model":
            return httpx.Response(200, json={"id": loaded, "object": "model"})
        return httpx.Response(200, text="", headers={"content-type": "text/event-stream"})  # exl2-checkpoint

    loaded = "t"
    asyncio.run(_tabby(handler, tmp_path).wake())
    assert seen == ["/v1/model"]
    loaded, seen = "another-model", []
    with pytest.raises(EngineError, match="ended without a 'finished' event"):
        asyncio.run(_tabby(handler, tmp_path).wake())
    assert seen == ["/v1/model", "/v1/model/load"]


def test_asleep_is_a_running_server_without_a_model(tmp_path) -> None:
    """The start model loads before TabbyAPI opens its socket (main.py:53-63, then 97): up without a model = asleep."""
    answers: dict[str, httpx.Response] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        return answers[request.url.path]

    tabby = _tabby(handler, tmp_path)
    answers.update({"/health": httpx.Response(200, json={"status": "healthy"}), "/v1/model": NO_MODEL})
    assert asyncio.run(tabby.asleep()) is True
    answers["/v1/model"] = httpx.Response(200, json={"id": "t"})
    assert asyncio.run(tabby.asleep()) is False
    answers["/health"] = httpx.Response(503, json={"status": "unhealthy"})
    assert asyncio.run(tabby.asleep()) is None


def test_wake_over_http_fails_on_the_error_event_of_a_200_stream(tmp_path) -> None:
    body = (
        'data: {"model_type":"model","module":1,"modules":3,"status":"processing"}\r\n\r\n'
        'data: {"error":{"message":"Insufficient VRAM","trace":null}}\r\n\r\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return NO_MODEL
        assert request.url.path == "/v1/model/load" and request.headers["x-admin-key"] == "a"
        assert json.loads(request.content) == {"model_name": "t"}
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    with pytest.raises(EngineError, match="failed: Insufficient VRAM"):
        asyncio.run(_tabby(handler, tmp_path).wake())


def test_wake_400_is_an_engine_error(tmp_path) -> None:
    # endpoints/core/router.py:195-201: an unknown model directory is a plain HTTP 400.
    detail = "Could not find the model path for load. Check model name or config.yml?"

    def handler(request: httpx.Request) -> httpx.Response:
        return NO_MODEL if request.url.path == "/v1/model" else httpx.Response(400, json={"detail": detail})

    with pytest.raises(EngineError, match=r"answered 400: .*Could not find the model path"):
        asyncio.run(_tabby(handler, tmp_path).wake())


def test_sleep_accepts_503_no_model_loaded(tmp_path) -> None:
    # /v1/model/unload depends on check_model_container: 503 with no model (common/model.py:298-307).
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers["x-admin-key"]))
        return httpx.Response(503, json={"detail": "No models are currently loaded."})

    asyncio.run(_tabby(handler, tmp_path).sleep())
    assert seen == [("/v1/model/unload", "a")]


def test_sleep_other_errors_raise(tmp_path) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "Invalid admin key"})

    with pytest.raises(EngineError, match="unload answered 401"):
        asyncio.run(_tabby(handler, tmp_path).sleep())


def test_sglang_release_and_resume_send_an_empty_body() -> None:
    """`{}`: tags None = GPU_MEMORY_ALL_TYPES incl. cuda_graph (sglang 0.5.19/0.5.23 constants.py:6-10,
    weight_updater.py 0.5.23:345-346 and 386-387, 0.5.19:218-219 and 260-261)."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=None)

    model = ModelConfig(id="s", backend="sglang", port=5000, evict="sleep")
    adapter = SGLangAdapter(model, httpx.AsyncClient(transport=httpx.MockTransport(handler)))

    async def both() -> None:
        await adapter.sleep()
        await adapter.wake()

    asyncio.run(both())
    assert seen == [("POST", "/release_memory_occupation", {}), ("POST", "/resume_memory_occupation", {})]


def test_fingerprint_is_the_greedy_text_of_a_fixed_probe() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"index": 0, "text": " Paris. It is"}]})

    model = ModelConfig(id="v", backend="vllm", port=5000, evict="sleep")
    adapter = VLLMAdapter(model, httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    assert asyncio.run(adapter.fingerprint()) == " Paris. It is"
    asyncio.run(adapter.fingerprint())
    assert bodies[0] == bodies[1] and bodies[0]["temperature"] == 0 and bodies[0]["max_tokens"] == 8


def test_fingerprint_errors_are_engine_errors() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": []})

    model = ModelConfig(id="v", backend="vllm", port=5000, evict="sleep")
    adapter = VLLMAdapter(model, httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with pytest.raises(EngineError, match="no choices"):
        asyncio.run(adapter.fingerprint())
