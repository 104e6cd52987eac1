"""scripts/gpu_check.py on this CPU machine: the bundle a lent GPU machine is given (size, wheels for its Python) and
the whole check flow rehearsed on the real CPU llama-server behind the real router (`run --cpu`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
MiB = 1024**2


@pytest.mark.llama
def test_cpu_rehearsal_passes_every_check(llama_server_bin: Path, tmp_path: Path) -> None:
    """Config through the role's filters and check-config, three wide-KV models, two co-resident by their learned
    (RSS) footprints, the third evicting one, every engine gone after the stop."""
    env = {**os.environ, "LLAMA_SERVER_BIN": str(llama_server_bin)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--cpu", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    names = [line.split()[1] for line in lines]
    assert names == ["check-config", "capacity", "footprint", "co-resident", "evict", "freed"], lines
    assert all(line.startswith("PASS") for line in lines), lines
    evict = next(line for line in lines if line.split()[1] == "evict")
    assert "gpu-check-c ready" in evict and "evictions(memory) 1" in evict


@pytest.mark.network
def test_bundle_fits_the_carry_limit_and_installs_for_python_3_12(tmp_path: Path) -> None:
    """`make gpu-check-bundle`: the pinned source archive and the router's wheels, under 64 MiB with the working
    tree; the wheels install for CPython 3.12 on x86-64 Linux without an index (as on the lent machine)."""
    bundle = tmp_path / "bundle"
    env = {**os.environ, "GPU_CHECK_BUNDLE": str(bundle)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "bundle"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["archive"]["name"] == "llama.cpp-b11312.tar.gz" and manifest["python"] == "3.12"
    total = int(next(line for line in result.stdout.splitlines() if line.startswith("total")).split()[1])
    assert total < 64, result.stdout
    names = {w.split("-")[0].lower() for w in manifest["wheels"]}
    assert {"fastapi", "starlette", "pydantic", "pydantic_core", "uvicorn", "httpx", "aiohttp", "nvidia_ml_py"} <= names
    assert len(manifest["wheels"]) == len(manifest["requirements"])  # one wheel per requirement, one version each
    site = tmp_path / "site"
    platforms = [arg for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64") for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--only-binary=:all:"]
    pip += ["--python-version", "3.12", "--implementation", "cp", *platforms, "--target", str(site)]
    installed = subprocess.run([*pip, *map(str, sorted((bundle / "wheels").glob("*.whl")))], capture_output=True)
    assert installed.returncode == 0, installed.stderr.decode()[-3000:]
    assert (site / "fastapi").is_dir() and list(site.glob("pydantic_core/_pydantic_core.cpython-312-x86_64*.so"))
