"""Benchmark: coming back to a long conversation after its model was swapped out (KV continuity).

Two models: A, a generated GGUF with few weights (it loads in a blink) but a wide KV cache, so that prefilling a
conversation of 8k+ tokens takes seconds here as it does on big models; B, a tiny one. A conversation on A, then
one request to B (A is stopped: one model at a time), then the conversation's next turn on A, streamed. Time to
first token (send → first content delta) of that turn:

- `resident`: the same turn with A never swapped out (llm-router);
- `llm-router, KV continuity`: `--slot-save-path ${SLOT_DIR}`, as `make demo` runs llama-server;
- `llm-router, no KV continuity`;
- `llama.cpp router`: llama-server's router mode (`--models-dir`, `--models-max 1`), same binary, files and flags.

Each case runs `--runs` times on a fresh system; the medians are reported.

    python bench/swapback.py [--runs 3] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, llama_server, process, router, wait_http

A, B = "swap-a", "swap-b"
CASES = ("resident", "llm-router, KV continuity", "llm-router, no KV continuity", "llama.cpp router")
CONTEXT = 16384
FLAGS = ["-c", str(CONTEXT), "-np", "1", "-t", "2", "--no-webui"]
PROSE = (
    "The river runs past the old mill, where the wheel has not turned for years. Children come down in summer to "
    "throw stones and count the rings they make on the water, and the miller's dog watches them from the bank. "
)


def write_models(directory: Path) -> dict[str, Path]:
    """A: 4 layers, 4 heads of 64 (a 16 KB/token KV cache, attention-bound prefill) in ~2 MB; B: the tiny default."""
    from router_app.tools.tiny_gguf import write_model

    directory.mkdir(parents=True, exist_ok=True)
    return {
        A: write_model(directory / f"{A}.gguf", name=A, seed=11, layers=4, dim=64, heads=4, head_dim=64, ctx=CONTEXT),
        B: write_model(directory / f"{B}.gguf", name=B, seed=12, ctx=CONTEXT),
    }


def conversation(tokens: int) -> list[dict[str, str]]:
    """A chat history of about `tokens` tokens (the tiny vocabulary: about a token per 1.3 characters)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a patient storyteller."}]
    turn = 0
    while sum(len(m["content"]) for m in messages) < tokens * 1.3:
        turn += 1
        messages.append({"role": "user", "content": f"Part {turn}, please. " + PROSE * 3})
        messages.append({"role": "assistant", "content": PROSE * 4})
    return messages


def first_token_s(base: str, model: str, messages: list[dict[str, str]]) -> tuple[float, dict]:
    """Send → first content delta of a streamed chat; also the final usage."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    usage: dict = {}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            choices = event.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError(f"{model}: no content in the answer")
    return first, usage


def ask(base: str, model: str, messages: list[dict[str, str]]) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


def one_case(case: str, binary: str, models: dict[str, Path], history: list[dict[str, str]], work: Path) -> dict:
    """One conversation: its first turn, B in between (unless resident), then the timed next turn."""

    def run(base: str) -> dict:
        started = time.perf_counter()
        first = ask(base, A, history)
        prefill_s = time.perf_counter() - started
        if case != "resident":
            ask(base, B, [{"role": "user", "content": "hi"}])
        reply = first["choices"][0]["message"]["content"]
        turn = [*history, {"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
        ttft, usage = first_token_s(base, A, turn)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return {
            "case": case,
            "prompt_tokens": first["usage"]["prompt_tokens"],
            "first_turn_s": round(prefill_s, 3),
            "ttft_s": round(ttft, 3),
            "cached_tokens": cached,
        }

    if case == "llama.cpp router":
        port = free_port()
        argv = [binary, "--models-dir", str(models[A].parent), "--models-max", "1", "--host", "127.0.0.1"]
        cache = work / "empty-cache"
        cache.mkdir(exist_ok=True)
        env = {"LLAMA_CACHE": str(cache), "PATH": "/usr/bin"}
        with process([*argv, "--port", str(port), *FLAGS], env=env) as proc:
            wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
            return run(f"http://127.0.0.1:{port}")
    kv = case != "llm-router, no KV continuity"
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    config = {
        "router": {"supervisor": "process", "state_dir": str(state)},
        "models": [
            {
                "id": name,
                "backend": "llamacpp",
                "command": [
                    *(binary, "-m", str(path), "-a", name, "--host", "${SOCKET}", *FLAGS),
                    *(["--slot-save-path", "${SLOT_DIR}"] if kv and name == A else []),
                ],
            }
            for name, path in models.items()
        ],
    }
    with router(config, work) as (base, _proc):
        return run(base)


def run(runs: int = 3, tokens: int = 8192) -> dict[str, object]:
    binary = llama_server()
    with tempfile.TemporaryDirectory(prefix="bench-swapback-") as tmp:
        work = Path(tmp)
        models = write_models(work / "models")
        history = conversation(tokens)
        rows = []
        for index in range(runs):
            order = CASES if index % 2 == 0 else tuple(reversed(CASES))  # neither side always on a cooler box
            for case in order:
                row = one_case(case, binary, models, history, work)
                print(json.dumps(row), flush=True)
                rows.append(row)
    medians = {case: statistics.median(r["ttft_s"] for r in rows if r["case"] == case) for case in CASES}
    return {"runs": runs, "rows": rows, "ttft_s": medians}


def report(data: dict[str, object]) -> str:
    rows: list[dict] = data["rows"]  # type: ignore[assignment]
    medians: dict[str, float] = data["ttft_s"]  # type: ignore[assignment]
    resident = medians["resident"]
    lines = [
        f"Medians of {data['runs']} runs; prompt {rows[0]['prompt_tokens']} tokens, first turn (a cold prefill) "
        f"{statistics.median(r['first_turn_s'] for r in rows):.2f} s.",
        "",
        "| case | TTFT of the next turn, s | × resident | cached prompt tokens (engine) |",
        "|---|---|---|---|",
    ]
    for case in CASES:
        cached = [r["cached_tokens"] for r in rows if r["case"] == case]
        lines.append(
            f"| {case} | {medians[case]:.3f} | {medians[case] / resident:.2f} | "
            f"{', '.join('?' if c is None else str(c) for c in cached)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    print(report(run(args.runs, args.tokens)))


if __name__ == "__main__":
    main()
