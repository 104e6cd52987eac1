"""End to end: a real Open-WebUI 0.12.4 in front of `make demo`'s router, driven through Open-WebUI's own API.

The connection has provider "llama.cpp", so Open-WebUI reads each model's `status.value` from the router's
`/v1/models` and drives the router's `/models/load` and `/models/unload` (open_webui/routers/openai.py:
MODEL_MANAGEMENT_ENDPOINTS, get_provider_model_loaded_state; open_webui/main.py: POST /api/models/unload).
Chats are sent as the browser sends them (socket.io session, built-in tools in every request), see owui_chat.py.

The steps run in order and share one router and one Open-WebUI; each is its own test so each reports
PASSED/FAILED on its own (`make e2e`). Opt-in: collected only with LLM_ROUTER_E2E=1 (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from router_app.tools.demo import DEMO_MAX_TOKENS, DEMO_MODELS, write_demo
from tests.conftest import RouterProcess, wait_until
from tests.e2e.owui_stack import Stack, assert_loaded_status_line, openwebui, signup_admin, stop_router
from tests.e2e.owui_stack import wait_loaded_view as _wait_loaded_view

MODELS = [model_id for model_id, _seed, _aliases in DEMO_MODELS]
QUESTIONS = ["Hello! What can you do?", "Thanks. Tell me more about that, please."]


@pytest.fixture(scope="module")
def stack(llama_server_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`make demo`'s router on a free port and an offline Open-WebUI in front of it; all killed on exit."""
    work = tmp_path_factory.mktemp("e2e")
    config_path = write_demo(work / "demo", llama_server_bin, port=0)
    # Keys on, as deployed: Open-WebUI holds a client key, which router.model_control (default "clients") lets
    # load and unload; an admin key exists but Open-WebUI does not get it.
    client_key, admin_key = secrets.token_hex(16), secrets.token_hex(16)
    (work / "client.keys").write_text(client_key + "\n")
    (work / "admin.key").write_text(admin_key + "\n")
    config = yaml.safe_load(config_path.read_text())
    config["router"].update(api_key_files=[str(work / "client.keys")], admin_key_file=str(work / "admin.key"))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    router = RouterProcess(config_path)
    try:
        with openwebui(router, client_key, work) as stack:
            yield stack
    finally:
        stop_router(router)


def test_signup_admin(stack: Stack) -> None:
    stack.token = signup_admin(stack.url)


def test_models_listed(stack: Stack) -> None:
    # The router wants a key here (so Open-WebUI's own client key is what lists, loads and ejects below).
    assert httpx.get(stack.router.url + "/v1/models", timeout=10).status_code == 401
    models = stack.owui_models()
    for model_id in MODELS:
        assert model_id in models, sorted(models)
        assert models[model_id]["urlIdx"] == 0
        assert models[model_id]["provider"] == "llama.cpp"


@pytest.mark.parametrize("model", MODELS)
def test_two_turn_chat(stack: Stack, model: str) -> None:
    """Two turns in one chat, with Open-WebUI's built-in tools in each request (as its browser sends them)."""
    turns: list[dict] = []
    chat_id = None
    for question in QUESTIONS:
        turns.append({"id": f"u{len(turns)}", "role": "user", "content": question})
        result = stack.chat_turn(model, turns, chat_id)
        message = result["message"]
        assert message.get("done") and not message.get("error"), message
        assert message["content"].strip(), message
        chat_id = result["chat_id"]
        turns.append({"id": result["id"], "role": "assistant", "content": message["content"]})
    # Both turns are stored in one chat.
    stored = stack.get(f"/api/v1/chats/{chat_id}")["chat"]["history"]["messages"]
    assert [m["role"] for m in stored.values()].count("assistant") == 2
    # The engine's view of the last request (llama-server GET /slots, tools/server/server.cpp:290; fields in
    # server-context.cpp:670): the built-in tools took context, and the demo's default max_tokens applied.
    (slot,) = stack.router.engine(model).get("/slots", timeout=10).json()
    print(f"{model}: turn 2 prompt {slot['n_prompt_tokens']} tokens of {slot['n_ctx']}")
    assert slot["n_prompt_tokens"] > 5000, slot
    assert slot["params"]["max_tokens"] == DEMO_MAX_TOKENS, slot["params"]


def test_switch_shows_status_line(stack: Stack) -> None:
    """A chat on the model that is not loaded: the router's status line reaches the browser (socket.io `status`
    events, drawn live) and stays in the message's statusHistory, while the reply text stays clean."""
    loaded = stack.router_loaded()
    other = next(m for m in MODELS if m not in loaded)
    result = stack.chat_turn(other, [{"id": "s0", "role": "user", "content": "Hi again"}], None)
    message = result["message"]
    assert message.get("done") and not message.get("error"), message
    assert_loaded_status_line(result, other)
    assert stack.router_loaded() == {other}


def wait_loaded_view(stack: Stack, expected: set[str]) -> dict[str, bool]:
    """Open-WebUI's view (the `loaded` flag of /api/models) of the demo's models once it matches `expected`."""
    return _wait_loaded_view(stack, expected, MODELS)


def test_loaded_view_matches_router(stack: Stack) -> None:
    loaded = stack.router_loaded()
    assert len(loaded) == 1, loaded
    view = wait_loaded_view(stack, loaded)
    assert set(view) == set(MODELS)


def test_eject_through_openwebui(stack: Stack) -> None:
    """The eject button: POST /api/models/unload -> the router's POST /models/unload."""
    (loaded,) = stack.router_loaded()
    response = stack.post("/api/models/unload", {"model": loaded})
    assert response.status_code == 200, response.text
    wait_until(lambda: not stack.router_loaded(), f"router to unload {loaded}", timeout=30)
    wait_loaded_view(stack, set())


def test_load_through_openwebui(stack: Stack) -> None:
    """The load button: POST /openai/models/0/load -> the router's POST /models/load; the admin page's live view,
    GET /openai/models/0/sse (the router's /models/sse relayed), sees the model become loaded."""
    target = MODELS[0]
    events: list[dict] = []
    subscribed = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", stack.url + "/openai/models/0/sse", headers=stack.headers, timeout=60) as stream:
            subscribed.set()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("model") == target and events[-1]["data"].get("status") == "loaded":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(30), "Open-WebUI's /openai/models/0/sse did not answer"
    response = stack.post("/openai/models/0/load", {"model": target})
    assert response.status_code == 200, response.text
    wait_until(lambda: stack.router_loaded() == {target}, f"router to load {target}", timeout=60)
    wait_loaded_view(stack, {target})
    listener.join(30)
    print(f"SSE through Open-WebUI: {events}")
    assert any(e.get("model") == target and e["data"].get("status") == "loaded" for e in events), events
