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
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router_app.engines.instance import free_port
from tests.conftest import FAKE_ENGINE, fake_model, sse_events, wait_until


def stats(router, model_id: str) -> dict:
    """The fake's introspection; with the test's engine key, which RequireKey demands on every route."""
    url = f"http://127.0.0.1:{router.engine_port(model_id)}/fake/stats"
    return httpx.get(url, headers={"Authorization": "Bearer sk-engine-secret"}, timeout=10).json()


def chat(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, **kwargs
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "engine.key"
    path.write_text("sk-engine-secret\n")
    return path


ROLE_FILES = Path(__file__).resolve().parents[2] / "roles/llm_router/files"
UNAUTHORIZED = {"error": "Unauthorized"}  # vllm 0.32.0 serve/middleware/authenticate.py:60, sglang utils/auth.py


def vllm_keyed(model_id: str, key_file: Path, **fields) -> dict:
    """A vLLM model as the role starts it: VLLM_API_KEY from the key file (start script) and
    `--middleware llm_router_engine_auth.RequireKey` (roles/llm_router/files) found on PYTHONPATH."""
    env = {"VLLM_API_KEY": key_file.read_text().strip(), "PYTHONPATH": str(ROLE_FILES)}
    return fake_model(
        "vllm",
        model_id,
        "--middleware",
        "llm_router_engine_auth.RequireKey",
        api_key_file=str(key_file),
        env=env,
        **fields,
    )


def engine_answers(router, model_id: str, method: str, path: str, key: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"http://127.0.0.1:{router.engine_port(model_id)}{path}"
    response = httpx.request(method, url, headers=headers, timeout=10)
    return response.status_code, response.json() if response.content else None


def test_vllm_api_key_alone_leaves_sleep_open() -> None:
    """Why the role adds a middleware: vLLM's AuthenticationMiddleware checks only GUARDED_PREFIX paths
    ("/v1", "/v2", "/inference", "/cohere"; vllm 0.32.0 serve/middleware/authenticate.py:11,59; 0.19.1
    entrypoints/openai/server_utils.py:80 only "/v1"), and /sleep, /wake_up, /is_sleeping are registered at the
    root (0.32.0 serve/dev/sleep/api_router.py:26,44,58)."""
    port = free_port("127.0.0.1")
    engine = subprocess.Popen(
        [sys.executable, str(FAKE_ENGINE), "--kind", "vllm", "--port", str(port), "--load-seconds", "0"],
        env={**os.environ, "VLLM_API_KEY": "sk-engine-secret"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(base + "/health"), "vLLM fake to listen")
        denied = httpx.post(base + "/v1/completions", json={"prompt": "x"}, timeout=10)
        assert (denied.status_code, denied.json()) == (401, UNAUTHORIZED)
        assert httpx.post(base + "/sleep", params={"level": "1"}, timeout=10).status_code == 200
        assert httpx.get(base + "/is_sleeping", timeout=10).json() == {"is_sleeping": True}
    finally:
        engine.terminate()
        engine.wait(10)


def test_vllm_engine_key_on_every_route_and_sleep_mode(start_router, key_file) -> None:
    """The role's vLLM: the key in VLLM_API_KEY (vllm 0.32.0 serve/middleware/register.py:32-36, envs.py:820)
    plus files/llm_router_engine_auth.RequireKey via `--middleware` (0.32.0 entrypoints/launchers/cli_args.py:
    351-356 and serve/middleware/register.py:65-69; 0.19.1 entrypoints/openai/cli_args.py:260 and
    api_server.py:295-301): no route answers without the key, and the router's probes, sleep and wake carry it."""
    router = start_router(
        [
            vllm_keyed("v1", key_file, evict="sleep", group="gpu0"),
            vllm_keyed("v2", key_file, evict="sleep", group="gpu0"),
        ]
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    assert chat(client, "v1").choices[0].message.content == "tok0 tok1 tok2 "
    pid = router.engine_pid("v1")
    for method, path in [
        ("POST", "/sleep"),
        ("POST", "/wake_up"),
        ("GET", "/is_sleeping"),
        ("GET", "/health"),
        ("POST", "/v1/completions"),
    ]:
        assert engine_answers(router, "v1", method, path) == (401, UNAUTHORIZED), path
        assert engine_answers(router, "v1", method, path, key="unused") == (401, UNAUTHORIZED), path
    assert engine_answers(router, "v1", "GET", "/is_sleeping", key="sk-engine-secret") == (200, {"is_sleeping": False})

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
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
    assert chat(client, "s2").model == "s2"
    assert stats(router, "Qwen/Qwen2.5-7B")["sleeps"] == 1
    assert chat(client, "Qwen/Qwen2.5-7B").model == "Qwen/Qwen2.5-7B"
    assert stats(router, "Qwen/Qwen2.5-7B")["wakes"] == 1 and stats(router, "s2")["sleeps"] == 1
    health = httpx.get(router.url + "/health/Qwen%2FQwen2.5-7B").json()
    assert health["id"] == "Qwen/Qwen2.5-7B" and health["state"] == "ready"


def test_sglang_engine_key_from_config_file_and_memory_release(start_router, key_file, tmp_path) -> None:
    """The role's SGLang: `--config <yaml>` with `api-key` (sglang 0.5.23 srt/server_args.py:683-689 merges it
    into the flags, srt/utils/server_args_config_parser.py; 0.5.10.post1 server_args.py:6530-6536). Its
    middleware (srt/utils/auth.py 0.5.23:74-213) leaves /health* public and guards everything else, the
    ADMIN_OPTIONAL memory routes (http_server.py 0.5.23:1575-1596) with the api key when no admin key is set;
    the router's release/resume calls carry the key."""
    config = tmp_path / "sglang.yaml"
    config.write_text('api-key: "sk-engine-secret"\n')
    router = start_router(
        [
            fake_model("sglang", "s1", "--config", str(config), api_key_file=str(key_file), evict="sleep"),
            fake_model("sglang", "s2", "--config", str(config), api_key_file=str(key_file), evict="sleep"),
        ]
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    assert chat(client, "s1").model == "s1"
    assert chat(client, "s2").model == "s2"
    assert chat(client, "s1").model == "s1"
    assert stats(router, "s1")["sleeps"] == 1 and stats(router, "s1")["wakes"] == 1
    assert stats(router, "s2")["sleeps"] == 1
    assert set(stats(router, "s1")["auth_seen"]) == {"sk-engine-secret"}, "every guarded call had the key"
    for method, path in [
        ("POST", "/release_memory_occupation"),
        ("GET", "/resume_memory_occupation"),
        ("POST", "/v1/chat/completions"),
    ]:
        assert engine_answers(router, "s1", method, path) == (401, UNAUTHORIZED), path
        assert engine_answers(router, "s1", method, path, key="unused") == (401, UNAUTHORIZED), path
    assert engine_answers(router, "s1", "GET", "/health")[0] == 200  # public in SGLang (auth.py:101-106)


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
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
    assert "Loading s1" in reasoning and "loaded in" in reasoning
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "


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


def test_a_cold_load_samples_once_so_jit_kernels_are_built_inside_it(start_router) -> None:
    """SGLang whose FlashInfer JIT cannot run (no `ninja` on PATH, engine-audit-2 #2) answers greedy requests, and
    dies at the first sampled one: the load must fail (with the engine's last words), not the first user's chat."""
    router = start_router(
        [fake_model("sglang", "s1", "--sampling-jit-broken"), fake_model("vllm", "v1")], load_timeout_s=60
    )
    response = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": "s1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=60,
    )
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "s1: engine exited" in message and "No such file or directory: 'ninja'" in message, message
    assert httpx.get(router.url + "/health/s1", timeout=10).json()["state"] == "failed"
    # An engine that samples fine: the last request of its load is the sampled probe (engines.SAMPLED_PROBE).
    assert httpx.post(router.url + "/models/load", json={"model": "v1"}, timeout=60).status_code == 200
    wait_until(lambda: httpx.get(router.url + "/health/v1", timeout=10).json()["state"] == "ready", "v1 loaded")
    probe = stats(router, "v1")["last_body"]
    assert (probe["temperature"], probe["top_p"], probe["top_k"]) == (0.7, 0.9, 40), probe


def test_speed_report_counts_generation_not_the_wait_for_a_load(start_router) -> None:
    """vLLM's usage has no `timings`, so the router times the answer itself: from when the engine got the request,
    not from when the client sent it (a stream after a 57 s cold load of real vLLM said 0.1 tok/s)."""
    router = start_router([fake_model("vllm", "v1", "--load-seconds", "3")])
    body = {"model": "v1", "stream": True, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=60) as response:
        events = [json.loads(p) for p in sse_events(response.iter_lines()) if p != "[DONE]"]
    statuses = [e["event"]["data"]["description"] for e in events if "event" in e]
    report = next(s for s in statuses if "tok/s" in s)
    seconds = float(report.rsplit(" in ", 1)[1].removesuffix(" s"))
    load_s = httpx.get(router.url + "/health/v1", timeout=10).json()["last_load_s"]
    # A bound, not a speed: a report that counted the wait is at least the load (the exact clock:
    # tests/unit/test_speed_report.py).
    assert seconds < load_s, (report, load_s)
