"""`make soak`: the router for SOAK_MINUTES (30) under SOAK_CLIENTS (32) clients and a fault every few seconds.

Three tiny llama.cpp models on router A (a and b fit together under a declared 260 MiB budget, c evicts both), a
model whose engine hangs while loading (`hang`: load timeout), and router B, a fleet peer, serving model p. Every
client loops over every API (chat and legacy completions, Responses, Anthropic Messages, streamed and not;
embeddings; tokenize) on a random model, and walks away from some streams. Faults, at random every 3-6 s: SIGKILL of
an engine (mid-stream where one streams), a request for `hang`, a SIGHUP reload that changes model c, a client that
leaves mid-stream, router B killed and restarted, router A restarted (SIGTERM, graceful) while its clients keep
sending — in the first half only, so that the router process measured at the end has run the second half under
every other fault.

Each request must end in a complete answer from the model asked for, or a clean error in its API's shape, within
its bound: never a silent truncation, a wrong model or a hang. At the end: no engine process left behind, router A's
RSS and open file descriptors (idle, the last router process against the first) within 10 %, its memory accounting
back to zero once every model is unloaded, and every ERROR line of its log explained by an injected fault.

SOAK_MINUTES=3 is the CI version (`make soak-ci`, part of `make test`); `make soak` writes docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import ROOT, free_port, llama_command, llama_server, machine, rss_mb  # bench/ is on sys.path

LOCAL = ("a", "b", "c")
APIS = ("chat", "chat-stream", "completions", "completions-stream", "responses", "responses-stream",
        "messages", "messages-stream", "embeddings", "tokenize")  # fmt: skip
FAULTS = {"kill_engine": 3, "hang_load": 2, "reload": 2, "walk_away": 2, "peer_restart": 1, "router_restart": 1}
REQUEST_BOUND_S = 120.0  # a request that takes longer has hung
# ERROR lines of router A that an injected fault explains (anything else fails the soak). A killed engine is a
# WARNING ("lost its engine"), a dead peer an answer to its client; only the hanging load is an ERROR.
# The engines serve embeddings as well as generation (llama-server b11312 refuses /v1/embeddings without
# `--embeddings`, tools/server/server-context.cpp:5373, and still generates with it).
ENGINE_FLAGS = ["--embeddings", "--pooling", "mean"]
EXPLAINED = {
    "hang_load": re.compile(r"loading hang failed \(timeout\): hang did not become ready"),
    "kill_engine": re.compile(r"killed by SIGKILL"),
}


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    fault_outcomes: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, float]] = field(default_factory=list)
    by_api: Counter[str] = field(default_factory=Counter)

    def fail(self, what: str) -> None:
        self.outcomes["FAILED"] += 1
        if len(self.failures) < 50:
            self.failures.append(what)


class Routers:
    """Router A (the one under test) and router B (its fleet peer), started and restarted as subprocesses."""

    def __init__(self, work: Path, binary: str) -> None:
        from router_app.tools.tiny_gguf import write_model

        self.work = work
        self.ports = {"A": free_port(), "B": free_port()}
        while self.ports["B"] == self.ports["A"]:
            self.ports["B"] = free_port()
        models = {name: write_model(work / f"{name}.gguf", name=name, seed=seed) for name, seed in
                  (("a", 1), ("b", 2), ("c", 3), ("p", 4))}  # fmt: skip
        hang = [sys.executable, "-c", "import sys, time; time.sleep(3600)", "${PORT}"]  # never listens
        self.config_a: dict[str, Any] = {
            "router": {
                "port": self.ports["A"], "supervisor": "process", "log_level": "info", "state_dir": str(work / "state"),
                "memory": {"source": "declared", "devices": {"cpu": "260MiB"}}, "progress_interval_s": 1,
                "fairness_s": 2, "drain_timeout_s": 30, "load_timeout_s": 60, "shutdown_grace_s": 30,
                "peers": [{"name": "peer", "url": f"http://127.0.0.1:{self.ports['B']}", "timeout_s": 2}],
                "peer_refresh_s": 1,
            },
            "models": [
                *({"id": m, "backend": "llamacpp", "command": [*llama_command(binary, models[m], m), *ENGINE_FLAGS],
                   "memory": size,
                   "description": "v1"} for m, size in (("a", "100MiB"), ("b", "100MiB"), ("c", "200MiB"))),
                {"id": "hang", "backend": "llamacpp", "command": hang, "memory": "10MiB", "load_timeout_s": 4,
                 "first_load_timeout_s": 4},
            ],
        }  # fmt: skip
        self.config_b = {
            "router": {"port": self.ports["B"], "supervisor": "process", "log_level": "warning"},
            "models": [
                {"id": "p", "backend": "llamacpp", "command": [*llama_command(binary, models["p"], "p"), *ENGINE_FLAGS]}
            ],
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: list[tuple[float, float]] = []  # router A's stop-to-ready windows (monotonic)
        self.started_at = 0.0  # when router A's current process answered first (monotonic)
        self.generation = 0
        self.logs: list[Path] = []
        self.write("A")
        self.write("B")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def write(self, name: str) -> Path:
        path = self.work / f"router-{name}.yml"
        path.write_text(yaml.safe_dump(self.config_a if name == "A" else self.config_b))
        return path

    async def start(self, name: str) -> None:
        argv = [sys.executable, "-m", "router_app.cli", "serve", "--config", str(self.work / f"router-{name}.yml")]
        if name == "A":
            self.generation += 1
        log = self.work / f"router-{name}-{self.generation if name == 'A' else len(self.logs)}.log"
        if name == "A":
            self.logs.append(log)
        self.procs[name] = spawn(argv, log)
        delay = 0.01
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.url(name) + "/health")).status_code == 200:
                        if name == "A":
                            self.started_at = time.monotonic()
                        return
                if self.procs[name].poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"router {name} exited with {self.procs[name].returncode}:\n{tail}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, bound_s: float = 90) -> int | None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        deadline = time.monotonic() + bound_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                return None  # did not stop within its bound
            await asyncio.sleep(0.05)
        return proc.returncode

    def pid(self, name: str) -> int:
        return self.procs[name].pid


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def is_error(payload: dict[str, Any]) -> bool:
    return "error" in payload or payload.get("type") == "error"


async def one_request(client: httpx.AsyncClient, base: str, model: str, api: str, rng: random.Random,
                      tally: Tally, walk: bool = False, seen: dict[str, bool] | None = None) -> str:  # fmt: skip
    """Send one request and judge its answer; returns its outcome. `seen["answer"]` once a response began."""
    seen = seen if seen is not None else {}
    tokens = rng.randint(4, 32)
    stream = api.endswith("-stream")
    kind = api.removesuffix("-stream")
    message = [{"role": "user", "content": rng.choice(["Hello", "Tell me a story.", "What is 2+2?"])}]
    path, body = {
        "chat": ("/v1/chat/completions", {"messages": message, "max_tokens": tokens}),
        "completions": ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": tokens}),
        "responses": ("/v1/responses", {"input": "Hello", "max_output_tokens": max(tokens, 16)}),
        "messages": ("/v1/messages", {"messages": message, "max_tokens": tokens}),
        "embeddings": ("/v1/embeddings", {"input": ["Hello", "Tell me a story."][: rng.randint(1, 2)]}),
        "tokenize": ("/tokenize", {"content": message[0]["content"]}),
    }[kind]
    body = {"model": model, **body, **({"stream": True} if stream else {})}
    if not stream:
        answer = await client.post(base + path, json=body)
        seen["answer"] = True
        try:
            data = answer.json()
        except ValueError:
            return f"bad_shape: {answer.status_code} {answer.text[:120]!r}"
        if answer.status_code != 200:
            return f"error:{answer.status_code}" if isinstance(data, dict) and is_error(data) else \
                f"bad_shape: {answer.status_code} {answer.text[:120]!r}"  # fmt: skip
        return judge_answer(kind, model, body, data)
    lines: list[str] = []
    async with client.stream("POST", base + path, json=body) as answer:
        seen["answer"] = True
        if answer.status_code != 200:
            raw = await answer.aread()
            try:
                data = json.loads(raw)
            except ValueError:
                return f"bad_shape: {answer.status_code} {raw[:120]!r}"
            return f"error:{answer.status_code}" if is_error(data) else f"bad_shape: {raw[:120]!r}"
        async for line in answer.aiter_lines():
            lines.append(line)
            if walk and len(lines) >= 3:
                return "walked_away"
    return judge_stream(kind, model, lines)


def judge_answer(kind: str, model: str, body: dict[str, Any], data: Any) -> str:
    """A whole answer (status 200): from the model asked for, with what its API promises."""
    if kind == "tokenize":  # llama-server's /tokenize names no model: its tokens must be there
        tokens = data.get("tokens") if isinstance(data, dict) else None
        return "ok" if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens) else \
            f"bad_shape: {json.dumps(data)[:120]}"  # fmt: skip
    if not isinstance(data, dict) or data.get("model") != model:
        return f"wrong_model: asked {model}, got {data.get('model') if isinstance(data, dict) else data!r}"
    if kind == "embeddings":
        vectors = [item.get("embedding") for item in data.get("data") or []]
        if len(vectors) != len(body["input"]) or not all(isinstance(v, list) and v for v in vectors):
            return f"bad_shape: {len(vectors)} embeddings for {len(body['input'])} inputs"
    return "ok"


def judge_stream(kind: str, model: str, lines: list[str]) -> str:
    payloads = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            try:
                payloads.append(json.loads(line[6:]))
            except ValueError:
                return f"bad_shape: {line[:120]!r}"
    errored = any(isinstance(p, dict) and is_error(p) for p in payloads)
    if kind in ("chat", "completions"):
        for p in payloads:
            if is_error(p):
                continue
            if not p.get("choices"):
                return f"bad_shape: chunk without choices[0]: {json.dumps(p)[:160]}"
            if p.get("model") != model:
                return f"wrong_model: asked {model}, got {p.get('model')}"
        if "data: [DONE]" not in lines:
            return "truncated: no [DONE]"
        return "error:in-stream" if errored else "ok"
    if kind == "responses":
        done = any(p.get("type") in ("response.completed", "response.incomplete", "response.failed") for p in payloads)
        # llama-server's response.created/in_progress carry a response without a model; the others must name ours.
        models = {
            p["response"]["model"] for p in payloads if isinstance(p.get("response"), dict) and "model" in p["response"]
        }
        if models - {model}:
            return f"wrong_model: asked {model}, got {models}"
        return "error:in-stream" if errored else "ok" if done else "truncated: no response.completed"
    done = any(p.get("type") == "message_stop" for p in payloads)
    models = {p["message"]["model"] for p in payloads if isinstance(p.get("message"), dict) and "model" in p["message"]}
    if models - {model}:
        return f"wrong_model: asked {model}, got {models}"
    return "error:in-stream" if errored else "ok" if done else "truncated: no message_stop"


async def client_loop(index: int, routers: Routers, stop: asyncio.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed * 1000 + index)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_BOUND_S, connect=5), limits=limits) as client:
        while not stop.is_set():
            model = rng.choices(("a", "b", "c", "p"), weights=(3, 3, 2, 2))[0]
            api = rng.choice(APIS)
            walk = api.endswith("-stream") and rng.random() < 0.1
            seen: dict[str, bool] = {}
            sent = time.monotonic()
            try:
                outcome = await asyncio.wait_for(
                    one_request(client, routers.url("A"), model, api, rng, tally, walk, seen), REQUEST_BOUND_S + 10
                )
            except TimeoutError:
                outcome = "hang: no answer within its bound"
            except httpx.ConnectError:
                outcome = "refused"  # router A restarting: the client knows at once, nothing half-done
                await asyncio.sleep(0.2)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                now = time.monotonic()
                restarting = any(began - 1 <= now and sent <= end + 1 for began, end in routers.restarts)
                if not seen and restarting:
                    # HTTP/1.1's keep-alive race: the stopping router closed an idle connection as this request
                    # went out on it; no answer began, the router never read it (clients retry these).
                    outcome = "refused"
                else:
                    near = min((round(sent - began, 2) for began, _ in routers.restarts), key=abs, default=None)
                    outcome = (
                        f"truncated: connection broken ({type(exc).__name__}, answer begun: {bool(seen)}, "
                        f"sent {near} s after a restart began, request took {now - sent:.2f} s)"
                    )
            except httpx.HTTPError as exc:
                outcome = f"transport: {type(exc).__name__}: {exc}"
            tally.by_api[api] += 1
            bucket = outcome.split(":")[0]
            if bucket in ("ok", "error", "walked_away", "refused"):
                tally.outcomes[outcome if bucket == "error" else bucket] += 1
            else:
                tally.fail(f"{model} {api}: {outcome}")


async def health(base: str) -> dict[str, Any] | None:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(base + "/health")).json()
    return None


async def inject(kind: str, routers: Routers, rng: random.Random, tally: Tally, tasks: set[asyncio.Task[Any]]) -> None:
    tally.faults[kind] += 1
    base = routers.url("A")
    if kind == "kill_engine":
        for _ in range(20):  # models come and go many times a second: look again until one runs
            state = await health(base)
            running = [m for m in (state or {}).get("models", []) if str(m.get("supervisor", "")).startswith("pid ")
                       and m.get("state") in ("ready", "loading")]  # fmt: skip
            busy = [m for m in running if m.get("inflight")] or running
            if busy:
                victim = rng.choice(busy)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(victim["supervisor"].removeprefix("pid ")), signal.SIGKILL)
                    busy_now = "mid-request" if victim.get("inflight") else "idle"
                    tally.fault_outcomes[f"kill_engine:{victim['id']} {busy_now}"] += 1
                    break
            await asyncio.sleep(0.1)
        else:
            tally.fault_outcomes["kill_engine:no engine running"] += 1
    elif kind in ("hang_load", "walk_away"):
        model, api = ("hang", "chat") if kind == "hang_load" else (rng.choice(LOCAL), "chat-stream")

        async def request() -> None:
            async with httpx.AsyncClient(timeout=REQUEST_BOUND_S) as client:
                try:
                    outcome = await one_request(client, base, model, api, rng, tally, walk=kind == "walk_away")
                except httpx.HTTPError as exc:
                    outcome = f"transport: {type(exc).__name__}"
            tally.fault_outcomes[f"{kind}:{outcome.split(' ')[0]}"] += 1
            if kind == "hang_load" and not outcome.startswith(("error:503", "refused", "transport")):
                tally.fail(f"hang model answered {outcome}")

        task = asyncio.ensure_future(request())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    elif kind == "reload":
        model = routers.config_a["models"][2]
        model["description"] = "v2" if model["description"] == "v1" else "v1"  # a changed definition: c restarts
        routers.write("A")
        with contextlib.suppress(ProcessLookupError):
            os.kill(routers.pid("A"), signal.SIGHUP)
    elif kind == "peer_restart":
        await routers.stop("B", signal.SIGKILL)
        await asyncio.sleep(rng.uniform(0.5, 2))
        await routers.start("B")
    elif kind == "router_restart":
        window = len(routers.restarts)
        routers.restarts.append((time.monotonic(), float("inf")))  # open until router A is back
        code = await routers.stop("A")
        tally.fault_outcomes[f"router_restart:exit {code}"] += 1
        if code is None:
            tally.fail("router A did not stop within its bound")
        await routers.start("A")
        routers.restarts[window] = (routers.restarts[window][0], time.monotonic())


async def sampler(routers: Routers, stop: asyncio.Event, tally: Tally, started: float) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, ValueError):
            pid = routers.pid("A")
            state = await health(routers.url("A"))
            used = sum(d.get("used", 0) for d in (state or {}).get("memory", []))
            tally.samples.append({
                "t": time.monotonic() - started, "generation": routers.generation, "rss_mb": rss_mb(pid),
                "fds": len(os.listdir(f"/proc/{pid}/fd")), "used_mb": used / 2**20,
            })  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def idle_footprint(routers: Routers) -> dict[str, Any]:
    """Unload every local model, wait until the accounting says nothing is held and no connection is open; RSS and
    open descriptors of router A then."""
    base = routers.url("A")
    async with httpx.AsyncClient(timeout=60) as client:
        for model in (*LOCAL, "hang"):
            await client.post(base + "/models/unload", json={"model": model})
        with contextlib.suppress(httpx.HTTPError):  # the peer's model too: no engine of this soak may stay up
            await client.post(routers.url("B") + "/models/unload", json={"model": "p"})
        delay, deadline = 0.05, time.monotonic() + 60
        while True:
            state = (await client.get(base + "/health")).json()
            used = sum(d.get("used", 0) for d in state.get("memory", []))
            if used == 0 and not state.get("current") and not engines_of(routers.work):
                break
            if time.monotonic() > deadline:
                return {"used_mb": used / 2**20, "rss_mb": -1, "fds": -1}
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    # Connections close a little after their last use: the peer's stay pooled for the fleet's keep-alive (2 s), as
    # many as the last burst needed, and a client's is closed by the router once it reads the client's close.
    # Wait until none is left, so the count compares what an idle router holds; one that never closes leaked and
    # is counted.
    pid = routers.pid("A")
    delay, deadline = 0.05, time.monotonic() + 15
    while connections(open_fds(pid)) and time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    fds = open_fds(pid)
    return {"used_mb": 0.0, "rss_mb": rss_mb(pid), "fds": float(sum(fds.values())), "open": dict(fds)}


def connections(fds: Counter[str]) -> int:
    return sum(count for kind, count in fds.items() if kind.startswith("tcp ") and "listen" not in kind)


def open_fds(pid: int) -> Counter[str]:
    """The process's open file descriptors by what they are: a file's path, `pipe`, `unix`, `tcp listen :PORT`,
    `tcp from :PORT` (a client's connection to a listening port), `tcp to :PORT` (a connection it made)."""
    rows = []
    for proto in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            rows += [line.split() for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]]
    port = {row[9]: (int(row[1].rsplit(":", 1)[1], 16), int(row[2].rsplit(":", 1)[1], 16), row[3]) for row in rows}
    listening = {local for local, _, state in port.values() if state == "0A"}
    found = Counter[str]()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in port:
                local, remote, state = port[target[8:-1]]
                if state == "0A":
                    target = f"tcp listen :{local}"
                elif state != "01":
                    target = f"tcp state {state}"
                else:
                    target = f"tcp from :{local}" if local in listening else f"tcp to :{remote}"
            elif target.startswith("socket:["):
                target = "unix"
            elif target.startswith("pipe:["):
                target = "pipe"
            found[re.sub(r"router-A-\d+\.log$", "router-A-N.log", target)] += 1
    return found


def engines_of(work: Path) -> list[int]:
    """Processes whose command line names this soak's files (its engines), other than the routers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(str(work).encode() in arg for arg in argv) and b"router_app.cli" not in argv:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
    return found


def error_lines(routers: Routers, tally: Tally) -> tuple[list[str], Counter[str]]:
    """Router A's ERROR lines that no injected fault explains, and how many each kind of fault explains."""
    unexplained, explained = [], Counter[str]()
    for log in routers.logs:
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " not in line:
                continue
            kind = next((k for k, p in EXPLAINED.items() if tally.faults[k] and p.search(line)), None)
            if kind is None:
                unexplained.append(line[:300])
            else:
                explained[kind] += 1
    return unexplained, explained


async def soak(minutes: float, clients: int, seed: int) -> dict[str, Any]:
    binary = llama_server()
    rng = random.Random(seed)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="llm-router-soak-") as tmp:
        work = Path(tmp)
        routers = Routers(work, binary)
        await routers.start("B")
        await routers.start("A")
        started = time.monotonic()
        stop_clients, stop_sampler = asyncio.Event(), asyncio.Event()
        # Warm-up without faults, then the idle baseline of the first router process.
        warm = [asyncio.ensure_future(client_loop(i, routers, stop_clients, tally, seed)) for i in range(clients)]
        await asyncio.sleep(min(30.0, minutes * 60 / 6))
        stop_clients.set()
        await asyncio.gather(*warm)
        baseline = await idle_footprint(routers)
        stop_clients.clear()
        sampling = asyncio.ensure_future(sampler(routers, stop_sampler, tally, started))
        loops = [asyncio.ensure_future(client_loop(i, routers, stop_clients, tally, seed + 1)) for i in range(clients)]
        side: set[asyncio.Task[Any]] = set()
        end = started + minutes * 60
        kinds, weights = list(FAULTS), list(FAULTS.values())
        last_restart = started + minutes * 60 / 2  # router A's last process then runs the second half
        while time.monotonic() < end - 20:  # the last 20 s without faults: everything in flight settles
            await asyncio.sleep(rng.uniform(3, 6))
            kind = rng.choices(kinds, weights)[0]
            while kind == "router_restart" and time.monotonic() > last_restart:
                kind = rng.choices(kinds, weights)[0]
            await inject(kind, routers, rng, tally, side)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        stop_clients.set()
        await asyncio.gather(*loops, *side)
        stop_sampler.set()
        await sampling
        final = await idle_footprint(routers)
        final["process_minutes"] = (time.monotonic() - routers.started_at) / 60
        left_running = engines_of(work)  # with routers up and nothing loaded, no engine may be running
        for name in ("A", "B"):
            await routers.stop(name)
        orphans = engines_of(work)
        errors, explained = error_lines(routers, tally)
        elapsed = time.monotonic() - started
    checks = {
        "no lost or wrong answers": not tally.failures,
        "no engine running once all unloaded": not left_running,
        "no orphan engine after the routers stop": not orphans,
        "memory accounting back to zero": final["used_mb"] == 0,
        "RSS within 10 % of start": final["rss_mb"] > 0 and final["rss_mb"] <= baseline["rss_mb"] * 1.10,
        "open fds within 10 % of start": 0 < final["fds"] <= baseline["fds"] * 1.10,
        "every ERROR line explained by a fault": not errors,
    }
    return {
        "minutes": round(elapsed / 60, 1), "clients": clients, "seed": seed, "outcomes": dict(tally.outcomes),
        "by_api": dict(tally.by_api), "faults": dict(tally.faults), "fault_outcomes": dict(tally.fault_outcomes),
        "failures": tally.failures, "baseline": baseline, "final": final, "left_running": left_running,
        "orphans": orphans, "unexplained_errors": errors[:20], "explained_errors": dict(explained),
        "samples": tally.samples, "checks": checks,
        "generations": routers.generation, "machine": machine(), "commit": commit(),
    }  # fmt: skip


def commit() -> str:
    describe = ["git", "describe", "--always", "--dirty"]
    return subprocess.run(describe, cwd=ROOT, capture_output=True, text=True).stdout.strip() or "?"


def report(result: dict[str, Any], command: str) -> str:
    outcomes = result["outcomes"]
    total = sum(outcomes.values())
    errors_total = sum(result["explained_errors"].values()) + len(result["unexplained_errors"])
    lines = [
        "# Reliability: the soak under injected faults",
        "",
        f"Written by `{command}` (bench/soak.py) of {result['commit']} on {result['machine']}; one run, seed"
        f" {result['seed']}:"
        f" {result['minutes']} min, {result['clients']} clients, router A started {result['generations']} times.",
        "",
        "## Checks",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in result["checks"].items()),
        "",
        f"## Requests ({total})",
        "",
        "| outcome | requests |",
        "|---|---|",
        *(f"| {name} | {count} |" for name, count in sorted(outcomes.items(), key=lambda kv: -kv[1])),
        "",
        "`ok`: a complete answer from the model asked for; `error:N`: a clean error in the API's shape (status N, or"
        " `in-stream`: an error event, then the stream's end); `walked_away`: the client left mid-stream on purpose;"
        " `refused`: connection refused while router A restarted, or closed by it before any answer began"
        " (HTTP/1.1's keep-alive race, retried by clients); `FAILED`: anything else (listed below).",
        "",
        "| API | requests |",
        "|---|---|",
        *(f"| {api} | {count} |" for api, count in sorted(result["by_api"].items())),
        "",
        "## Faults injected",
        "",
        "| fault | times |",
        "|---|---|",
        *(f"| {kind} | {count} |" for kind, count in sorted(result["faults"].items())),
        "",
        "What they met: " + ", ".join(f"{k} ×{v}" for k, v in sorted(result["fault_outcomes"].items())) + ".",
        "",
        f"ERROR lines in router A's logs: {errors_total}, explained by "
        + (", ".join(f"{k} ×{v}" for k, v in sorted(result["explained_errors"].items())) or "none")
        + f"; unexplained: {len(result['unexplained_errors'])}.",
        "",
        "## Router A over time",
        "",
        f"Idle after the warm-up (first process): RSS {result['baseline']['rss_mb']:.1f} MiB, "
        f"{result['baseline']['fds']:.0f} fds. Idle at the end (process {result['generations']}, up"
        f" {result['final'].get('process_minutes', 0):.1f} min): RSS "
        f"{result['final']['rss_mb']:.1f} MiB, {result['final']['fds']:.0f} fds, memory accounted "
        f"{result['final']['used_mb']:.0f} MiB.{fd_change(result['baseline'], result['final'])}",
        "",
        "| minute | process | RSS MiB (max) | fds (max) | memory accounted MiB (max) |",
        "|---|---|---|---|---|",
    ]
    by_minute: dict[tuple[int, int], list[dict[str, float]]] = {}
    for sample in result["samples"]:
        by_minute.setdefault((int(sample["t"] // 60), int(sample["generation"])), []).append(sample)
    for (minute, generation), group in sorted(by_minute.items()):
        lines.append(
            f"| {minute} | {generation} | {max(s['rss_mb'] for s in group):.1f} | {max(s['fds'] for s in group):.0f}"
            f" | {max(s['used_mb'] for s in group):.0f} |"
        )
    if result["failures"] or result["unexplained_errors"]:
        lines += ["", "## Failures", "", *(f"- {f}" for f in result["failures"] + result["unexplained_errors"])]
    return "\n".join(lines) + "\n"


def fd_change(baseline: dict[str, Any], final: dict[str, Any]) -> str:
    """What the idle router holds at the end that it did not at the start, and the reverse (files named by path)."""
    start, end = Counter(baseline.get("open", {})), Counter(final.get("open", {}))
    more, fewer = end - start, start - end
    if not more and not fewer:
        return " The same descriptors by kind at both ends."
    listed = [f"{'+' if sign > 0 else '-'}{count} {kind}" for sign, change in ((1, more), (-1, fewer))
              for kind, count in sorted(change.items())]  # fmt: skip
    return " Descriptors, end against start: " + ", ".join(listed) + "."


def main() -> None:
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    clients = int(os.environ.get("SOAK_CLIENTS", "32"))
    seed = int(os.environ.get("SOAK_SEED", "1"))
    result = asyncio.run(soak(minutes, clients, seed))
    command = f"make soak SOAK_MINUTES={minutes:g}" if minutes != 30 else "make soak"
    text = report(result, command)
    print(text)
    if os.environ.get("SOAK_WRITE") == "1":
        (ROOT / "docs" / "reliability.md").write_text(text)
    failed = [name for name, ok in result["checks"].items() if not ok]
    if failed:
        print("soak FAILED: " + ", ".join(failed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
