"""Benchmark 5: many clients, several models, switching — llm-router beside llama.cpp's own router mode.

Thrash: N clients (default 16) each send requests back to back until R requests (default 200) are
done; every request asks one of two tiny GGUF models. A *mix* says how the requests look (see MIXES):
which model (random, seeded, or strictly alternating as `llm-router bench` does), the share that is
streamed, the answer length, and the engines' context (-c). The same workload, the same llama-server
binary and the same GGUF files, with the same engine flags (-c C -np 1 -t 1), through
  - llm-router (`make demo`'s config: process supervisor, one model at a time), and
  - llama-server in router mode (`--models-dir`, `--models-max 1`),
interleaved: for each mix and seed both systems run, and which one runs first alternates from seed to
seed. Reported per run: wall time, latency p50/p95 (send → last byte), failures, engine loads; per mix
the ratios llm-router / llama.cpp router over all its seeds (summed wall times, p95 of all latencies).

Co-residency: three tiny models and a declared memory budget that holds two (from the measured
footprint of one): after warm-up, alternating between two causes no reload; asking for the third
evicts exactly one.

    python bench/thrash.py [--mixes ours,demo] [--seeds 1,2,3] [--clients 16] [--requests 200] [--no-co]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_seconds, free_port, llama_server, pct, process, router, wait_http

MODELS = ("tiny-a", "tiny-b")
SYSTEMS = ("llm-router", "llama.cpp router")


@dataclass(frozen=True)
class Mix:
    """How the requests of one thrash run look, and the engine context both systems give llama-server."""

    name: str
    streamed: float  # share of requests that stream
    tokens: tuple[int, int]  # max_tokens, drawn uniformly from this range
    ctx: int = 2048  # -c, and the models' trained context
    alternate: bool = False  # models strictly alternate (llm-router bench); else picked at random
    demo: bool = False  # make demo's models (chat-UI vocabulary) and router config (log level info, defaults)
    system_chars: int = 0  # a system prompt this long, the same in every request (as a chat UI's tool list)
    load_tool: bool = False  # the client is `llm-router bench` (router_app/tools/loadtest.py) instead of this script's
    share: float = 1.0  # of the requests per run (a slow mix sends fewer)

    def requests(self, requests: int) -> int:
        return max(1, round(requests * self.share))

    def describe(self) -> str:
        share = {0.0: "none", 1.0: "all"}.get(self.streamed, f"{self.streamed:.0%}")
        low, high = self.tokens
        return (
            f"models {'alternating' if self.alternate else 'at random'}, {share} streamed, "
            f"{low if low == high else f'{low}–{high}'} tokens, `-c {self.ctx}`"
            + (f", a {self.system_chars // 1000} KB system prompt" if self.system_chars else "")
            + (", `make demo`'s models and router config" if self.demo else "")
            + (", client `llm-router bench`" if self.load_tool else "")
        )

    def engine_flags(self) -> list[str]:
        return ["-c", str(self.ctx), "-np", "1", "-t", "1", "--no-webui"]

    def messages(self) -> list[dict[str, str]]:
        user = [{"role": "user", "content": "Tell me something."}]
        if not self.system_chars:
            return user
        words = ("tool", "name", "description", "parameters", "type", "string", "object", "required", "query")
        text = " ".join(words[i % len(words)] for i in range(self.system_chars // 6))[: self.system_chars]
        return [{"role": "system", "content": text}, *user]

    async def workload(self, base: str, result: Result, plan: list[tuple[str, bool, int]], clients: int) -> None:
        if self.load_tool:
            await load_tool(base, result, plan, clients)
        else:
            await workload(base, result, plan, clients, self.messages())

    def plan(self, seed: int, requests: int) -> list[tuple[str, bool, int]]:
        rng = random.Random(seed)
        offset = rng.randrange(len(MODELS))
        return [
            (
                MODELS[(i + offset) % len(MODELS)] if self.alternate else rng.choice(MODELS),
                rng.random() < self.streamed,
                rng.randint(*self.tokens),
            )
            for i in range(requests)
        ]


MIXES = {
    mix.name: mix
    for mix in (
        Mix("ours", streamed=0.6, tokens=(4, 24)),
        Mix("streamed", streamed=1.0, tokens=(4, 24)),
        Mix("unary", streamed=0.0, tokens=(4, 24)),
        Mix("long", streamed=0.6, tokens=(48, 128)),
        Mix("demo", streamed=1.0, tokens=(64, 64), ctx=16384, alternate=True, demo=True),
        Mix("bench", streamed=1.0, tokens=(64, 64), ctx=16384, alternate=True, demo=True, load_tool=True),
        Mix(
            "tools", streamed=1.0, tokens=(64, 64), ctx=16384, alternate=True, demo=True, system_chars=20000, share=0.5
        ),
    )
}


@dataclass
class Result:
    system: str
    mix: str
    seed: int
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    loads: int = 0
    router_cpu_s: float = 0.0  # CPU the routing process itself used during the run (engines not counted)
    engines_cpu_s: float = 0.0  # the engines, start to exit (the routing process's children, as reaped)
    client_cpu_s: float = 0.0  # this process during the run
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[str, float, float]] = field(default_factory=list)  # model, sent, done (s from the start)

    def summary(self) -> dict[str, object]:
        done = len(self.latencies)
        return {
            "mix": self.mix,
            "system": self.system,
            "seed": self.seed,
            "wall_s": round(self.wall_s, 3),
            "p50_s": round(pct(self.latencies, 50), 3) if done else 0,
            "p95_s": round(pct(self.latencies, 95), 3) if done else 0,
            "ok": done,
            "failed": self.failures,
            "loads": self.loads,
            "loads_per_request": round(self.loads / max(done + self.failures, 1), 3),
            "router_cpu_s": round(self.router_cpu_s, 2),
            "engines_cpu_s": round(self.engines_cpu_s, 2),
            "client_cpu_s": round(self.client_cpu_s, 2),
            "latencies": [round(x, 4) for x in self.latencies],
            "timeline": [(m, round(a, 4), round(b, 4)) for m, a, b in self.timeline],
        }


def write_models(directory: Path, names: tuple[str, ...], ctx: int = 2048, chat_ui: bool = False) -> dict[str, Path]:
    from router_app.tools.tiny_gguf import write_model

    directory.mkdir(parents=True, exist_ok=True)
    return {
        name: write_model(directory / f"{name}.gguf", name=name, seed=i + 1, ctx=ctx, chat_ui=chat_ui)
        for i, name in enumerate(names)
    }


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, stream: bool, tokens: int, messages: list[dict[str, str]]
) -> None:
    body = {"model": model, "stream": stream, "max_tokens": tokens, "messages": messages}
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


async def load_tool(base: str, result: Result, plan: list[tuple[str, bool, int]], clients: int) -> None:
    """The workload as `llm-router bench --clients N --requests R --max-tokens T` sends it (plan: its length)."""
    from router_app.tools.loadtest import BenchRun

    run = BenchRun(base + "/v1", list(MODELS), clients, len(plan), None, stream=plan[0][1], max_tokens=plan[0][2])
    await run.run()
    result.wall_s = run.elapsed
    for stats in run.stats.values():
        result.latencies += stats.latency
        result.failures += stats.failed
        result.errors += stats.errors


async def workload(
    base: str, result: Result, plan: list[tuple[str, bool, int]], clients: int, messages: list[dict[str, str]]
) -> None:
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
                await one_request(client, url, model, stream, tokens, messages)
                result.latencies.append(time.perf_counter() - started)
                result.timeline.append((model, started - begun, time.perf_counter() - begun))
            except (httpx.HTTPError, RuntimeError) as exc:
                result.failures += 1
                result.errors.append(f"{model}: {type(exc).__name__}: {exc}"[:300])

    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
        begun = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        result.wall_s = time.perf_counter() - begun


def metric_sum(base: str, name: str, labels: str = "") -> int:
    """Sum of a Prometheus counter's samples whose labels contain `labels`."""
    text = httpx.get(base + "/metrics", timeout=10).text
    pattern = "^" + re.escape(name) + r"\{([^}]*)\} (\S+)"
    return int(sum(float(m.group(2)) for m in re.finditer(pattern, text, re.M) if labels in m.group(1)))


def llm_router_loads(base: str) -> int:
    return metric_sum(base, "llm_router_switches_total", 'outcome="ok"')


def engine_command(binary: str, path: Path, name: str, flags: list[str]) -> list[str]:
    """llama-server as llm-router runs it in `make demo`: on the Unix socket the router picks."""
    return [binary, "-m", str(path), "-a", name, "--host", "${SOCKET}", *flags]


def llm_router_config(binary: str, models: dict[str, Path], mix: Mix) -> dict:
    if mix.demo:
        from router_app.tools.demo import demo_config

        config = demo_config(next(iter(models.values())).parent, Path(binary))
        for model in config["models"]:
            model["command"][model["command"].index("-c") + 1] = str(mix.ctx)
            model["context_length"] = mix.ctx
        config["router"].pop("port")
        config["router"]["log_level"] = "info"  # the demo's (the default); bench/common.py's router() says warning
        return config
    return {
        "router": {"supervisor": "process"},
        "models": [
            {"id": name, "backend": "llamacpp", "command": engine_command(binary, path, name, mix.engine_flags())}
            for name, path in models.items()
        ],
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(result: Result, pid: int, run: Callable[[], None]) -> None:
    """Run the workload, counting the routing process's CPU and the client's own."""
    cpu, mine = cpu_seconds(pid), self_cpu()
    run()
    result.router_cpu_s, result.client_cpu_s = cpu_seconds(pid) - cpu, self_cpu() - mine
    result.engines_cpu_s = -cpu_seconds(pid)  # the routing process's whole life; the rest of the reaped is engines


def run_llm_router(binary: str, models: dict[str, Path], mix: Mix, seed: int, plan: list, clients: int, work: Path):
    result = Result("llm-router", mix.name, seed)
    log_path = work / f"llm-router-{mix.name}-{seed}.log"
    reaped = children_cpu()
    config = llm_router_config(binary, models, mix)
    if "state_dir" in config["router"]:  # the demo's: a fresh one per run, as a new `make demo` starts
        config["router"]["state_dir"] = str(work / f"state-{mix.name}-{seed}")
    with log_path.open("wb") as log, router(config, work, stderr=log) as (base, proc):
        measured(result, proc.pid, lambda: asyncio.run(mix.workload(base, result, plan, clients)))
        result.loads = llm_router_loads(base)
    result.engines_cpu_s += children_cpu() - reaped
    return result


def run_llamacpp_router(binary: str, models_dir: Path, mix: Mix, seed: int, plan: list, clients: int, work: Path):
    result = Result("llama.cpp router", mix.name, seed)
    port = free_port()
    log_path = work / f"llamacpp-router-{mix.name}-{seed}.log"
    cache = work / "empty-cache"
    cache.mkdir(exist_ok=True)
    argv = [binary, "--models-dir", str(models_dir), "--models-max", "1", "--host", "127.0.0.1", "--port", str(port)]
    env = {"LLAMA_CACHE": str(cache), "PATH": "/usr/bin"}
    reaped = children_cpu()
    with (
        log_path.open("wb") as log,
        process([*argv, *mix.engine_flags()], stdout=log, stderr=subprocess.STDOUT, env=env) as proc,
    ):
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        base = f"http://127.0.0.1:{port}"
        measured(result, proc.pid, lambda: asyncio.run(mix.workload(base, result, plan, clients)))
    result.engines_cpu_s += children_cpu() - reaped
    result.loads = log_path.read_text(errors="replace").count("spawning server instance with name=")
    return result


# --- co-residency ---------------------------------------------------------------------------------


def co_residency(binary: str, work: Path, rounds: int = 20) -> dict[str, object]:
    """Three models, a budget for two: alternating between two reloads nothing; the third evicts one."""
    names = ("tiny-a", "tiny-b", "tiny-c")
    models = write_models(work / "co", names)
    flags = MIXES["ours"].engine_flags()

    def config(budget: int | None) -> dict:
        memory = {"source": "declared", "devices": {"cpu": budget}} if budget else {"source": "off"}
        return {
            "router": {"supervisor": "process", "memory": memory, "state_dir": str(work / "co-state")},
            "models": [
                {"id": name, "backend": "llamacpp", "command": engine_command(binary, path, name, flags)}
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


def schedule(seeds: list[int], mixes: list[str], order: str = "alternate") -> list[tuple[int, str, tuple[str, ...]]]:
    """(seed, mix, systems in the order they run): seed by seed, every mix; with `alternate`, each mix has each
    system first on every other seed, and consecutive runs alternate too (so neither runs on a cooler box)."""
    runs = []
    for index, seed in enumerate(seeds):
        for turn, name in enumerate(mixes, start=index):
            first = {"alternate": turn % 2, "llm-router": 0, "llama.cpp": 1}[order]
            runs.append((seed, name, SYSTEMS if first == 0 else SYSTEMS[::-1]))
    return runs


def run(
    seeds: list[int],
    clients: int,
    requests: int,
    mixes: list[str] | None = None,
    co: bool = True,
    keep: Path | None = None,
    order: str = "alternate",
) -> dict[str, object]:
    """For each seed, every mix, both systems (which runs first alternates per seed and mix); then co-residency."""
    binary = llama_server()
    mixes = list(MIXES) if mixes is None else mixes
    with tempfile.TemporaryDirectory(prefix="bench-thrash-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = {}
        for name in mixes:
            mix = MIXES[name]
            models_dir = work / f"models-{mix.ctx}-{'demo' if mix.demo else 'plain'}"
            models[name] = (models_dir, write_models(models_dir, MODELS, ctx=mix.ctx, chat_ui=mix.demo))
        rows = []
        for seed, name, systems in schedule(seeds, mixes, order):
            mix, (models_dir, paths) = MIXES[name], models[name]
            plan = mix.plan(seed, mix.requests(requests))
            for system in systems:
                if system == "llm-router":
                    result = run_llm_router(binary, paths, mix, seed, plan, clients, work)
                else:
                    result = run_llamacpp_router(binary, models_dir, mix, seed, plan, clients, work)
                row = result.summary()
                if result.errors:
                    row["first_errors"] = result.errors[:3]
                print(json.dumps({k: v for k, v in row.items() if k not in ("latencies", "timeline")}), flush=True)
                rows.append(row)
        co_result = co_residency(binary, work) if co else None
        if co_result:
            print(json.dumps({"co_residency": co_result}), flush=True)
    return {"clients": clients, "requests": requests, "mixes": mixes, "rows": rows, "co_residency": co_result}


def mix_ratios(data: dict[str, object]) -> dict[str, dict[str, float]]:
    """Per mix, llm-router / llama.cpp router: summed wall times, p95 of all latencies, engine loads (≤ 1 meets)."""
    out: dict[str, dict[str, float]] = {}
    for name in data["mixes"]:
        rows = {system: [r for r in data["rows"] if r["mix"] == name and r["system"] == system] for system in SYSTEMS}
        ours, theirs = rows["llm-router"], rows["llama.cpp router"]

        def total(rows: list[dict], key: str) -> float:
            return sum(r[key] for r in rows)

        def p95(rows: list[dict]) -> float:
            latencies = [x for r in rows for x in r["latencies"]]
            return pct(latencies, 95) if latencies else float("inf")

        out[name] = {
            "wall": round(total(ours, "wall_s") / max(total(theirs, "wall_s"), 1e-9), 3),
            "p95": round(p95(ours) / max(p95(theirs), 1e-9), 3),
            "loads": round(total(ours, "loads") / max(total(theirs, "loads"), 1), 3),
            "failed": total(ours, "failed"),
            "their_failed": total(theirs, "failed"),
        }
    return out


def ratios(data: dict[str, object]) -> dict[str, object]:
    """The worst mix for each ratio, and which mix it was."""
    per_mix = mix_ratios(data)
    worst: dict[str, object] = {}
    for key in ("wall", "p95", "loads"):
        name = max(per_mix, key=lambda m: per_mix[m][key])
        worst[key], worst[f"{key}_mix"] = per_mix[name][key], name
    worst["failed"] = sum(r["failed"] for r in per_mix.values())
    return worst


def report(data: dict[str, object]) -> str:
    per_mix = mix_ratios(data)
    lines = [
        f"{data['clients']} clients; llama-server flags `-c C -np 1 -t 1` for "
        "both systems. Ratios are llm-router / llama.cpp router over all seeds of a mix: summed wall times, p95 of "
        "all latencies, summed engine loads.",
        "",
        "| mix | requests | per run | wall | p95 | loads | failed (llm-router / llama.cpp) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in data["mixes"]:
        r, mix = per_mix[name], MIXES[name]
        lines.append(
            f"| {name} | {mix.describe()} | {mix.requests(data['requests'])} | {r['wall']:.2f}× | {r['p95']:.2f}× "
            f"| {r['loads']:.2f}× | {r['failed']} / {r['their_failed']} |"
        )
    lines += [
        "",
        "| mix | seed | system | wall s | p50 s | p95 s | ok | failed | engine loads | router CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['mix']} | {row['seed']} | {row['system']} | {row['wall_s']:.2f} | {row['p50_s']} | {row['p95_s']} "
            f"| {row['ok']} | {row['failed']} | {row['loads']} | {row['router_cpu_s']} |"
        )
    co = data["co_residency"]
    if co:
        lines += [
            "",
            f"Co-residency (three models, declared budget {co['budget_mb']} MB = 2.5 × the measured footprint of "
            f"{co['footprint_mb']} MB): {co['alternating_requests']} requests alternating between two resident models "
            f"caused {co['reloads_after_warmup']} reload(s) after warm-up; asking for the third evicted "
            f"{co['evictions_for_third']} model(s); resident afterwards: {', '.join(co['resident_after'])}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", default=",".join(MIXES), help=f"comma-separated, of: {', '.join(MIXES)}")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-co", action="store_true", help="skip the co-residency check")
    parser.add_argument("--keep", type=Path, default=None, help="keep models and logs in this directory")
    parser.add_argument(
        "--order",
        choices=("alternate", "llm-router", "llama.cpp"),
        default="alternate",
        help="which system runs first for each seed (default: alternating)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write all results to FILE")
    args = parser.parse_args()
    mixes = [m for m in args.mixes.split(",") if m]
    if unknown := [m for m in mixes if m not in MIXES]:
        parser.error(f"unknown mix(es) {', '.join(unknown)}; known: {', '.join(MIXES)}")
    data = run(
        [int(s) for s in args.seeds.split(",")],
        args.clients,
        args.requests,
        mixes,
        not args.no_co,
        args.keep,
        args.order,
    )
    if args.json:
        args.json.write_text(json.dumps(data))
    print(report(data))
    print(json.dumps(ratios(data)))


if __name__ == "__main__":
    main()
