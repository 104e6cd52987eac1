"""Benchmark 5: many clients, several models, switching — llm-router beside llama.cpp's own router mode.

Thrash: N clients (default 16) each send requests back to back until R requests (default 200) are
done; every request picks one of two tiny GGUF models at random (seeded), 60 % are streamed, and each
asks for 4 to 24 tokens. The same workload, the same llama-server binary and the same GGUF files, with
the same engine flags (-c 2048 -np 1 -t 1), through
  - llm-router (`make demo`'s config: process supervisor, one model at a time), and
  - llama-server in router mode (`--models-dir`, `--models-max 1`),
in one run, for each seed. Reported per system: wall time, latency p50/p95 (send → last byte),
failures, engine loads, loads per request.

Co-residency: three tiny models and a declared memory budget that holds two (from the measured
footprint of one): after warm-up, alternating between two causes no reload; asking for the third
evicts exactly one.

    python bench/thrash.py [--seeds 1,2,3] [--clients 16] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_seconds, free_port, llama_server, pct, process, router, wait_http

ENGINE_FLAGS = ["-c", "2048", "-np", "1", "-t", "1", "--no-webui"]
MODELS = ("tiny-a", "tiny-b")


@dataclass
class Result:
    system: str
    seed: int
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    loads: int = 0
    router_cpu_s: float = 0.0  # CPU the routing process itself used during the run (engines not counted)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | str]:
        done = len(self.latencies)
        return {
            "system": self.system,
            "seed": self.seed,
            "wall_s": round(self.wall_s, 2),
            "p50_s": round(pct(self.latencies, 50), 3) if done else 0,
            "p95_s": round(pct(self.latencies, 95), 3) if done else 0,
            "ok": done,
            "failed": self.failures,
            "loads": self.loads,
            "loads_per_request": round(self.loads / max(done + self.failures, 1), 3),
            "router_cpu_s": round(self.router_cpu_s, 2),
        }


def write_models(directory: Path, names: tuple[str, ...]) -> dict[str, Path]:
    from router_app.tools.tiny_gguf import write_model

    directory.mkdir(parents=True, exist_ok=True)
    return {name: write_model(directory / f"{name}.gguf", name=name, seed=i + 1) for i, name in enumerate(names)}


async def one_request(client: httpx.AsyncClient, url: str, model: str, stream: bool, tokens: int) -> None:
    body = {
        "model": model,
        "stream": stream,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Tell me something."}],
    }
    if stream:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
            saw_done = False
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    raise RuntimeError(line[:200])
                saw_done = saw_done or line == "data: [DONE]"
            if not saw_done:
                raise RuntimeError("stream ended without [DONE]")
    else:
        response = await client.post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
        if response.json().get("model") not in (model, None) and "router" not in url:
            raise RuntimeError("wrong model in answer")


async def workload(base: str, result: Result, clients: int, requests: int) -> None:
    rng = random.Random(result.seed)
    plan = [(rng.choice(MODELS), rng.random() < 0.6, rng.randint(4, 24)) for _ in range(requests)]
    queue: asyncio.Queue[tuple[str, bool, int]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            model, stream, tokens = queue.get_nowait()
            started = time.perf_counter()
            try:
                await one_request(client, url, model, stream, tokens)
                result.latencies.append(time.perf_counter() - started)
            except (httpx.HTTPError, RuntimeError) as exc:
                result.failures += 1
                result.errors.append(f"{model}: {type(exc).__name__}: {exc}"[:300])

    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        result.wall_s = time.perf_counter() - started


def metric_sum(base: str, name: str, labels: str = "") -> int:
    """Sum of a Prometheus counter's samples whose labels contain `labels`."""
    text = httpx.get(base + "/metrics", timeout=10).text
    pattern = "^" + re.escape(name) + r"\{([^}]*)\} (\S+)"
    return int(sum(float(m.group(2)) for m in re.finditer(pattern, text, re.M) if labels in m.group(1)))


def llm_router_loads(base: str) -> int:
    return metric_sum(base, "llm_router_switches_total", 'outcome="ok"')


def engine_command(binary: str, path: Path, name: str) -> list[str]:
    return [binary, "-m", str(path), "-a", name, "--host", "127.0.0.1", "--port", "${PORT}", *ENGINE_FLAGS]


def run_llm_router(binary: str, models: dict[str, Path], seed: int, clients: int, requests: int, work: Path) -> Result:
    result = Result("llm-router", seed)
    config = {
        "router": {"supervisor": "process"},
        "models": [
            {
                "id": name,
                "backend": "llamacpp",
                "command": engine_command(binary, path, name),
            }
            for name, path in models.items()
        ],
    }
    with router(config, work) as (base, proc):
        cpu = cpu_seconds(proc.pid)
        asyncio.run(workload(base, result, clients, requests))
        result.router_cpu_s = cpu_seconds(proc.pid) - cpu
        result.loads = llm_router_loads(base)
    return result


def run_llamacpp_router(binary: str, models_dir: Path, seed: int, clients: int, requests: int, work: Path) -> Result:
    result = Result("llama.cpp router", seed)
    port = free_port()
    log_path = work / f"llamacpp-router-{seed}.log"
    cache = work / "empty-cache"
    cache.mkdir(exist_ok=True)
    argv = [binary, "--models-dir", str(models_dir), "--models-max", "1", "--host", "127.0.0.1", "--port", str(port)]
    env = {"LLAMA_CACHE": str(cache), "PATH": "/usr/bin"}
    with (
        log_path.open("wb") as log,
        process([*argv, *ENGINE_FLAGS], stdout=log, stderr=subprocess.STDOUT, env=env) as proc,
    ):
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        cpu = cpu_seconds(proc.pid)
        asyncio.run(workload(f"http://127.0.0.1:{port}", result, clients, requests))
        result.router_cpu_s = cpu_seconds(proc.pid) - cpu
    result.loads = log_path.read_text(errors="replace").count("spawning server instance with name=")
    return result


# --- co-residency ---------------------------------------------------------------------------------


def co_residency(binary: str, work: Path, rounds: int = 20) -> dict[str, object]:
    """Three models, a budget for two: alternating between two reloads nothing; the third evicts one."""
    names = ("tiny-a", "tiny-b", "tiny-c")
    models = write_models(work / "co", names)

    def config(budget: int | None) -> dict:
        memory = {"source": "declared", "devices": {"cpu": budget}} if budget else {"source": "off"}
        return {
            "router": {"supervisor": "process", "memory": memory, "state_dir": str(work / "co-state")},
            "models": [
                {
                    "id": name,
                    "backend": "llamacpp",
                    "command": engine_command(binary, path, name),
                }
                for name, path in models.items()
            ],
        }

    def chat(base: str, model: str) -> None:
        body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        response = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
        response.raise_for_status()

    # Learn the footprints with a large budget (kept in the state dir), then size the budget for two and a half.
    with router(config(64 * 1024**3), work) as (base, _proc):
        for name in names:
            chat(base, name)
        footprint = max(
            m["counted"] for d in httpx.get(base + "/health").json()["memory"] for m in d["models"] if m["counted"]
        )
    budget = int(footprint * 2.5)
    with router(config(budget), work) as (base, _proc):
        chat(base, "tiny-a")
        chat(base, "tiny-b")
        warm = llm_router_loads(base)
        for i in range(rounds):
            chat(base, names[i % 2])
        after_alternating = llm_router_loads(base) - warm
        chat(base, "tiny-c")
        health = httpx.get(base + "/health").json()
        evictions = metric_sum(base, "llm_router_evictions_total")
    return {
        "footprint_mb": round(footprint / 1024**2, 1),
        "budget_mb": round(budget / 1024**2, 1),
        "alternating_requests": rounds,
        "reloads_after_warmup": after_alternating,
        "evictions_for_third": evictions,
        "resident_after": sorted(health["current"]),
    }


def run(seeds: list[int], clients: int, requests: int) -> dict[str, object]:
    binary = llama_server()
    with tempfile.TemporaryDirectory(prefix="bench-thrash-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        models = write_models(models_dir, MODELS)
        rows = []
        for seed in seeds:
            for runner in ("llama.cpp router", "llm-router"):
                if runner == "llm-router":
                    result = run_llm_router(binary, models, seed, clients, requests, work)
                else:
                    result = run_llamacpp_router(binary, models_dir, seed, clients, requests, work)
                row = result.summary()
                if result.errors:
                    row["first_errors"] = result.errors[:3]
                print(json.dumps(row), flush=True)
                rows.append(row)
        co = co_residency(binary, work)
        print(json.dumps({"co_residency": co}), flush=True)
    return {"clients": clients, "requests": requests, "rows": rows, "co_residency": co}


def report(data: dict[str, object]) -> str:
    rows = data["rows"]
    lines = [
        f"{data['clients']} clients, {data['requests']} requests per run, two models picked at random per request, "
        "60 % streamed, 4–24 tokens; llama-server flags `-c 2048 -np 1 -t 1` for both systems.",
        "",
        "| seed | system | wall s | p50 s | p95 s | ok | failed | engine loads | loads/request | router CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['seed']} | {row['system']} | {row['wall_s']} | {row['p50_s']} | {row['p95_s']} | {row['ok']} "
            f"| {row['failed']} | {row['loads']} | {row['loads_per_request']} | {row['router_cpu_s']} |"
        )
    co = data["co_residency"]
    lines += [
        "",
        f"Co-residency (three models, declared budget {co['budget_mb']} MB = 2.5 × the measured footprint of "
        f"{co['footprint_mb']} MB): {co['alternating_requests']} requests alternating between two resident models "
        f"caused {co['reloads_after_warmup']} reload(s) after warm-up; asking for the third evicted "
        f"{co['evictions_for_third']} model(s); resident afterwards: {', '.join(co['resident_after'])}.",
    ]
    return "\n".join(lines)


def ratios(data: dict[str, object]) -> dict[str, float]:
    """llm-router / llama.cpp router per seed, worst case (≤ 1.0 meets the target)."""
    by_seed: dict[int, dict[str, dict]] = {}
    for row in data["rows"]:
        by_seed.setdefault(row["seed"], {})[row["system"]] = row
    worst = {"wall": 0.0, "p95": 0.0, "loads": 0.0}
    for pair in by_seed.values():
        ours, theirs = pair["llm-router"], pair["llama.cpp router"]
        worst["wall"] = max(worst["wall"], ours["wall_s"] / max(theirs["wall_s"], 1e-9))
        worst["p95"] = max(worst["p95"], ours["p95_s"] / max(theirs["p95_s"], 1e-9))
        worst["loads"] = max(worst["loads"], ours["loads"] / max(theirs["loads"], 1))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    data = run([int(s) for s in args.seeds.split(",")], args.clients, args.requests)
    print(report(data))
    print(json.dumps(ratios(data)))


if __name__ == "__main__":
    main()
