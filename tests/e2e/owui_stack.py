"""What the Open-WebUI end-to-end tests share: an offline Open-WebUI 0.12.4 process in front of a router, and
a client of Open-WebUI's own API (as its browser uses it). Not a test module; imported by the test_* files."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, RouterProcess, pid_alive, wait_until

HERE = Path(__file__).resolve().parent


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


@contextmanager
def openwebui(router: RouterProcess, key: str, work: Path) -> Iterator[Stack]:
    """An offline Open-WebUI on a free port whose one connection is `router` with `key`; killed on exit."""
    venv = openwebui_venv()
    data_dir = work / "openwebui"
    data_dir.mkdir()
    log = work / "openwebui.log"
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=openwebui_env(data_dir, router.url, key),
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


def stop_router(router: RouterProcess) -> None:
    """Stop the router; kill any engine it left behind."""
    engines = [m.get("supervisor", "") for m in router.health()["models"]] if router.proc.poll() is None else []
    router.stop()
    for pid in (int(s.removeprefix("pid ")) for s in engines if s and s.startswith("pid ")):
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def signup_admin(url: str) -> str:
    """The first account of a fresh Open-WebUI (it becomes the admin); returns its token."""
    response = httpx.post(
        url + "/api/v1/auths/signup",
        json={"name": "Admin", "email": "admin@example.com", "password": secrets.token_hex(8)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "admin"
    return body["token"]


def assert_loaded_status_line(result: dict[str, Any], model: str) -> None:
    """The router's "<model> loaded in …" status line reached the browser live (socket events) and stays in the
    message's statusHistory, while the reply text stays clean."""
    message = result["message"]
    stored = [s.get("description", "") for s in message.get("statusHistory", [])]
    live = [
        e["data"]["data"].get("description", "")
        for e in result["events"]
        if isinstance(e.get("data"), dict) and e["data"].get("type") == "status"
    ]
    print(f"status lines: stored {stored}, live {live}")
    for lines in (stored, live):
        assert any(d.startswith(f"{model} loaded in") for d in lines), (stored, live)
    assert "loaded in" not in message["content"]


def wait_loaded_view(stack: Stack, expected: set[str], models: Iterable[str]) -> dict[str, bool]:
    """Open-WebUI's view (the `loaded` flag of /api/models) of `models` once it matches `expected`."""
    wanted = set(models)
    view: dict[str, bool] = {}

    def matches() -> bool:
        nonlocal view
        view = {m: bool(info.get("loaded")) for m, info in stack.owui_models().items() if m in wanted}
        return {m for m, loaded in view.items() if loaded} == expected

    try:
        wait_until(matches, f"Open-WebUI to show {sorted(expected)} loaded", timeout=15)
    except AssertionError as error:
        raise AssertionError(f"{error}: Open-WebUI shows {view}") from None
    return view
