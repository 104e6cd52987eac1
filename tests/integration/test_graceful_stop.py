"""SIGTERM (systemctl stop/restart, a role upgrade): the router stops accepting, lets the answers in flight finish
within `router.shutdown_grace_s`, ends its endless status streams at once, then stops its engines and exits.

The answer has to outlast the old 5 s cut-off, which a real llama-server on a tiny model never does; the vLLM
protocol fake's `--token-delay` paces it (the router's shutdown is what is tested, not the engine).
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import fake_model, pid_alive, wait_until

pytestmark = pytest.mark.llama


class Stream(threading.Thread):
    """Reads one streamed response to its end in the background; `lines` as they come, `ended_at` when done."""

    def __init__(self, method: str, url: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.method, self.url, self.kwargs = method, url, kwargs
        self.lines: list[str] = []
        self.status: int | None = None
        self.ended_at: float | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream(self.method, self.url, timeout=120, **self.kwargs) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.append(line)
        except httpx.HTTPError as exc:
            self.error = exc
        self.ended_at = time.monotonic()


def tokens(lines: list[str]) -> int:
    """Content deltas among a chat stream's `data:` lines."""
    chunks = [json.loads(line[6:]) for line in list(lines) if line.startswith("data: {")]
    return sum(1 for c in chunks if c.get("choices") and c["choices"][0].get("delta", {}).get("content"))


def test_sigterm_lets_the_answer_finish_and_ends_the_status_streams(start_router) -> None:
    router = start_router([fake_model("vllm", "slow", "--token-delay", "0.5")], shutdown_grace_s=60)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}
    answer = Stream("POST", router.url + "/v1/chat/completions", json=body)
    wait_until(lambda: tokens(answer.lines), "the first token")
    engine = router.engine_pid("slow")
    feeds = [Stream("GET", router.url + "/models/sse"), Stream("GET", router.url + "/console/events")]
    wait_until(lambda: all(feed.lines for feed in feeds), "both status feeds open")

    router.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: all(feed.ended_at for feed in feeds), "the status feeds ended by the shutdown", 30)
    assert answer.ended_at is None, "the status feeds ended before the answer, which is still streaming"
    try:
        refused = httpx.get(router.url + "/health", timeout=5).status_code
    except httpx.TransportError:
        refused = None
    assert refused is None, "a stopping router accepts no new connection"

    answer.join(60)
    assert answer.error is None and answer.status == 200
    assert answer.lines[-2:] == ["data: [DONE]", ""] or answer.lines[-1] == "data: [DONE]", answer.lines[-3:]
    assert tokens(answer.lines) == 16, f"the answer was cut after {tokens(answer.lines)} of 16 tokens"
    assert router.proc.wait(30) == -signal.SIGTERM  # uvicorn re-raises what it handled; systemd counts it clean
    assert not pid_alive(engine), "the engine was stopped after the answer"


def test_an_answer_longer_than_the_grace_is_cut_and_the_router_exits(start_router) -> None:
    router = start_router([fake_model("vllm", "slow", "--token-delay", "0.5")], shutdown_grace_s=1)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
    answer = Stream("POST", router.url + "/v1/chat/completions", json=body)
    wait_until(lambda: tokens(answer.lines), "the first token")
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(30) == -signal.SIGTERM  # uvicorn re-raises what it handled; systemd counts it clean
    answer.join(30)
    assert "data: [DONE]" not in answer.lines, "200 tokens at 2/s cannot finish in a 1 s grace"
