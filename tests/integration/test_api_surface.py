"""The API beyond chat completions, against real llama-server (b11312) engines on tiny models:
llama.cpp router-mode model management (what Open-WebUI's provider "llama.cpp" drives), the OpenAI Responses API
and the Anthropic Messages API through their official SDKs, the other engine routes, per-model parameters."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import llama_model, wait_until

pytestmark = pytest.mark.llama

CLIENT_KEY = "client-key"
ADMIN_KEY = "admin-key"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "clients.keys").write_text(CLIENT_KEY + "\n")
    (tmp_path / "admin.key").write_text(ADMIN_KEY + "\n")
    return {"api_key_files": [str(tmp_path / "clients.keys")], "admin_key_file": str(tmp_path / "admin.key")}


@pytest.fixture
def two_models(llama_server_bin: Path, models_dir: Path) -> list[dict]:
    return [
        llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", aliases=["a"]),
        llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b"),
    ]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def statuses(url: str, key: str = CLIENT_KEY, path: str = "/v1/models") -> dict[str, dict[str, Any]]:
    return {m["id"]: m["status"] for m in httpx.get(url + path, headers=auth(key), timeout=10).json()["data"]}


class SseListener:
    """GET /models/sse in a thread: the parsed `data:` payloads, until stop()."""

    def __init__(self, url: str, key: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.opened = threading.Event()
        self._stop = threading.Event()
        self.ended_cleanly = False
        self._thread = threading.Thread(target=self._run, args=(url, key), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "GET /models/sse did not open"

    def _run(self, url: str, key: str) -> None:
        with httpx.stream("GET", url + "/models/sse", headers=auth(key), timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            self.opened.set()
            for line in response.iter_lines():  # keep-alive comments every progress_interval_s wake this loop
                if line.startswith("data:"):
                    self.events.append(json.loads(line[5:]))
                if self._stop.is_set():
                    self.ended_cleanly = True
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def seen(self, model: str, event: str, status: str) -> bool:
        return any(
            e["model"] == model and e["event"] == event and e["data"]["status"] == status for e in list(self.events)
        )


def test_llamacpp_model_management(start_router, two_models, keys) -> None:
    """Shapes of llama.cpp b11312 router mode (tools/server/server-models.cpp:2003-2131), measured side by side."""
    router = start_router(two_models, **keys)
    url = router.url
    assert httpx.get(url + "/models").status_code == 401
    listed = statuses(url)
    assert listed["tiny-a"]["value"] == "unloaded" and listed["tiny-b"]["value"] == "unloaded"
    assert statuses(url, path="/models") == listed
    sse = SseListener(url, CLIENT_KEY)

    # Load by alias with the client key (Open-WebUI sends the connection's key): answered at once, like llama.cpp.
    loaded = httpx.post(url + "/models/load", json={"model": "a"}, headers=auth(CLIENT_KEY), timeout=10)
    assert loaded.status_code == 200 and loaded.json() == {"success": True}
    assert statuses(url)["tiny-a"]["value"] in ("loading", "loaded")
    wait_until(lambda: statuses(url)["tiny-a"]["value"] == "loaded", "tiny-a loaded")
    again = httpx.post(url + "/models/load", json={"model": "tiny-a"}, headers=auth(CLIENT_KEY))
    assert again.status_code == 400 and again.json()["error"]["message"] == "model is already running"
    unknown = httpx.post(url + "/models/load", json={"model": "nope"}, headers=auth(CLIENT_KEY))
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    unknown = httpx.post(url + "/models/unload", json={"model": "nope"}, headers=auth(CLIENT_KEY))
    assert unknown.status_code == 400 and unknown.json()["error"]["message"] == "model is not found"
    not_running = httpx.post(url + "/models/unload", json={"model": "tiny-b"}, headers=auth(CLIENT_KEY))
    assert not_running.status_code == 400 and not_running.json()["error"]["message"] == "model is not running"
    for bad in (b"{not json", b"[]", b'{"model": 5}'):
        answer = httpx.post(url + "/models/load", content=bad, headers=auth(CLIENT_KEY))
        assert answer.status_code == 400, bad

    # A request for the other model switches: the statuses follow.
    chat = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "tiny-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers=auth(CLIENT_KEY),
        timeout=60,
    )
    assert chat.status_code == 200
    now = statuses(url)
    assert now["tiny-a"]["value"] == "unloaded" and now["tiny-b"]["value"] == "loaded"

    # Eject: the engine is gone when the answer comes.
    unloaded = httpx.post(url + "/models/unload", json={"model": "tiny-b"}, headers=auth(CLIENT_KEY), timeout=30)
    assert unloaded.status_code == 200 and unloaded.json() == {"success": True}
    assert statuses(url)["tiny-b"]["value"] == "unloaded"
    assert router.health()["current"] == []

    wait_until(lambda: sse.seen("tiny-b", "status_change", "unloaded"), "SSE unload event")
    sse.stop()
    assert sse.ended_cleanly
    assert sse.seen("tiny-a", "model_status", "loading")
    assert sse.seen("tiny-a", "status_change", "loaded")
    assert sse.seen("tiny-a", "status_change", "unloaded") and sse.seen("tiny-b", "status_change", "loaded")
    event = next(e for e in sse.events if e["model"] == "tiny-b" and e["data"]["status"] == "unloaded")
    assert event == {"model": "tiny-b", "event": "status_change", "data": {"status": "unloaded", "exit_code": 0}}
    # The router survives the SSE client leaving, and still answers.
    assert httpx.get(url + "/models", headers=auth(CLIENT_KEY)).status_code == 200


def test_model_control_setting(start_router, two_models, keys) -> None:
    admin_only = start_router(two_models, model_control="admin", **keys)
    denied = httpx.post(admin_only.url + "/models/load", json={"model": "tiny-a"}, headers=auth(CLIENT_KEY))
    assert denied.status_code == 401
    allowed = httpx.post(admin_only.url + "/models/load", json={"model": "tiny-a"}, headers=auth(ADMIN_KEY))
    assert allowed.status_code == 200
    off = start_router(two_models, model_control="none", **keys)
    for key in (CLIENT_KEY, ADMIN_KEY):
        answer = httpx.post(off.url + "/models/unload", json={"model": "tiny-a"}, headers=auth(key))
        assert answer.status_code == 403 and answer.json()["error"]["type"] == "permission_error"
    assert httpx.get(off.url + "/models", headers=auth(CLIENT_KEY)).status_code == 200


def test_openai_responses_api(start_router, two_models) -> None:
    """llama-server serves /v1/responses (tools/server/server.cpp:264); the router switches and renames on it."""
    router = start_router(two_models)
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    answer = client.responses.create(model="a", input="hello", max_output_tokens=4)
    assert answer.model == "a" and answer.status == "completed" and answer.output_text
    assert answer.usage is not None and answer.usage.output_tokens == 4

    # Streamed while a switch to tiny-b happens: the wait is SSE comments, the SDK sees only the API's events.
    with httpx.stream(
        "POST",
        router.url + "/v1/responses",
        json={"model": "tiny-b", "input": "hello", "max_output_tokens": 4, "stream": True},
        timeout=60,
    ) as response:
        lines = list(response.iter_lines())
    assert any(line.startswith(": ") for line in lines), "waiting is told in comments"
    events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["model"] == "tiny-b"

    stream = client.responses.create(model="a", input="hello", max_output_tokens=4, stream=True)
    types = [event.type for event in stream]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert router.health()["current"] == ["tiny-a"]


def test_anthropic_messages_api(start_router, two_models) -> None:
    """llama-server serves /v1/messages (tools/server/server.cpp:268, count_tokens 285); errors in Anthropic shape."""
    router = start_router(two_models)
    client = anthropic.Anthropic(base_url=router.url, api_key="unused", max_retries=0)
    message = client.messages.create(model="a", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "a" and message.content[0].type == "text" and message.usage.output_tokens == 4

    # Streamed across a switch: ping events and comments while waiting, then the engine's events.
    with client.messages.stream(model="tiny-b", max_tokens=4, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.model == "tiny-b" and final.stop_reason == "max_tokens"
    with httpx.stream(
        "POST",
        router.url + "/v1/messages",
        json={"model": "a", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    ) as response:
        lines = list(response.iter_lines())
    assert 'data: {"type":"ping"}' in lines and "event: message_stop" in lines

    count = client.messages.count_tokens(model="a", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0

    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    no_max = httpx.post(router.url + "/v1/messages", json={"model": "a", "messages": []})
    assert no_max.status_code == 400
    assert no_max.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "'max_tokens' is required (an integer)"},
    }
    # The engine's own (OpenAI-shaped) errors come back in Anthropic shape with their status.
    bad_temperature = httpx.post(
        router.url + "/v1/messages",
        json={"model": "a", "max_tokens": 2, "temperature": "hot", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert bad_temperature.status_code == 400
    assert bad_temperature.json()["type"] == "error" and "temperature" in bad_temperature.json()["error"]["message"]


def test_engine_routes_and_missing_backend_routes(start_router, llama_server_bin, models_dir) -> None:
    """tokenize/detokenize/infill/rerank go to llama-server's own routes (server.cpp:269-278); a backend that
    lacks a route gets 501 naming it, before any engine is asked."""
    router = start_router(
        [
            llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a"),
            {"id": "remote", "backend": "openai", "url": "http://127.0.0.1:9/v1"},
        ]
    )
    tokens = httpx.post(router.url + "/tokenize", json={"model": "tiny-a", "content": "hello"}, timeout=60)
    assert tokens.status_code == 200 and tokens.json()["tokens"]
    text = httpx.post(router.url + "/detokenize", json={"model": "tiny-a", "tokens": tokens.json()["tokens"]})
    assert text.status_code == 200 and "hello" in text.json()["content"]
    # The tiny model has no FIM tokens and no reranking head: llama-server's own 501s pass through.
    infill = httpx.post(router.url + "/infill", json={"model": "tiny-a", "input_prefix": "a", "input_suffix": "b"})
    assert infill.status_code == 501 and "Infill" in infill.json()["error"]["message"]
    rerank = httpx.post(router.url + "/v1/rerank", json={"model": "tiny-a", "query": "a", "documents": ["b"]})
    assert rerank.status_code == 501 and "rerank" in rerank.json()["error"]["message"]
    for path, body in (
        ("/v1/messages", {"model": "remote", "max_tokens": 2, "messages": []}),
        ("/tokenize", {"model": "remote", "content": "x"}),
        ("/infill", {"model": "remote"}),
    ):
        answer = httpx.post(router.url + path, json=body)
        assert answer.status_code == 501, path
        message = answer.json()["error"]["message"]
        assert "backend 'openai'" in message and path in message
    assert (
        httpx.post(router.url + "/v1/messages", json={"model": "remote", "max_tokens": 1, "messages": []}).json()[
            "type"
        ]
        == "error"
    )


def test_per_model_defaults_overrides_strip(start_router, llama_server_bin, models_dir) -> None:
    router = start_router(
        [
            llama_model(
                llama_server_bin,
                models_dir / "tiny-a.gguf",
                "tiny-a",
                defaults={"max_tokens": 3},
                strip=["temperature"],
            ),
            llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b", overrides={"max_tokens": 2}),
        ]
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    hello = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="tiny-a", messages=hello).usage.completion_tokens == 3
    assert client.chat.completions.create(model="tiny-a", messages=hello, max_tokens=5).usage.completion_tokens == 5
    # `max_tokens` is `max_output_tokens` in the Responses API.
    assert client.responses.create(model="tiny-a", input="hi").usage.output_tokens == 3
    # A stripped key never reaches the engine (llama-server answers 400 to a temperature that is not a number).
    body = {"model": "tiny-a", "messages": hello, "temperature": "hot"}
    stripped = httpx.post(router.url + "/v1/chat/completions", json=body, timeout=60)
    assert stripped.status_code == 200 and stripped.json()["usage"]["completion_tokens"] == 3
    kept = httpx.post(router.url + "/v1/chat/completions", json={**body, "model": "tiny-b"}, timeout=60)
    assert kept.status_code == 400 and "temperature" in kept.json()["error"]["message"]
    forced = client.chat.completions.create(model="tiny-b", messages=hello, max_tokens=6)
    assert forced.usage.completion_tokens == 2


def test_sleeping_status_progress_and_unsupported_backend(start_router) -> None:
    """Protocol fakes of GPU engines (tests/fakes/fake_engine.py): SGLang sleeps (evict: sleep), TabbyAPI lacks
    the Anthropic route."""
    from tests.conftest import fake_model

    router = start_router(
        [
            fake_model("sglang", "s1", "--load-seconds", "1.5", evict="sleep"),
            fake_model("sglang", "s2", "--load-seconds", "0.2", evict="sleep"),
            fake_model("tabbyapi", "t1"),
        ]
    )
    url = router.url
    sse = SseListener(url, "unused")
    assert httpx.post(url + "/models/load", json={"model": "s1"}).json() == {"success": True}
    loading = statuses(url)["s1"]
    assert loading["value"] == "loading" and loading["progress"]["stages"] == ["text_model"]
    wait_until(lambda: statuses(url)["s1"]["value"] == "loaded", "s1 loaded")
    chat = {"model": "s2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(url + "/v1/chat/completions", json=chat, timeout=60).status_code == 200
    now = statuses(url)
    assert now["s1"]["value"] == "sleeping" and now["s2"]["value"] == "loaded"
    # Sleeping counts as running, as in llama.cpp (server-models.h is_running): unload frees it.
    assert httpx.post(url + "/models/load", json={"model": "s1"}).status_code == 400
    assert httpx.post(url + "/models/unload", json={"model": "s1"}, timeout=30).json() == {"success": True}
    assert statuses(url)["s1"]["value"] == "unloaded"
    wait_until(lambda: sse.seen("s1", "status_change", "sleeping"), "SSE sleeping event")
    sse.stop()
    progress = [e for e in sse.events if e["model"] == "s1" and "progress" in e["data"]]
    assert progress and progress[0]["data"]["status"] == "loading"

    messages = httpx.post(url + "/v1/messages", json={"model": "t1", "max_tokens": 2, "messages": []})
    assert messages.status_code == 501
    assert (
        messages.json()["error"]["type"] == "api_error" and "backend 'tabbyapi'" in messages.json()["error"]["message"]
    )
