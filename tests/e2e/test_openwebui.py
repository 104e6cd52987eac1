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
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router_app.devtools.demo import DEMO_MAX_TOKENS, DEMO_MODELS, write_demo
from tests.conftest import ROOT, RouterProcess, pid_alive, wait_until

HERE = Path(__file__).resolve().parent
MODELS = [model_id for model_id, _seed, _aliases in DEMO_MODELS]
QUESTIONS = ["Hello! What can you do?", "Thanks. Tell me more about that, please."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def openwebui_venv() -> Path:
    """$OPENWEBUI_VENV, or the cached venv of scripts/openwebui-venv.sh (installed on first use)."""
    if os.environ.get("OPENWEBUI_VENV"):
        return Path(os.environ["OPENWEBUI_VENV"])
    result = subprocess.run([str(ROOT / "scripts" / "openwebui-venv.sh")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"installing Open-WebUI failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Stack:
    router: RouterProcess
    url: str  # Open-WebUI
    venv: Path
    log: Path
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, headers=self.headers, timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=120)

    def owui_models(self) -> dict[str, dict]:
        return {m["id"]: m for m in self.get("/api/models")["data"]}

    def router_loaded(self) -> set[str]:
        """Models the router reports as loaded (its own /health)."""
        return set(self.router.health()["current"])

    def chat_turn(self, model: str, turns: list[dict], chat_id: str | None) -> dict:
        """One browser-style turn, run by owui_chat.py in Open-WebUI's venv (it has python-socketio)."""
        args = {"url": self.url, "token": self.token, "model": model, "turns": turns, "chat_id": chat_id}
        result = subprocess.run(
            [str(self.venv / "bin" / "python"), str(HERE / "owui_chat.py")],
            input=json.dumps(args),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)


def openwebui_env(data_dir: Path, router_url: str, key: str) -> dict[str, str]:
    """Offline Open-WebUI (no hub downloads, no telemetry, no side tasks) on the router, provider "llama.cpp"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WEBUI_", "VIRTUAL_ENV"))}
    env.update(
        DATA_DIR=str(data_dir),
        WEBUI_SECRET_KEY=secrets.token_hex(16),
        WEBUI_AUTH="true",
        OFFLINE_MODE="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        ENABLE_OLLAMA_API="false",
        ENABLE_OPENAI_API="true",
        OPENAI_API_BASE_URLS=router_url + "/v1",
        OPENAI_API_KEYS=key,
        OPENAI_API_CONFIGS=json.dumps({"0": {"provider": "llama.cpp"}}),
        RAG_EMBEDDING_ENGINE="openai",
        ENABLE_TITLE_GENERATION="false",
        ENABLE_TAGS_GENERATION="false",
        ENABLE_FOLLOW_UP_GENERATION="false",
        ENABLE_AUTOCOMPLETE_GENERATION="false",
        ENABLE_VERSION_UPDATE_CHECK="false",
        SCARF_NO_ANALYTICS="true",
        DO_NOT_TRACK="true",
        ANONYMIZED_TELEMETRY="false",
    )
    return env


@pytest.fixture(scope="module")
def stack(llama_server_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`make demo`'s router on a free port and an offline Open-WebUI in front of it; all killed on exit."""
    venv = openwebui_venv()
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
    data_dir = work / "openwebui"
    data_dir.mkdir()
    log = work / "openwebui.log"
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=openwebui_env(data_dir, router.url, client_key),
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError("Open-WebUI exited:\n" + log.read_text()[-3000:])
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        started = time.monotonic()
        wait_until(ready, "Open-WebUI /health", timeout=240)
        print(f"\nOpen-WebUI ready in {time.monotonic() - started:.0f} s ({url}, log {log})")
        yield Stack(router=router, url=url, venv=venv, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        engines = [m.get("supervisor", "") for m in router.health()["models"]] if router.proc.poll() is None else []
        router.stop()
        for pid in (int(s.removeprefix("pid ")) for s in engines if s and s.startswith("pid ")):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_signup_admin(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/api/v1/auths/signup",
        json={"name": "Admin", "email": "admin@example.com", "password": secrets.token_hex(8)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "admin"
    stack.token = body["token"]


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
    port = stack.router.engine_port(model)
    (slot,) = httpx.get(f"http://127.0.0.1:{port}/slots", timeout=10).json()
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
    stored = [s.get("description", "") for s in message.get("statusHistory", [])]
    live = [
        e["data"]["data"].get("description", "")
        for e in result["events"]
        if isinstance(e.get("data"), dict) and e["data"].get("type") == "status"
    ]
    print(f"status lines: stored {stored}, live {live}")
    for lines in (stored, live):
        assert any(d.startswith(f"{other} loaded in") for d in lines), (stored, live)
    assert "loaded in" not in message["content"]
    assert stack.router_loaded() == {other}


def wait_loaded_view(stack: Stack, expected: set[str]) -> dict[str, bool]:
    """Open-WebUI's view (the `loaded` flag of /api/models) once it matches `expected`."""
    view: dict[str, bool] = {}

    def matches() -> bool:
        nonlocal view
        view = {m: bool(info.get("loaded")) for m, info in stack.owui_models().items() if m in MODELS}
        return {m for m, loaded in view.items() if loaded} == expected

    try:
        wait_until(matches, f"Open-WebUI to show {sorted(expected)} loaded", timeout=15)
    except AssertionError as error:
        raise AssertionError(f"{error}: Open-WebUI shows {view}") from None
    return view


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
