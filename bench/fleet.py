"""Benchmark 6: a fleet of two routers — one endpoint for both beside one connection per host.

Router A serves tiny-a, router B tiny-b (each its own real llama-server, both resident: no switching);
each lists the other in `router.peers` with a shared fleet key, as the role sets a fleet up. N clients
(default 16) send streamed chat completions back to back until R requests (default 400) are done;
every request asks for tiny-a or tiny-b at random (seeded) and for 4 to 24 tokens. Two arms in one
run, the same seed and request sequence, interleaved per seed (the order alternates):
  - fleet:  every request goes to router A; the tiny-b ones are forwarded to B (one extra HTTP hop),
  - direct: each request goes to the router that owns its model (one connection per host).
Reported per arm: wall time, latency p50/p95/max (send → last byte) and time to first byte, failures,
the routers' CPU; per model, so the fleet's forwarded (tiny-b) requests can be set beside its local
(tiny-a) ones and beside the same requests sent to B directly (the hop's cost). Then both arms once
more with one client (default 200 requests): the hop alone, without the engines' queues around it.

    python bench/fleet.py [--seeds 1,2,3] [--clients 16] [--requests 400] [--one-client 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cpu_seconds, free_port, llama_command, llama_server, pct, process, tiny_models, wait_http

MODELS = ("tiny-a", "tiny-b")
CLIENT_KEY = "sk-bench-client"
FLEET_KEY = "sk-bench-fleet"
ARMS = ("fleet", "direct")


@dataclass
class Sample:
    model: str
    first_byte_s: float
    last_byte_s: float


@dataclass
class Result:
    arm: str
    seed: int
    wall_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0
    router_cpu_s: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        def ms(values: list[float], p: float) -> float:
            return round(pct(values, p) * 1000, 1) if values else 0.0

        total = [s.last_byte_s for s in self.samples]
        first = [s.first_byte_s for s in self.samples]
        per_model = {}
        for model in MODELS:
            mine = [s for s in self.samples if s.model == model]
            last = [s.last_byte_s for s in mine]
            ttfb = [s.first_byte_s for s in mine]
            per_model[model] = {
                "n": len(mine),
                "p50_ms": ms(last, 50),
                "p95_ms": ms(last, 95),
                "ttfb_p50_ms": ms(ttfb, 50),
                "ttfb_p95_ms": ms(ttfb, 95),
            }
        return {
            "arm": self.arm,
            "seed": self.seed,
            "wall_s": round(self.wall_s, 2),
            "p50_ms": ms(total, 50),
            "p95_ms": ms(total, 95),
            "max_ms": ms(total, 100),
            "ttfb_p50_ms": ms(first, 50),
            "ttfb_p95_ms": ms(first, 95),
            "ok": len(self.samples),
            "failed": self.failures,
            "cpu_a_s": round(self.router_cpu_s.get("a", 0.0), 2),
            "cpu_b_s": round(self.router_cpu_s.get("b", 0.0), 2),
            "models": per_model,
        }


def plan(seed: int, requests: int) -> list[tuple[str, int]]:
    """The request sequence of a seed: (model, max_tokens), the same for both arms."""
    rng = random.Random(seed)
    return [(rng.choice(MODELS), rng.randint(4, 24)) for _ in range(requests)]


async def one_request(client: httpx.AsyncClient, url: str, model: str, tokens: int) -> Sample:
    body = {
        "model": model,
        "stream": True,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Tell me something."}],
    }
    started = time.perf_counter()
    first = None
    saw_done = False
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if first is None:
                first = time.perf_counter() - started
            if line.startswith("data: {") and '"error"' in line:
                raise RuntimeError(line[:200])
            saw_done = saw_done or line == "data: [DONE]"
    if not saw_done:
        raise RuntimeError("stream ended without [DONE]")
    return Sample(model, first or 0.0, time.perf_counter() - started)


async def workload(urls: dict[str, str], result: Result, clients: int, requests: int) -> None:
    """`urls` maps each model to the router its requests go to."""
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for item in plan(result.seed, requests):
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    # One client (connection pool) per router, as a UI keeps one per connection it is given.
    pools = {
        base: httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits, headers=headers)
        for base in set(urls.values())
    }

    async def client_loop() -> None:
        while not queue.empty():
            model, tokens = queue.get_nowait()
            base = urls[model]
            try:
                result.samples.append(await one_request(pools[base], base + "/v1/chat/completions", model, tokens))
            except (httpx.HTTPError, RuntimeError) as exc:
                result.failures += 1
                result.errors.append(f"{model}: {type(exc).__name__}: {exc}"[:300])

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        result.wall_s = time.perf_counter() - started
    finally:
        for pool in pools.values():
            await pool.aclose()


@contextmanager
def fleet(binary: str, models: dict[str, Path], work: Path) -> Iterator[dict[str, tuple[str, int]]]:
    """Routers A (tiny-a) and B (tiny-b), peers of each other; yields {"a"|"b": (base URL, pid)}.

    Both ports are picked up front, so each config names the other router from the start; a peer that
    does not answer yet is simply not listed until it does (router_app/fleet.py), which is polled for.
    """
    (work / "client.keys").write_text(CLIENT_KEY + "\n")
    (work / "fleet.keys").write_text(FLEET_KEY + "\n")
    ports = {"a": free_port(), "b": free_port()}
    while ports["b"] == ports["a"]:
        ports["b"] = free_port()
    routers: dict[str, tuple[str, int]] = {}
    with ExitStack() as stack:
        for name, model, other in (("a", "tiny-a", "b"), ("b", "tiny-b", "a")):
            config = {
                "router": {
                    "port": ports[name],
                    "log_level": "warning",
                    "supervisor": "process",
                    "api_key_files": [str(work / "client.keys"), str(work / "fleet.keys")],
                    "peers": [
                        {
                            "name": f"host-{other}",
                            "url": f"http://127.0.0.1:{ports[other]}",
                            "api_key_file": str(work / "fleet.keys"),
                        }
                    ],
                },
                "models": [
                    {
                        "id": model,
                        "backend": "llamacpp",
                        "command": llama_command(binary, models[model], model),
                        "preload": True,
                    }
                ],
            }
            path = work / f"router-{name}.yml"
            path.write_text(yaml.safe_dump(config))
            argv = [sys.executable, "-m", "router_app.cli", "serve", "--config", str(path)]
            log = stack.enter_context((work / f"router-{name}.log").open("wb"))
            proc = stack.enter_context(process(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            routers[name] = (f"http://127.0.0.1:{ports[name]}", proc.pid)
            wait_http(routers[name][0] + "/health", proc=proc)
        for name in routers:
            wait_listed(routers[name][0], {"tiny-a": "loaded", "tiny-b": "loaded"})
        yield routers


def wait_listed(base: str, wanted: dict[str, str], timeout: float = 120.0) -> None:
    """Poll base's /v1/models (backoff) until it lists every model of `wanted` with that status."""
    started = time.monotonic()
    delay = 0.01
    listed: dict[str, str] = {}
    while True:
        answer = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)
        if answer.status_code == 200:
            listed = {e["id"]: e.get("status", {}).get("value") for e in answer.json()["data"]}
            if all(listed.get(model) == status for model, status in wanted.items()):
                return
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{base} lists {listed} after {timeout} s, not {wanted}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def run_arm(arm: str, routers: dict[str, tuple[str, int]], seed: int, clients: int, requests: int) -> Result:
    result = Result(arm, seed)
    a, b = routers["a"][0], routers["b"][0]
    urls = {"tiny-a": a, "tiny-b": a} if arm == "fleet" else {"tiny-a": a, "tiny-b": b}
    cpu = {name: cpu_seconds(pid) for name, (_, pid) in routers.items()}
    asyncio.run(workload(urls, result, clients, requests))
    result.router_cpu_s = {name: cpu_seconds(pid) - cpu[name] for name, (_, pid) in routers.items()}
    return result


def run(seeds: list[int], clients: int, requests: int, solo: int = 200) -> dict[str, object]:
    """Both arms for each seed with `clients` clients; then `solo` requests one at a time (the hop without queueing)."""
    binary = llama_server()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        models = tiny_models(work / "models")
        rows = []
        with fleet(binary, models, work) as routers:
            # Warm-up, not counted: every path once (engines, pools, A's connection to B).
            for arm in ARMS:
                run_arm(arm, routers, 0, clients, clients)
            for seed in seeds:
                order = ARMS if seed % 2 else tuple(reversed(ARMS))
                for arm in order:
                    result = run_arm(arm, routers, seed, clients, requests)
                    row = result.summary()
                    if result.errors:
                        row["first_errors"] = result.errors[:3]
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            solo_rows = []
            for arm in ARMS if solo else ():
                row = run_arm(arm, routers, seeds[0], 1, solo).summary()
                print(json.dumps({"one_client": row}), flush=True)
                solo_rows.append(row)
    return {"clients": clients, "requests": requests, "rows": rows, "solo": solo, "solo_rows": solo_rows}


def hop(rows: list[dict]) -> dict[str, float]:
    """What the hop adds to a tiny-b request, median over seeds: fleet (via A) minus direct (to B), in ms; and
    the CPU router A spends per forwarded request (A's CPU in the fleet arm minus the direct arm)."""
    by_seed: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], {})[row["arm"]] = row
    added: dict[str, list[float]] = {"p50_ms": [], "p95_ms": [], "ttfb_p50_ms": [], "cpu_a_ms": []}
    for pair in by_seed.values():
        via_a, to_b = pair["fleet"]["models"]["tiny-b"], pair["direct"]["models"]["tiny-b"]
        for key in ("p50_ms", "p95_ms", "ttfb_p50_ms"):
            added[key].append(via_a[key] - to_b[key])
        extra_cpu = pair["fleet"]["cpu_a_s"] - pair["direct"]["cpu_a_s"]
        added["cpu_a_ms"].append(1000 * extra_cpu / max(via_a["n"], 1))
    return {key: round(statistics.median(values), 1) for key, values in added.items() if values}


def report(data: dict[str, object]) -> str:
    rows = data["rows"]
    lines = [
        f"{data['clients']} clients, {data['requests']} streamed requests per arm, tiny-a or tiny-b at random per "
        "request (same seeded sequence in both arms), 4–24 tokens; each model resident on its own router, "
        "llama-server flags `-c 1024 -np 4 -t 1`. Times in ms: last byte (p50/p95/max) and first byte (TTFB).",
        "",
        "| seed | arm | wall s | p50 | p95 | max | TTFB p50 | TTFB p95 | ok | failed | CPU A s | CPU B s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['seed']} | {row['arm']} | {row['wall_s']} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} "
            f"| {row['ttfb_p50_ms']} | {row['ttfb_p95_ms']} | {row['ok']} | {row['failed']} | {row['cpu_a_s']} "
            f"| {row['cpu_b_s']} |"
        )
    lines += [
        "",
        "Per model: in the fleet arm tiny-a is local to A and tiny-b forwarded to B; in the direct arm each goes "
        "to its own router.",
        "",
        "| seed | arm | model | n | p50 | p95 | TTFB p50 | TTFB p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for model, stats in row["models"].items():
            where = ("forwarded" if model == "tiny-b" else "local") if row["arm"] == "fleet" else "own router"
            lines.append(
                f"| {row['seed']} | {row['arm']} | {model} ({where}) | {stats['n']} | {stats['p50_ms']} "
                f"| {stats['p95_ms']} | {stats['ttfb_p50_ms']} | {stats['ttfb_p95_ms']} |"
            )
    added = hop(rows)
    if added:
        lines += [
            "",
            f"The hop at {data['clients']} clients (tiny-b via A minus tiny-b sent to B directly, median over seeds): "
            f"{added['p50_ms']:+.1f} ms p50, {added['p95_ms']:+.1f} ms p95, {added['ttfb_p50_ms']:+.1f} ms TTFB p50; "
            f"router A spends {added['cpu_a_ms']:.2f} ms CPU per forwarded request.",
        ]
    solo = hop(data.get("solo_rows") or [])
    if solo:
        fleet_row, direct_row = (next(r for r in data["solo_rows"] if r["arm"] == arm) for arm in ARMS)
        lines += [
            "",
            f"One client at a time ({data['solo']} requests per arm, seed {fleet_row['seed']}, no queueing): tiny-b "
            f"p50 {fleet_row['models']['tiny-b']['p50_ms']} ms via A, {direct_row['models']['tiny-b']['p50_ms']} ms "
            f"direct; the hop adds {solo['p50_ms']:+.1f} ms p50, {solo['ttfb_p50_ms']:+.1f} ms TTFB p50, "
            f"{solo['p95_ms']:+.1f} ms p95.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--one-client", type=int, default=200, help="requests sent one at a time per arm (0: none)")
    args = parser.parse_args()
    data = run([int(s) for s in args.seeds.split(",")], args.clients, args.requests, args.one_client)
    print(report(data))
    print(json.dumps({"hop": hop(data["rows"]), "hop_one_client": hop(data["solo_rows"])}))


if __name__ == "__main__":
    main()
