"""Benchmark 1: latency the router adds to small non-streaming requests.

Same llama-server engine (tiny model), three paths measured interleaved in one run: direct, through
llm-router, through LiteLLM's proxy (installed in its own venv under ~/.cache/llm-router/bench/).
llm-router reaches the engine on the Unix socket it picks, as `make demo` runs engines; direct and LiteLLM on its
TCP port.

    python bench/latency.py [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, free_port, llama_command, llama_server, pct, process, router, tiny_models, wait_http

LITELLM_VENV = CACHE / "bench" / "litellm-venv"
MASTER_KEY = "sk-bench-" + "0" * 32  # LiteLLM refuses to start without one


def litellm_binary() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"], check=True)
    return binary


def measure(client: httpx.Client, urls: dict[str, str], requests: int) -> dict[str, list[float]]:
    headers = {name: ({"Authorization": f"Bearer {MASTER_KEY}"} if name == "litellm" else {}) for name in urls}
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(20):  # warm-up: connections, caches
        for name, url in urls.items():
            client.post(url, json=body, headers=headers[name]).raise_for_status()
    for _ in range(requests):
        for name, url in urls.items():  # interleaved, so drift hits every path alike
            started = time.perf_counter()
            response = client.post(url, json=body, headers=headers[name])
            samples[name].append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return samples


def with_socket(command: list[str]) -> list[str]:
    """llama-server listening on 127.0.0.1 (its port) and on the router's `${SOCKET}` as well."""
    host = command.index("--host") + 1
    return [*command[:host], command[host] + ",${SOCKET}", *command[host + 1 :]]


def run(requests: int = 400, with_litellm: bool = True) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    models = tiny_models(workdir)
    engine_port = free_port()
    binary = llama_server()
    config = {
        "models": [
            {
                "id": "tiny-a",
                "backend": "llamacpp",
                # The router on the Unix socket it picks (as `make demo` runs engines); direct and LiteLLM on the port.
                "command": with_socket(llama_command(binary, models["tiny-a"], "tiny-a", str(engine_port))),
            }
        ]
    }
    with router(config, workdir) as (router_url, _proc), httpx.Client(timeout=60) as client:
        client.post(
            f"{router_url}/v1/chat/completions",
            json={"model": "tiny-a", "max_tokens": 1, "messages": [{"role": "user", "content": "load"}]},
            timeout=120,
        ).raise_for_status()
        urls = {
            "direct": f"http://127.0.0.1:{engine_port}/v1/chat/completions",
            "llm-router": f"{router_url}/v1/chat/completions",
        }
        litellm = None
        if with_litellm:
            port = free_port()
            cfg = workdir / "litellm.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "model_list": [
                            {
                                "model_name": "tiny-a",
                                "litellm_params": {
                                    "model": "openai/tiny-a",
                                    "api_base": f"http://127.0.0.1:{engine_port}/v1",
                                    "api_key": "none",
                                },
                            }
                        ],
                        "litellm_settings": {"telemetry": False},
                    }
                )
            )
            env = {**os.environ, "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True", "LITELLM_MASTER_KEY": MASTER_KEY}
            litellm = process(
                [
                    str(litellm_binary()),
                    "--config",
                    str(cfg),
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--num_workers",
                    "1",
                ],
                env=env,
            )
            proc = litellm.__enter__()
            wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=300, proc=proc)
            urls["litellm"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            samples = measure(client, urls, requests)
        finally:
            if litellm is not None:
                litellm.__exit__(None, None, None)
    result = {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for name, v in samples.items()}
    for name in samples:
        if name != "direct":
            result[name]["added_p50_ms"] = result[name]["p50_ms"] - result["direct"]["p50_ms"]
            result[name]["added_p99_ms"] = result[name]["p99_ms"] - result["direct"]["p99_ms"]
    if "litellm" in result:
        result["litellm_vs_router_added_p50"] = result["litellm"]["added_p50_ms"] / max(
            result["llm-router"]["added_p50_ms"], 1e-3
        )
    result["requests"] = requests
    return result


def report(result: dict) -> str:
    lines = ["| path | p50 ms | p99 ms | added p50 ms | added p99 ms |", "|---|---|---|---|---|"]
    for name in ("direct", "llm-router", "litellm"):
        if name in result:
            r = result[name]
            lines.append(
                f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r.get('added_p50_ms', 0):.2f} | "
                f"{r.get('added_p99_ms', 0):.2f} |"
            )
    if "litellm_vs_router_added_p50" in result:
        lines.append(f"\nLiteLLM adds {result['litellm_vs_router_added_p50']:.1f}× the p50 latency llm-router adds.")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args()
    print(report(run(args.requests, not args.no_litellm)))
