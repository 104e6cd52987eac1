"""Helpers shared by the benchmarks: processes on free ports, readiness polling, statistics."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LLM_ROUTER_CACHE", Path.home() / ".cache" / "llm-router"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server() -> str:
    binary = os.environ.get("LLAMA_SERVER_BIN")
    if binary:
        return binary
    return (
        subprocess.run([str(ROOT / "scripts" / "build-llama-server.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )


def tiny_models(directory: Path) -> dict[str, Path]:
    from router_app.tools.tiny_gguf import write_model

    directory.mkdir(parents=True, exist_ok=True)
    return {
        name: write_model(directory / f"{name}.gguf", name=name, seed=seed)
        for name, seed in (("tiny-a", 1), ("tiny-b", 2))
    }


def llama_command(binary: str, model: Path, alias: str, port: str = "${PORT}") -> list[str]:
    return [
        binary,
        "-m",
        str(model),
        "-a",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "-c",
        "1024",
        "-np",
        "4",
        "-t",
        "1",
        "--no-webui",
    ]


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> float:
    """Poll url until 200 (tight backoff); returns seconds waited."""
    started = time.monotonic()
    delay = 0.002
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


@contextmanager
def process(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """A process for the duration of a `with` block (output discarded unless stdout/stderr are given)."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, **kwargs)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def router(config: dict, workdir: Path, **kwargs: Any) -> Iterator[tuple[str, subprocess.Popen]]:
    """The router as a subprocess on a free port; yields (base URL, process). kwargs go to `process` (stderr=)."""
    port = free_port()
    config = {"router": {"port": port, "log_level": "warning", **config.get("router", {})}, "models": config["models"]}
    path = workdir / f"router-{port}.yml"
    path.write_text(yaml.safe_dump(config))
    with process([sys.executable, "-m", "router_app.cli", "serve", "--config", str(path)], cwd=ROOT, **kwargs) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}", proc


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.platform()}"
