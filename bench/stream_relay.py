"""Benchmark 2: streaming relay throughput, router vs direct, on a synthetic engine.

bench/synthetic_engine.py emits SSE tokens as fast as the client reads (documented as synthetic: it
is not a model), so the proxy is the bottleneck. 64 concurrent streams; aggregate events/s direct
and through the router, and the router's CPU time per 1000 relayed events. The client counts events
by scanning raw bytes, so it is never the bottleneck of the two paths alike.

    python bench/stream_relay.py [--streams 64] [--tokens 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_seconds, free_port, process, router, rss_mb, wait_http

ENGINE = Path(__file__).resolve().parent / "synthetic_engine.py"
TCP_PROXY = Path(__file__).resolve().parent / "tcp_proxy.py"


async def _one(client: httpx.AsyncClient, url: str, tokens: int) -> int:
    body = {"model": "synthetic", "stream": True, "max_tokens": tokens, "messages": [{"role": "user", "content": "go"}]}
    events = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            events += chunk.count(b"data: {")
    return events


async def _load(url: str, streams: int, tokens: int) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await _one(client, url, 16)
        started = time.perf_counter()
        counts = await asyncio.gather(*(_one(client, url, tokens) for _ in range(streams)))
        return sum(counts), time.perf_counter() - started


def run(streams: int = 64, tokens: int = 2000, sample_rss: list[float] | None = None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    port = free_port()
    python = sys.executable
    with process([python, str(ENGINE), "--port", str(port)]) as engine:
        wait_http(f"http://127.0.0.1:{port}/health", proc=engine)
        config = {
            "router": {"metrics_footer": False},
            "models": [{"id": "synthetic", "backend": "openai", "url": f"http://127.0.0.1:{port}/v1"}],
        }
        direct_events, direct_s = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/chat/completions", streams, tokens))
        proxy_port = free_port()
        with process([python, str(TCP_PROXY), "--port", str(proxy_port), "--upstream", str(port)]):
            wait_http(f"http://127.0.0.1:{proxy_port}/health")
            floor_events, floor_s = asyncio.run(
                _load(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", streams, tokens)
            )
        with router(config, workdir) as (router_url, proc):
            cpu_before = cpu_seconds(proc.pid)
            routed_events, routed_s = asyncio.run(_load(f"{router_url}/v1/chat/completions", streams, tokens))
            cpu_used = cpu_seconds(proc.pid) - cpu_before
            rss = rss_mb(proc.pid)
            if sample_rss is not None:
                sample_rss.append(rss)
    direct_rate = direct_events / direct_s
    routed_rate = routed_events / routed_s
    floor_rate = floor_events / floor_s
    return {
        "streams": streams,
        "tokens": tokens,
        "direct_events_s": direct_rate,
        "router_events_s": routed_rate,
        "ratio": routed_rate / direct_rate,
        "tcp_proxy_events_s": floor_rate,
        "tcp_proxy_ratio": floor_rate / direct_rate,
        "router_cpu_ms_per_1k_events": cpu_used * 1000 / routed_events * 1000,
        "router_rss_after_mb": rss,
        "events": routed_events,
    }


def report(r: dict) -> str:
    return "\n".join(
        [
            "| path | events (tokens)/s | ratio |",
            "|---|---|---|",
            f"| direct | {r['direct_events_s']:.0f} | 1.00 |",
            f"| raw TCP byte pump (reference: the extra hop alone) | {r['tcp_proxy_events_s']:.0f} | "
            f"{r['tcp_proxy_ratio']:.2f} |",
            f"| llm-router | {r['router_events_s']:.0f} | {r['ratio']:.2f} |",
            f"\n{r['streams']} streams × {r['tokens']} tokens; router CPU "
            f"{r['router_cpu_ms_per_1k_events']:.1f} ms per 1000 events.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    print(report(run(args.streams, args.tokens)))
