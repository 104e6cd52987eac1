"""`llm-router bench`: load-test any OpenAI-compatible URL across one or more models.

N concurrent clients send chat completions (streaming or not) round-robin over the models, for a
request count or a duration. Per model it reports requests done/failed, time to first token
(p50/p95), tokens/s per stream and aggregate, and the model switches it saw through the router's
status events (with their durations). A live `rich` view, plain lines (`--no-tui`), or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_LOADED = re.compile(r"loaded in ([0-9.]+) s")
SAME_SWITCH_S = 0.05


@dataclass
class ModelStats:
    """What the clients measured for one model."""

    done: int = 0
    failed: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    stream_rates: list[float] = field(default_factory=list)
    tokens: int = 0
    waits: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def switches(self) -> list[float]:
        """Durations of the distinct switches seen. Requests that joined one switch are granted together,
        so their 'loaded' events arrive within a few ms: each such cluster is one switch, and its longest
        wait is the switch's duration as clients felt it."""
        durations: list[float] = []
        last_end = -1.0
        for end, waited in sorted(self.waits):
            if durations and end - last_end < SAME_SWITCH_S:
                durations[-1] = max(durations[-1], waited)
            else:
                durations.append(waited)
            last_end = end
        return durations


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class BenchRun:
    url: str
    models: list[str]
    clients: int
    requests: int | None
    duration: float | None
    stream: bool
    max_tokens: int
    api_key: str | None = None
    prompt: str = "Write a short story about a lighthouse."
    stats: dict[str, ModelStats] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    _issued: int = 0

    def __post_init__(self) -> None:
        self.stats = {m: ModelStats() for m in self.models}

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def _next(self) -> str | None:
        if self.requests is not None and self._issued >= self.requests:
            return None
        if self.duration is not None and time.monotonic() - self.started >= self.duration:
            return None
        model = self.models[self._issued % len(self.models)]
        self._issued += 1
        return model

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(
            base_url=self.url.rstrip("/"), headers=headers, limits=limits, timeout=httpx.Timeout(None, connect=10)
        ) as client:
            self.started = time.monotonic()
            await asyncio.gather(*(self._client(client) for _ in range(self.clients)))
            self.finished = time.monotonic()

    async def _client(self, client: httpx.AsyncClient) -> None:
        while (model := self._next()) is not None:
            stats = self.stats[model]
            try:
                if self.stream:
                    await self._one_stream(client, model, stats)
                else:
                    await self._one_unary(client, model, stats)
                stats.done += 1
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                stats.failed += 1
                stats.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def _body(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "stream": self.stream,
            **({"stream_options": {"include_usage": True}} if self.stream else {}),
        }

    async def _one_unary(self, client: httpx.AsyncClient, model: str, stats: ModelStats) -> None:
        started = time.monotonic()
        response = await client.post("/chat/completions", json=self._body(model))
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
        data = response.json()
        if data.get("model") != model:
            raise ValueError(f"answer from model {data.get('model')!r}, asked {model!r}")
        elapsed = time.monotonic() - started
        stats.latency.append(elapsed)
        stats.ttft.append(elapsed)
        tokens = (data.get("usage") or {}).get("completion_tokens", 0)
        stats.tokens += tokens
        if tokens and elapsed > 0:
            stats.stream_rates.append(tokens / elapsed)

    async def _one_stream(self, client: httpx.AsyncClient, model: str, stats: ModelStats) -> None:
        started = time.monotonic()
        first_token: float | None = None
        switch_seen: float | None = None
        tokens = 0
        chunks = 0
        async with client.stream("POST", "/chat/completions", json=self._body(model)) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise ValueError(f"stream error: {event['error'].get('message', event['error'])}"[:300])
                status = event.get("event")
                if status and status.get("type") == "status":
                    description = status.get("data", {}).get("description", "")
                    loaded = _LOADED.search(description)
                    if switch_seen is None and not status.get("data", {}).get("done"):
                        switch_seen = time.monotonic()
                    if loaded and switch_seen is not None:
                        stats.waits.append((time.monotonic(), float(loaded.group(1))))
                    continue
                if event.get("usage"):
                    tokens = event["usage"].get("completion_tokens", tokens)
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or choice.get("text"):
                        chunks += 1
                        if first_token is None:
                            first_token = time.monotonic()
                if event.get("model") not in (None, model):
                    raise ValueError(f"chunk from model {event.get('model')!r}, asked {model!r}")
        finished = time.monotonic()
        if first_token is None:
            raise ValueError("stream ended without tokens")
        stats.ttft.append(first_token - started)
        stats.latency.append(finished - started)
        tokens = tokens or chunks
        stats.tokens += tokens
        if finished > first_token and tokens > 1:
            stats.stream_rates.append((tokens - 1) / (finished - first_token))

    def summary(self) -> dict[str, Any]:
        """Results as plain data (the --json output)."""
        models = {}
        for name, s in self.stats.items():
            models[name] = {
                "done": s.done,
                "failed": s.failed,
                "tokens": s.tokens,
                "ttft_p50_s": percentile(s.ttft, 50),
                "ttft_p95_s": percentile(s.ttft, 95),
                "latency_p50_s": percentile(s.latency, 50),
                "latency_p99_s": percentile(s.latency, 99),
                "stream_tok_s_median": statistics.median(s.stream_rates) if s.stream_rates else None,
                "aggregate_tok_s": s.tokens / self.elapsed if self.elapsed > 0 else None,
                "switches": len(s.switches),
                "switch_s": s.switches,
                "errors": s.errors[:5],
            }
        total_tokens = sum(s.tokens for s in self.stats.values())
        return {
            "url": self.url,
            "clients": self.clients,
            "stream": self.stream,
            "max_tokens": self.max_tokens,
            "elapsed_s": self.elapsed,
            "requests": sum(s.done + s.failed for s in self.stats.values()),
            "failed": sum(s.failed for s in self.stats.values()),
            "aggregate_tok_s": total_tokens / self.elapsed if self.elapsed > 0 else None,
            "switches": sum(len(s.switches) for s in self.stats.values()),
            "models": models,
        }


def _fmt(value: float | None, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def render_table(run: BenchRun) -> Any:
    from rich.table import Table

    summary = run.summary()
    table = Table(
        title=f"{run.url}  ·  {run.clients} clients  ·  {summary['elapsed_s']:.1f} s  ·  "
        f"{_fmt(summary['aggregate_tok_s'])} tok/s total"
    )
    for column in (
        "model",
        "done",
        "failed",
        "TTFT p50",
        "TTFT p95",
        "tok/s/stream",
        "tok/s",
        "switches",
        "switch s (mean)",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, m in summary["models"].items():
        table.add_row(
            name,
            str(m["done"]),
            str(m["failed"]),
            _fmt(m["ttft_p50_s"], " ms", 1000),
            _fmt(m["ttft_p95_s"], " ms", 1000),
            _fmt(m["stream_tok_s_median"]),
            _fmt(m["aggregate_tok_s"]),
            str(m["switches"]),
            _fmt(statistics.mean(m["switch_s"]) if m["switch_s"] else None, " s", digits=2),
        )
    return table


def plain_lines(run: BenchRun) -> list[str]:
    summary = run.summary()
    lines = [
        f"elapsed {summary['elapsed_s']:.1f} s  requests {summary['requests']}  failed {summary['failed']}  "
        f"aggregate {_fmt(summary['aggregate_tok_s'])} tok/s  switches {summary['switches']}"
    ]
    for name, m in summary["models"].items():
        switch_mean = statistics.mean(m["switch_s"]) if m["switch_s"] else None
        lines.append(
            f"  {name}: done {m['done']} failed {m['failed']} ttft p50 {_fmt(m['ttft_p50_s'], ' ms', 1000)} "
            f"p95 {_fmt(m['ttft_p95_s'], ' ms', 1000)} tok/s/stream {_fmt(m['stream_tok_s_median'])} "
            f"tok/s {_fmt(m['aggregate_tok_s'])} switches {m['switches']} "
            f"(mean {_fmt(switch_mean, ' s', digits=2)})"
        )
        lines += [f"    error: {e}" for e in m["errors"]]
    return lines


async def _drive(run: BenchRun, tui: bool) -> None:
    task = asyncio.create_task(run.run())
    if tui:
        from rich.live import Live

        with Live(render_table(run), refresh_per_second=4, transient=False) as live:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                live.update(render_table(run))
    else:
        while not task.done():
            await asyncio.wait({task}, timeout=2.0)
            if not task.done():
                print(plain_lines(run)[0], flush=True)
    await task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8002/v1", help="OpenAI base URL (router or engine)")
    parser.add_argument("--clients", type=int, default=8)
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, default=None, help="total requests (default 100)")
    amount.add_argument("--duration", type=float, default=None, help="run for S seconds instead")
    parser.add_argument("--models", default=None, help="comma-separated ids (default: all from /models)")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--api-key", default=None, help="Bearer key (or $OPENAI_API_KEY)")
    parser.add_argument("--no-tui", action="store_true", help="plain lines instead of the live view")
    parser.add_argument("--json", type=Path, default=None, help="write the results to FILE")


def main(args: argparse.Namespace) -> int:
    import os

    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    models = [m for m in (args.models or "").split(",") if m]
    if not models:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            listing = httpx.get(args.url.rstrip("/") + "/models", headers=headers, timeout=10).json()
        except (httpx.HTTPError, ValueError) as exc:
            print(f"llm-router bench: cannot list models at {args.url}/models: {exc}", file=sys.stderr)
            return 2
        models = [m["id"] for m in listing.get("data", [])]
    if not models:
        print("llm-router bench: no models to test (--models a,b)", file=sys.stderr)
        return 2
    requests = args.requests if args.requests is not None or args.duration is not None else 100
    run = BenchRun(
        url=args.url,
        models=models,
        clients=args.clients,
        requests=requests,
        duration=args.duration,
        stream=args.stream,
        max_tokens=args.max_tokens,
        api_key=api_key,
    )
    tui = not args.no_tui and sys.stdout.isatty()
    asyncio.run(_drive(run, tui))
    if tui:
        pass  # the live view left the final table on screen
    else:
        print("\n".join(plain_lines(run)))
    if args.json:
        args.json.write_text(json.dumps(run.summary(), indent=2))
    return 1 if run.summary()["failed"] else 0
