"""Benchmark 3: what a model switch costs on top of the engine's own start.

Direct: start llama-server, poll /health (2 ms backoff start) until 200, then time the first token
of a streaming request: start-to-ready + first token. Through the router (tiny-a resident): a
streaming request for tiny-b, timed to its first token, which includes stopping tiny-a, starting
tiny-b, the readiness probe and the relay. Medians over repeated alternating runs.

    python bench/switch.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, llama_command, llama_server, median, process, router, tiny_models, wait_http


def first_token(url: str, model: str) -> float:
    """Seconds from sending a streaming chat request to its first content token."""
    body = {"model": model, "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    started = time.perf_counter()
    elapsed = None
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        for line in response.iter_lines():  # read to the end, so the engine is idle afterwards
            if elapsed is None and line.startswith("data: {") and '"event"' not in line:
                event = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                    elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError("no token")
    return elapsed


def direct_cold_start(binary: str, model: Path) -> tuple[float, float]:
    port = free_port()
    started = time.perf_counter()
    with process(llama_command(binary, model, "tiny-b", str(port))) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        ready = time.perf_counter() - started
        token = first_token(f"http://127.0.0.1:{port}/v1/chat/completions", "tiny-b")
    return ready, token


def run(rounds: int = 10) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-switch-"))
    models = tiny_models(workdir)
    binary = llama_server()
    direct = [direct_cold_start(binary, models["tiny-b"]) for _ in range(rounds)]
    config = {
        "models": [
            {"id": name, "backend": "llamacpp", "command": llama_command(binary, path, name)}
            for name, path in models.items()
        ]
    }
    switched: list[float] = []
    with router(config, workdir) as (url, _proc):
        chat = f"{url}/v1/chat/completions"
        for _ in range(rounds):
            first_token(chat, "tiny-a")  # tiny-a resident
            switched.append(first_token(chat, "tiny-b"))  # forces stop tiny-a + start tiny-b
    ready = median([r for r, _ in direct])
    token = median([t for _, t in direct])
    through = median(switched)
    return {
        "rounds": rounds,
        "direct_ready_s": ready,
        "direct_first_token_s": token,
        "direct_total_s": ready + token,
        "router_switch_ttft_s": through,
        "overhead_ms": (through - ready - token) * 1000,
    }


def report(r: dict) -> str:
    return "\n".join(
        [
            "| measurement (median) | ms |",
            "|---|---|",
            f"| engine start → /health 200, direct | {r['direct_ready_s'] * 1000:.1f} |",
            f"| first token after ready, direct | {r['direct_first_token_s'] * 1000:.1f} |",
            f"| sum (the engine's own cost) | {r['direct_total_s'] * 1000:.1f} |",
            f"| time to first token of a request that forces the switch, via router | "
            f"{r['router_switch_ttft_s'] * 1000:.1f} |",
            f"| **switch overhead** | **{r['overhead_ms']:.1f}** |",
            f"\n{r['rounds']} rounds each.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    print(report(run(parser.parse_args().rounds)))
