"""KV continuity with real llama-server (b11312, `--slot-save-path`): a conversation's cache survives an eviction."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from tests.conftest import llama_model

# ~1000 prompt tokens with the tiny models' vocabulary (about a token per character or two).
LONG = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(30))


def kv_model(binary: Path, models_dir: Path, model_id: str, **fields) -> dict:
    gguf = models_dir / f"{model_id}.gguf"
    return llama_model(binary, gguf, model_id, "--slot-save-path", "${SLOT_DIR}", ctx=2048, **fields)


def ask(url: str, model: str, messages: list[dict[str, str]]) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": 4, "temperature": 0}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def conversation(router, model: str = "tiny-a") -> tuple[dict, list[dict[str, str]]]:
    """A first turn on `model`; returns its answer and the messages of the second turn."""
    first = ask(router.url, model, [{"role": "user", "content": LONG}])
    reply = first["choices"][0]["message"]["content"]
    turn = [
        {"role": "user", "content": LONG},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"},
    ]
    return first, turn


def kv(router, model: str = "tiny-a") -> dict:
    return next(m for m in router.health()["models"] if m["id"] == model)["kv"]


def test_a_conversation_comes_back_with_its_cache_after_another_model_evicted_it(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    models = [
        kv_model(llama_server_bin, models_dir, "tiny-a"),
        llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b"),
    ]
    router = start_router(models, state_dir=str(state))
    first, second_turn = conversation(router)
    prompt = first["usage"]["prompt_tokens"]
    assert prompt > 500
    pid = router.engine_pid("tiny-a")

    ask(router.url, "tiny-b", [{"role": "user", "content": "hi"}])  # one model at a time: tiny-a is stopped
    saved = kv(router)["saved"]
    assert saved["slots"] == 1 and saved["tokens"] >= prompt and saved["bytes"] > 0
    assert Path(kv(router)["dir"]) == state / "slots" / "tiny-a"

    second = ask(router.url, "tiny-a", second_turn)
    assert router.engine_pid("tiny-a") != pid, "a new engine"
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 0.9 * prompt, f"only {cached} of the {prompt} tokens of the first turn came from the cache"
    report = kv(router)
    assert report["restored"]["tokens"] == saved["tokens"]
    assert report["reused"] == {
        "restored": saved["tokens"],
        "prompt": second["usage"]["prompt_tokens"],
        "cached": cached,
    }
    assert "last_error" not in report


def test_saves_outlive_the_router_for_the_same_engine_and_a_changed_revision_discards_them(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    b = llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b")
    router = start_router([kv_model(llama_server_bin, models_dir, "tiny-a", revision="r1"), b], state_dir=state)
    first, second_turn = conversation(router)
    ask(router.url, "tiny-b", [{"role": "user", "content": "hi"}])
    router.stop()

    again = start_router([kv_model(llama_server_bin, models_dir, "tiny-a", revision="r1"), b], state_dir=state)
    second = ask(again.url, "tiny-a", second_turn)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0.9 * first["usage"]["prompt_tokens"]
    ask(again.url, "tiny-b", [{"role": "user", "content": "hi"}])  # saved again, by the same identity
    again.stop()

    changed = start_router([kv_model(llama_server_bin, models_dir, "tiny-a", revision="r2"), b], state_dir=state)
    third = ask(changed.url, "tiny-a", second_turn)
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] < 0.1 * first["usage"]["prompt_tokens"]
    assert kv(changed)["restored"]["slots"] == 0
    assert not list((tmp_path / "state" / "slots" / "tiny-a").iterdir()), "the other revision's saves are deleted"


def test_a_save_that_fails_or_times_out_leaves_the_switch_working(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    b = llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b")
    router = start_router([kv_model(llama_server_bin, models_dir, "tiny-a"), b], state_dir=str(tmp_path / "state"))
    conversation(router)
    shutil.rmtree(kv(router)["dir"])  # llama-server cannot write there any more
    ask(router.url, "tiny-b", [{"role": "user", "content": "hi"}])
    error = kv(router)["last_error"]
    assert error["action"] == "save" and "Unable to save slot" in error["reason"]
    ask(router.url, "tiny-a", [{"role": "user", "content": "hi"}])  # and it loads again (the directory made anew)

    slow = start_router(
        [kv_model(llama_server_bin, models_dir, "tiny-a"), b], state_dir=str(tmp_path / "other"), kv_save_timeout_s=1e-6
    )
    conversation(slow)
    ask(slow.url, "tiny-b", [{"role": "user", "content": "hi"}])
    assert kv(slow)["last_error"]["reason"].startswith("timed out")
    assert slow.health()["current"] == ["tiny-b"]


def test_nothing_is_saved_with_a_budget_of_zero_nor_for_a_short_chat(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    b = llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b")
    router = start_router([kv_model(llama_server_bin, models_dir, "tiny-a"), b], state_dir=str(tmp_path), kv_budget=0)
    conversation(router)
    ask(router.url, "tiny-b", [{"role": "user", "content": "hi"}])
    assert kv(router)["saved"]["slots"] == 0
    assert not list(Path(kv(router)["dir"]).iterdir())

    short = start_router([kv_model(llama_server_bin, models_dir, "tiny-a"), b], state_dir=str(tmp_path / "short"))
    ask(short.url, "tiny-a", [{"role": "user", "content": "hi"}])  # some 20 tokens, under kv_min_tokens (256)
    ask(short.url, "tiny-b", [{"role": "user", "content": "hi"}])
    assert kv(short)["saved"]["slots"] == 0 and "last_error" not in kv(short)
