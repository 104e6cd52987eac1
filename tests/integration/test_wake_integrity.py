"""Wake integrity and the engines' load/sleep protocols, through the router and the protocol fakes.

A wake must never silently serve other weights: SGLang resumes its weights region without its content unless it
runs with `--enable-weights-cpu-backup` (engine-audit #5: sglang 0.5.19 load_model_utils.py:268-287,
weight_updater.py:257-277). The fake's `--wake-garbage` answers differently after a wake; the router must notice
with its fixed greedy probe and restart the engine cold.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router_app.config import ModelConfig
from router_app.engines.adapters import Health
from router_app.engines.adapters.tabbyapi import TabbyAPIAdapter
from router_app.engines.instance import free_port
from tests.conftest import FAKE_ENGINE, fake_model, wait_until


def stats(router, model_id: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{router.engine_port(model_id)}/fake/stats", timeout=10).json()


def ask(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    return reply.choices[0].message.content


def model_health(router, model_id: str) -> dict:
    return httpx.get(f"{router.url}/health/{model_id}", timeout=10).json()


def sleepers(kind: str, tmp_path: Path, first: tuple[str, ...], **fields) -> list[dict]:
    """Two models of `kind` in one GPU group, evicted by sleep; `first` are extra fake options of the first."""
    extra: dict[str, tuple[str, ...]] = {"a": first, "b": ()}
    entry = {"evict": "sleep", "group": "gpu0", **fields}
    if kind == "tabbyapi":
        tokens = tmp_path / "api_tokens.yml"
        tokens.write_text(yaml.safe_dump({"api_key": "tabby-api", "admin_key": "tabby-admin"}))
        entry["api_tokens_file"] = str(tokens)
        return [
            fake_model(
                kind,
                mid,
                *("--api-tokens", str(tokens), "--model-name", f"Model-{mid}", *extra[mid]),
                tabby_model_name=f"Model-{mid}",
                **entry,
            )
            for mid in ("a", "b")
        ]
    return [fake_model(kind, mid, *extra[mid], **entry) for mid in ("a", "b")]


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tabbyapi"])
def test_wake_with_other_weights_restarts_cold_and_a_good_wake_does_not(start_router, tmp_path, kind) -> None:
    router = start_router(sleepers(kind, tmp_path, ("--wake-garbage",)))
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    assert ask(client, "a") == "tok0 tok1 tok2 "
    pid_a = router.engine_pid("a")
    assert ask(client, "b") == "tok0 tok1 tok2 "
    pid_b = router.engine_pid("b")
    assert stats(router, "a")["sleeps"] == 1

    # a wakes with other weights: detected by the probe, restarted cold, the request still gets the right answer.
    assert ask(client, "a") == "tok0 tok1 tok2 "
    assert router.engine_pid("a") != pid_a, "the engine was restarted"
    assert stats(router, "a")["wakes"] == 0 and stats(router, "a")["garbage"] is False, "a fresh process"
    warning = [line for line in router.log if "WARNING" in line and "wake-integrity probe expected" in line]
    assert len(warning) == 1, router.log
    expected_got = r"model a: woke with different weights: .*expected 'tok0 .*', got 'zap0 .*'; restarting"
    assert re.search(expected_got, warning[0])
    health = model_health(router, "a")
    assert health["state"] == "ready" and health["wake_integrity_restarts"] == 1
    assert "expected 'tok0" in health["last_wake_integrity_restart"]
    metrics = httpx.get(router.url + "/metrics", timeout=10).text
    assert 'llm_router_wake_integrity_restarts_total{model="a"} 1.0' in metrics

    # b wakes correctly: same process, not restarted.
    assert ask(client, "b") == "tok0 tok1 tok2 "
    assert router.engine_pid("b") == pid_b, "a good wake keeps the process"
    assert stats(router, "b")["wakes"] == 1
    assert "wake_integrity_restarts" not in model_health(router, "b")
    assert len([line for line in router.log if "wake-integrity probe expected" in line]) == 1

    if kind == "sglang":
        # release/resume take {}: every memory type incl. cuda_graph (sglang/srt/constants.py:6-10).
        assert stats(router, "b")["memory_bodies"] == [{}, {}] and stats(router, "b")["released"] == []
        assert stats(router, "a")["released"] == ["cuda_graph", "kv_cache", "weights"]
    if kind == "tabbyapi":
        events = stats(router, "b")["load_events"]
        assert events[-1] == {"model_type": "model", "module": 3, "modules": 3, "status": "finished"}


def test_one_flipped_probe_after_a_wake_is_asked_again_not_restarted(start_router, tmp_path) -> None:
    router = start_router(sleepers("sglang", tmp_path, ("--wake-glitch",)))
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    ask(client, "a")
    pid_a = router.engine_pid("a")
    ask(client, "b")
    assert ask(client, "a") == "tok0 tok1 tok2 "
    assert router.engine_pid("a") == pid_a and stats(router, "a")["wakes"] == 1
    assert any("answered 'zap0" in line and "once, then as expected" in line for line in router.log)
    assert "wake_integrity_restarts" not in model_health(router, "a")


def test_nondeterministic_engine_leaves_the_fingerprint_unknown(start_router, tmp_path) -> None:
    router = start_router(sleepers("vllm", tmp_path, ("--nondeterministic", "--wake-garbage")))
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    ask(client, "a")
    pid_a = router.engine_pid("a")
    ask(client, "b")
    ask(client, "a")
    assert router.engine_pid("a") == pid_a, "unknown fingerprint: the wake is not judged, never a restart"
    assert any("differently on a cold engine" in line and "fingerprint unknown" in line for line in router.log)
    assert any("fingerprint unknown, not checked" in line for line in router.log)


def test_tabbyapi_failed_load_fails_the_switch_at_once(start_router, tmp_path) -> None:
    message = "CUDA out of memory. Tried to allocate 1.50 GiB"
    router = start_router(sleepers("tabbyapi", tmp_path, ("--fail-load", message), load_timeout_s=600))
    # The load timeout is 600 s: a failure that waited for it would end the client's 60 s, not this 503.
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    ask(client, "a")
    ask(client, "b")
    with pytest.raises(openai.APIStatusError) as failed:
        ask(client, "a")
    assert failed.value.status_code == 503 and f"TabbyAPI load of Model-a failed: {message}" in str(failed.value)
    health = model_health(router, "a")
    assert health["state"] == "failed" and message in health["last_error"]
    assert ask(client, "b") == "tok0 tok1 tok2 ", "the group stays usable"


def test_tabbyapi_without_a_model_answers_503_and_the_adapter_waits(tmp_path) -> None:
    """check_model_container: 503 on /v1/model and /v1/model/unload with no model (tabbyAPI common/model.py:298-307)."""
    tokens = tmp_path / "api_tokens.yml"
    tokens.write_text(yaml.safe_dump({"api_key": "k", "admin_key": "adm"}))
    port = free_port("127.0.0.1")
    fake = subprocess.Popen(
        [sys.executable, str(FAKE_ENGINE), "--kind", "tabbyapi", "--port", str(port), "--api-tokens", str(tokens)]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(base + "/health"), "tabbyapi fake to listen")
        model = httpx.get(base + "/v1/model", headers={"x-api-key": "k"}, timeout=5)
        assert model.status_code == 503 and model.json() == {"detail": "No models are currently loaded."}
        unload = httpx.post(base + "/v1/model/unload", headers={"x-admin-key": "adm"}, timeout=5)
        assert unload.status_code == 503

        config = ModelConfig(id="t", backend="tabbyapi", port=port, api_tokens_file=tokens, tabby_model_name="M")

        async def scenario() -> list[object]:
            async with httpx.AsyncClient() as client:
                adapter = TabbyAPIAdapter(config, client)
                before = await adapter.health()
                await adapter.sleep()  # 503 = nothing loaded = asleep already
                await adapter.wake()
                return [before, await adapter.health()]

        assert asyncio.run(scenario()) == [Health.NOT_YET, Health.READY]
    finally:
        fake.terminate()
        fake.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
