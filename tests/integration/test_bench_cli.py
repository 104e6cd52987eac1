"""`llm-router bench` against a router with two real llama-server models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import llama_model

pytestmark = pytest.mark.llama


def test_bench_alternating_models_reports_switches(start_router, llama_server_bin, models_dir, tmp_path) -> None:
    router = start_router(
        [
            llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a"),
            llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b"),
        ]
    )
    results = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "router_app.cli",
            "bench",
            "--url",
            router.url + "/v1",
            "--clients",
            "8",
            "--requests",
            "40",
            "--max-tokens",
            "8",
            "--no-tui",
            "--json",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(results.read_text())
    assert summary["requests"] == 40 and summary["failed"] == 0
    assert set(summary["models"]) == {"tiny-a", "tiny-b"}
    assert summary["switches"] >= 2, "alternating models must show the switches the router made"
    assert "switches" in run.stdout and "tiny-b: done 20 failed 0" in run.stdout


def test_bench_reports_unreachable_url(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "router_app.cli", "bench", "--url", "http://127.0.0.1:9/v1", "--no-tui"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and "cannot list models" in run.stderr
