"""Config reload (SIGHUP, what `systemctl reload llm-router` sends) with real llama-server engines."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import llama_model, wait_until

pytestmark = pytest.mark.llama


def chat(url: str, model: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_reload_keeps_unchanged_models_and_their_requests(start_router, llama_server_bin, models_dir: Path) -> None:
    def model(name: str, gguf: str, ctx: int = 256) -> dict:
        return llama_model(llama_server_bin, models_dir / gguf, name, ctx=ctx)

    memory = {"memory": {"source": "declared", "devices": {"cpu": "4GiB"}}}
    models = [
        model("steady", "tiny-long.gguf", ctx=32768),
        model("changes", "tiny-a.gguf"),
        model("goes", "tiny-b.gguf"),
    ]
    router = start_router(models, **memory)
    for name in ("steady", "changes", "goes"):
        assert chat(router.url, name).status_code == 200
    steady_pid, old_pid = router.engine_pid("steady"), router.engine_pid("changes")

    with ThreadPoolExecutor(1) as pool:
        long_answer = pool.submit(chat, router.url, "steady", 6000)
        wait_until(lambda: next(m for m in router.health()["models"] if m["id"] == "steady")["inflight"], "busy")
        config = yaml.safe_load(router.config_path.read_text())
        config["models"] = [models[0], model("changes", "tiny-a.gguf", ctx=512), model("new", "tiny-b.gguf")]
        router.config_path.write_text(yaml.safe_dump(config))
        router.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any("config reload done" in line for line in router.log), "reload")
        answer = long_answer.result()
    assert answer.status_code == 200, "the unchanged model's answer in progress was not cut"
    assert answer.json()["usage"]["completion_tokens"] > 100
    assert router.engine_pid("steady") == steady_pid, "the unchanged model kept its engine"
    assert any("1 unchanged, 1 changed (changes), 1 added (new), 1 removed (goes)" in line for line in router.log)

    assert chat(router.url, "goes").status_code == 404
    assert chat(router.url, "new").status_code == 200
    assert chat(router.url, "changes").status_code == 200
    assert router.engine_pid("changes") != old_pid, "the changed model runs its new definition"
    argv = psutil.Process(router.engine_pid("changes")).cmdline()
    assert argv[argv.index("-c") + 1] == "512", argv
    assert sorted(m["id"] for m in router.health()["models"]) == ["changes", "new", "steady"]


def test_an_invalid_config_is_refused_and_the_running_one_kept(start_router, llama_server_bin, models_dir) -> None:
    router = start_router([llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", ctx=256)])
    assert chat(router.url, "tiny-a").status_code == 200
    pid = router.engine_pid("tiny-a")
    router.config_path.write_text("router: {port: 1}\nmodels:\n  - id: broken\n    backend: nonsense\n")
    router.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("config reload refused" in line for line in router.log), "refusal")
    assert any("backend" in line and "nonsense" in line for line in router.log)
    assert chat(router.url, "tiny-a").status_code == 200 and router.engine_pid("tiny-a") == pid


def test_a_reload_swaps_keys_and_settings_together(start_router, llama_server_bin, models_dir, tmp_path) -> None:
    """Keys are re-read and settings that need no restart apply at once: the live config is replaced whole."""
    keys = tmp_path / "clients.keys"
    keys.write_text("sk-old\n")
    model = llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", ctx=256)
    router = start_router([model], api_key_files=[str(keys)], max_request_size=4096)
    url = router.url + "/v1/models"
    assert httpx.get(url, headers={"Authorization": "Bearer sk-old"}).status_code == 200
    big = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "user": "x" * 8000}
    headers = {"Authorization": "Bearer sk-old"}
    assert httpx.post(router.url + "/v1/chat/completions", json=big, headers=headers).status_code == 413
    keys.write_text("sk-new\n")
    config = yaml.safe_load(router.config_path.read_text())
    config["router"]["max_request_size"] = 1 << 20
    router.config_path.write_text(yaml.safe_dump(config))
    router.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("config reload done" in line for line in router.log), "reload")
    assert httpx.get(url, headers={"Authorization": "Bearer sk-old"}).status_code == 401
    headers = {"Authorization": "Bearer sk-new"}
    assert httpx.get(url, headers=headers).status_code == 200
    answer = httpx.post(router.url + "/v1/chat/completions", json=big, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
