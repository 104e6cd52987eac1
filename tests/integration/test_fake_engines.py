"""Engines that need a GPU (vLLM, SGLang, TabbyAPI), driven through protocol fakes.

The fakes (tests/fakes/fake_engine.py) follow each engine's documented HTTP behaviour:
vLLM opens its socket only after loading and sleeps via /sleep and /wake_up; SGLang answers
503 on /health while loading and frees memory via /release_memory_occupation; TabbyAPI
reads keys from api_tokens.yml (x-api-key / x-admin-key), has /v1/model 200 only with a
model loaded, and unloads/loads through its admin API (load streams SSE progress).
Everything else here (router, supervisor, real subprocesses, HTTP) is real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router_app.runtime import free_port
from tests.conftest import FAKE_ENGINE, fake_model, sse_events, wait_until


def stats(router, model_id: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{router.engine_port(model_id)}/fake/stats", timeout=10).json()


def chat(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, **kwargs
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "engine.key"
    path.write_text("sk-engine-secret\n")
    return path


def test_vllm_bearer_key_and_sleep_mode(start_router, key_file) -> None:
    router = start_router(
        [
            fake_model(
                "vllm", "v1", "--api-key", "sk-engine-secret", api_key_file=str(key_file), evict="sleep", group="gpu0"
            ),
            fake_model(
                "vllm", "v2", "--api-key", "sk-engine-secret", api_key_file=str(key_file), evict="sleep", group="gpu0"
            ),
        ]
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    assert chat(client, "v1").choices[0].message.content == "tok0 tok1 tok2 "
    assert "sk-engine-secret" in stats(router, "v1")["auth_seen"]
    pid = router.engine_pid("v1")

    assert chat(client, "v2").model == "v2"
    states = {m["id"]: m["state"] for m in router.health()["models"]}
    assert states == {"v1": "sleeping", "v2": "ready"}
    assert stats(router, "v1")["sleeps"] == 1 and stats(router, "v1")["sleeping"] is True

    assert chat(client, "v1").model == "v1"
    assert router.engine_pid("v1") == pid, "waking keeps the same process"
    assert stats(router, "v1")["wakes"] == 1 and stats(router, "v2")["sleeping"] is True


def test_sglang_health_503_while_loading_then_memory_release(start_router) -> None:
    router = start_router(
        [
            fake_model("sglang", "Qwen/Qwen2.5-7B", "--load-seconds", "1.0", evict="sleep", aliases=["s1"]),
            fake_model("sglang", "s2", "--load-seconds", "0.2", evict="sleep"),
        ]
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    chunks = list(chat(client, "s1", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    assert chat(client, "s2").model == "s2"
    assert stats(router, "Qwen/Qwen2.5-7B")["sleeps"] == 1
    assert chat(client, "Qwen/Qwen2.5-7B").model == "Qwen/Qwen2.5-7B"
    assert stats(router, "Qwen/Qwen2.5-7B")["wakes"] == 1 and stats(router, "s2")["sleeps"] == 1
    health = httpx.get(router.url + "/health/Qwen%2FQwen2.5-7B").json()
    assert health["id"] == "Qwen/Qwen2.5-7B" and health["state"] == "ready"


def test_tabbyapi_keys_from_api_tokens_and_admin_unload_load(start_router, tmp_path) -> None:
    tokens = tmp_path / "api_tokens.yml"
    tokens.write_text(yaml.safe_dump({"api_key": "tabby-api", "admin_key": "tabby-admin"}))
    entry = {"api_tokens_file": str(tokens), "evict": "sleep"}
    router = start_router(
        [
            fake_model("tabbyapi", "exl3-a", "--api-tokens", str(tokens), "--model-name", "Model-A-exl3", **entry),
            fake_model("tabbyapi", "exl3-b", "--api-tokens", str(tokens), "--model-name", "Model-B-exl3", **entry),
        ]
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    reply = chat(client, "exl3-a")
    assert reply.model == "exl3-a", "the engine's own model name is rewritten to the id the client used"
    assert "tabby-api" in stats(router, "exl3-a")["auth_seen"]
    assert chat(client, "exl3-b").model == "exl3-b"
    assert stats(router, "exl3-a")["loaded"] is False and stats(router, "exl3-a")["sleeps"] == 1
    assert chat(client, "exl3-a").model == "exl3-a"
    assert stats(router, "exl3-a")["wakes"] == 1


def test_router_api_keys_and_admin_endpoints(start_router, tmp_path) -> None:
    keys = tmp_path / "clients.keys"
    keys.write_text("# one per line\nsk-client-1\nsk-client-2\n")
    admin = tmp_path / "admin.key"
    admin.write_text("sk-admin\n")
    router = start_router(
        [fake_model("vllm", "v1"), fake_model("vllm", "v2")], api_key_files=[str(keys)], admin_key_file=str(admin)
    )
    denied = httpx.get(router.url + "/v1/models")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="sk-client-2")
    assert [m.id for m in client.models.list().data] == ["v1", "v2"]
    assert httpx.get(router.url + "/health").status_code == 200, "health stays open for probes"

    load = httpx.post(router.url + "/admin/load", json={"model": "v2"}, headers={"Authorization": "Bearer sk-client-1"})
    assert load.status_code == 401
    admin_headers = {"Authorization": "Bearer sk-admin"}
    load = httpx.post(router.url + "/admin/load", json={"model": "v2"}, headers=admin_headers, timeout=60)
    assert load.status_code == 200 and load.json()["state"] == "ready"
    assert router.health()["current"] == ["v2"]
    unload = httpx.post(router.url + "/admin/unload", json={}, headers=admin_headers, timeout=60)
    assert unload.json() == {"unloaded": ["v2"]} and router.health()["current"] == []
    assert httpx.post(router.url + "/admin/load", json={"model": "zz"}, headers=admin_headers).status_code == 404


def test_admin_api_disabled_without_admin_key(start_router) -> None:
    router = start_router([fake_model("vllm", "v1")])
    response = httpx.post(router.url + "/admin/load", json={"model": "v1"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_disabled"


def test_content_style_footer_and_tools_suppression(start_router) -> None:
    router = start_router([fake_model("vllm", "v1"), fake_model("vllm", "v2")], status_style="content")
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    text = chat(client, "v1").choices[0].message.content
    assert text.startswith("tok0 tok1 tok2 \n\n\u26a1 ") and "3 tokens in" in text

    body = {
        "model": "v2",
        "stream": True,
        "max_tokens": 3,
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "\u23f3 Loading v1\u2026 0 s\nold answer\n\n\u26a1 9.0 tok/s \u00b7 3 tokens",
            },
            {"role": "user", "content": "again"},
        ],
    }
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=60) as response:
        events = [json.loads(p) for p in sse_events(response.iter_lines()) if p != "[DONE]"]
    content = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert content.startswith("\u23f3 ") and "\u23f3 Loading v2" in content and "\u26a1" in content
    assert stats(router, "v2")["last_body"]["messages"][1]["content"] == "old answer", "router lines stripped"

    with_tools = chat(client, "v2", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert with_tools.choices[0].message.content == "tok0 tok1 tok2 ", "no text footer when tools are present"


def test_reasoning_style_status(start_router) -> None:
    router = start_router([fake_model("sglang", "s1")], status_style="reasoning")
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    chunks = list(chat(client, "s1", stream=True))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert "Loading s1" in reasoning and "loaded in" in reasoning
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "


def test_remote_openai_endpoint_passthrough(start_router, key_file) -> None:
    port = free_port("127.0.0.1")
    remote = subprocess.Popen(
        [
            sys.executable,
            str(FAKE_ENGINE),
            "--kind",
            "vllm",
            "--port",
            str(port),
            "--served-name",
            "gpt-remote",
            "--api-key",
            "sk-engine-secret",
            "--load-seconds",
            "0",
        ]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(base + "/health"), "remote fake to listen")
        router = start_router(
            [
                {
                    "id": "remote",
                    "backend": "openai",
                    "url": base + "/v1",
                    "served_name": "gpt-remote",
                    "api_key_file": str(key_file),
                }
            ]
        )
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
        reply = chat(client, "remote")
        assert reply.model == "remote" and reply.choices[0].message.content == "tok0 tok1 tok2 "
        assert router.health()["models"][0]["state"] == "ready"
    finally:
        remote.terminate()
        remote.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
