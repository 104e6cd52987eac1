"""Shared fixtures: the real llama-server binary, tiny GGUF models, and a router process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import Phase, settings

from router_app.tools.demo import llama_server_command

# `make mutation` runs every mutant against the same examples (derandomized), fewer of them, and does not shrink
# the failures it finds (a killed mutant only needs one).
settings.register_profile("mutation", derandomize=True, max_examples=50, phases=[Phase.explicit, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENGINE = ROOT / "tests" / "fakes" / "fake_engine.py"


@pytest.fixture
def anyio_backend() -> str:
    """The router runs on asyncio: async tests too (trio is installed, as selenium's dependency, but never used)."""
    return "asyncio"


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The pinned static llama-server: $LLAMA_SERVER_BIN, or built (and cached) by scripts/build-llama-server.sh."""
    env_bin = os.environ.get("LLAMA_SERVER_BIN")
    if env_bin:
        return Path(env_bin)
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-llama-server.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"building llama-server failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-a, tiny-b (different seeds) and tiny-long (32k context, for long generations)."""
    from router_app.tools.tiny_gguf import write_model

    directory = tmp_path_factory.mktemp("models")
    write_model(directory / "tiny-a.gguf", name="tiny-a", seed=1)
    write_model(directory / "tiny-b.gguf", name="tiny-b", seed=2)
    write_model(directory / "tiny-long.gguf", name="tiny-long", seed=3, ctx=32768)
    return directory


def llama_model(
    binary: Path, gguf: Path, model_id: str, *extra: str, ctx: int = 1024, on_socket: bool = True, **fields: Any
) -> dict:
    """A models: entry that runs llama-server as the demo does (a Unix socket), or on a free port."""
    command = [*llama_server_command(binary, gguf, model_id, ctx, on_socket), *extra]
    return {"id": model_id, "backend": "llamacpp", "command": command, **fields}


def fake_model(kind: str, model_id: str, *extra: str, **fields: Any) -> dict:
    """A models: entry that runs the protocol fake of an engine that needs a GPU."""
    command = [
        sys.executable,
        str(FAKE_ENGINE),
        "--kind",
        kind,
        "--port",
        "${PORT}",
        "--served-name",
        "${SERVED_NAME}",
        *extra,
    ]
    return {"id": model_id, "backend": kind, "command": command, **fields}


class RouterProcess:
    """`llm-router serve` as a real subprocess on a free port, with its log kept for assertions."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router_app.cli", "serve", "--config", str(config_path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        self._port_found = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._port_found.wait(60) or not self.port:
            self.stop()
            raise RuntimeError("router did not start:\n" + "\n".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            match = re.search(r"listening on http://[^:]+:(\d+)/v1", line)
            if match:
                self.port = int(match.group(1))
                self._port_found.set()
        self._port_found.set()

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def engine_pid(self, model_id: str) -> int:
        for model in self.health()["models"]:
            if model["id"] == model_id:
                return int(model["supervisor"].removeprefix("pid "))
        raise KeyError(model_id)

    def engine_port(self, model_id: str) -> int:
        return int(next(m for m in self.health()["models"] if m["id"] == model_id)["port"])

    def engine_socket(self, model_id: str) -> str:
        return str(next(m for m in self.health()["models"] if m["id"] == model_id)["socket"])

    def engine(self, model_id: str) -> httpx.Client:
        """A client to the model's engine itself, past the router (on its Unix socket or its port)."""
        model = next(m for m in self.health()["models"] if m["id"] == model_id)
        if "socket" in model:
            return httpx.Client(base_url="http://localhost", transport=httpx.HTTPTransport(uds=model["socket"]))
        return httpx.Client(base_url=f"http://127.0.0.1:{model['port']}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[Any]:
    """Factory: start_router(models, **router_settings) -> RouterProcess; stopped (engines too) at teardown."""
    routers: list[RouterProcess] = []

    def start(models: list[dict], **router: Any) -> RouterProcess:
        config = {"router": {"progress_interval_s": 0.5, **router}, "models": models}
        path = tmp_path / f"config-{len(routers)}.yml"
        path.write_text(yaml.safe_dump(config))
        routers.append(RouterProcess(path))
        return routers[-1]

    yield start
    for router in routers:
        pids = []
        if router.proc.poll() is None:
            # A broken /health must not leave the router running.
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                pids = [
                    int(m["supervisor"].removeprefix("pid "))
                    for m in router.health()["models"]
                    if m["state"] != "stopped" and m.get("supervisor", "").startswith("pid ")
                ]
        router.stop()
        for pid in pids:
            assert not pid_alive(pid), f"engine pid {pid} outlived the router"


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll `predicate` with backoff until it returns a truthy value (the deadline only guards hangs)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def sse_events(lines: Any) -> Iterator[str]:
    """Payloads of `data:` lines of an SSE stream (httpx iter_lines)."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()
