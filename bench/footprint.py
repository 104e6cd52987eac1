"""Benchmark 4: router memory (RSS) idle and under load, and time from process start to /health.

python bench/footprint.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stream_relay
from common import ROOT, free_port, median, process, router, rss_mb, wait_http


def startup_seconds(config_path: Path, port: int) -> float:
    started = time.perf_counter()
    with process([sys.executable, "-m", "router_app.cli", "serve", "--config", str(config_path)], cwd=ROOT) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        return time.perf_counter() - started


def run(runs: int = 5) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    engine_port = free_port()
    with process([sys.executable, str(stream_relay.ENGINE), "--port", str(engine_port)]) as engine:
        wait_http(f"http://127.0.0.1:{engine_port}/health", proc=engine)
        models = [{"id": "synthetic", "backend": "openai", "url": f"http://127.0.0.1:{engine_port}/v1"}]
        port = free_port()
        path = workdir / "startup.yml"
        path.write_text(yaml.safe_dump({"router": {"port": port, "log_level": "warning"}, "models": models}))
        startups = [startup_seconds(path, port) for _ in range(runs)]
        with router({"router": {"metrics_footer": False}, "models": models}, workdir) as (url, proc):
            idle = rss_mb(proc.pid)
            peak = [idle]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak.append(rss_mb(proc.pid))
                    stop.wait(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                asyncio.run(stream_relay._load(f"{url}/v1/chat/completions", 64, 2000))
            finally:
                stop.set()
                sampler.join()
            after = rss_mb(proc.pid)
    return {
        "startup_s_median": median(startups),
        "startup_s_max": max(startups),
        "rss_idle_mb": idle,
        "rss_load_peak_mb": max(peak),
        "rss_after_load_mb": after,
    }


def report(r: dict) -> str:
    return "\n".join(
        [
            "| measurement | value |",
            "|---|---|",
            f"| process start → `/health` 200 (median) | {r['startup_s_median']:.2f} s "
            f"(max {r['startup_s_max']:.2f} s) |",
            f"| RSS idle | {r['rss_idle_mb']:.1f} MB |",
            f"| RSS peak under 64 streams | {r['rss_load_peak_mb']:.1f} MB |",
            f"| RSS after the load | {r['rss_after_load_mb']:.1f} MB |",
        ]
    )


if __name__ == "__main__":
    print(report(run()))
