"""llama-server on the Unix socket the router picks (`--host ${SOCKET}`, as `make demo` runs it)."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import httpx
import openai

from tests.conftest import llama_model, wait_until


def test_engines_on_unix_sockets_serve_switch_restart_after_a_kill_and_leave_nothing(
    start_router, llama_server_bin, models_dir: Path
) -> None:
    models = [llama_model(llama_server_bin, models_dir / f"tiny-{x}.gguf", f"tiny-{x}", ctx=512) for x in "ab"]
    router = start_router(models)
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    assert client.chat.completions.create(model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    stream = client.chat.completions.create(
        model="tiny-b", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    assert [chunk.model for chunk in stream][-1] == "tiny-b"

    path = Path(router.engine_socket("tiny-b"))
    assert stat.S_ISSOCK(path.stat().st_mode)
    directory = path.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700, "only the router's user may reach the engines"
    assert "port" not in next(m for m in router.health()["models"] if m["id"] == "tiny-b")
    assert router.engine_socket("tiny-a") != str(path)

    # Killed, llama-server leaves its socket file behind; the next start must still bind there.
    os.kill(router.engine_pid("tiny-b"), signal.SIGKILL)
    wait_until(lambda: router.health()["models"][1]["state"] == "failed", "the router to see the engine die")
    assert path.exists()
    reply = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": "tiny-b", "messages": [{"role": "user", "content": "again"}], "max_tokens": 3},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert router.engine_socket("tiny-b") == str(path)

    router.stop()
    assert not directory.exists(), "the router removes its socket directory on exit"
