"""The role's preflight refuses bad GPU/CUDA/inventory combinations with a clear message.

Runs only the read-only preflight phase of roles/llm_router against this machine (connection local).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "llm_router.yml"

pytestmark = pytest.mark.skipif(
    shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None,
    reason="ansible-core is not installed (pip install -e '.[ansible]')",
)


def preflight(tmp_path: Path, **host_vars) -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "hosts.json"
    inventory.write_text(
        json.dumps(
            {
                "llm_router": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            **host_vars,
                        }
                    }
                }
            }
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_HOME": str(tmp_path / ".ansible"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_BECOME": "false",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(PLAYBOOK),
            "--tags",
            "llm_router_preflight",
            "-e",
            "ansible_become=false",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )


MODEL = {"id": "m", "backend": "sglang", "model": "/srv/m"}
HOPPER = {"llm_router_gpu_compute_capabilities": ["9.0"], "llm_router_nvidia_driver_version": "580.95.05"}


def fake_python(tmp_path: Path, version: str) -> str:
    """An 'interpreter' that answers the preflight's version probe with `version`."""
    path = tmp_path / f"python{version}"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return str(path)


def test_blackwell_needs_cuda_12_8_for_llamacpp(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_gpu_compute_capabilities=["9.0", "12.0"],
        llm_router_nvidia_driver_version="580.95.05",
        llm_router_cuda_version="12.4",
        llm_router_models=[{"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"}],
    )
    assert result.returncode != 0
    assert "need CUDA 12.8 or newer" in result.stdout, result.stdout[-2000:]


def test_pip_engines_need_no_nvcc(tmp_path: Path) -> None:
    """Only llama.cpp is compiled: a vLLM/SGLang host passes without a CUDA toolkit."""
    result = preflight(
        tmp_path,
        **HOPPER,
        llm_router_cuda_home=str(tmp_path / "no-cuda"),
        llm_router_models=[MODEL, {"id": "v", "backend": "vllm", "model": "/srv/v"}],
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_driver_too_old_for_every_lane(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_gpu_compute_capabilities=["9.0"],
        llm_router_nvidia_driver_version="535.230.02",
        llm_router_models=[{"id": "v", "backend": "vllm", "model": "/srv/v"}],
    )
    assert result.returncode != 0
    out = result.stdout
    assert "vllm: no install lane fits this host (NVIDIA driver 535.230.02)" in out, out[-3000:]
    assert "needs driver >= " in out and "Fix: install NVIDIA driver >= " in out


def test_tabbyapi_cu13_needs_python_3_12(tmp_path: Path) -> None:
    """tabbyAPI@e632af4 pyproject.toml: the cu13 extra's torch/exllamav3/triton/FLA need python_version >= 3.12."""
    result = preflight(
        tmp_path,
        **HOPPER,
        llm_router_engine_lanes={"tabbyapi": "cu13"},
        llm_router_engine_pythons={"tabbyapi": fake_python(tmp_path, "3.11")},
        llm_router_models=[{"id": "t", "backend": "tabbyapi", "model": "/srv/t-exl3"}],
    )
    assert result.returncode != 0
    assert "tabbyapi: no install lane fits this host" in result.stdout, result.stdout[-3000:]
    assert "cu13 needs Python 3.12 (this host has 3.11)" in result.stdout


def test_vllm_python_too_old(tmp_path: Path) -> None:
    """vllm 0.32.0 (cu13 lane) METADATA: Requires-Python >=3.11,<3.15; Python 3.10 falls back to the cu12 lane
    (vllm 0.19.1, >=3.10,<3.14) unless cu13 is forced."""
    models = [{"id": "v", "backend": "vllm", "model": "/srv/v"}]
    python310 = {"vllm": fake_python(tmp_path, "3.10")}
    result = preflight(tmp_path, **HOPPER, llm_router_engine_pythons=python310, llm_router_models=models)
    assert result.returncode == 0, result.stdout[-3000:]
    result = preflight(
        tmp_path,
        **HOPPER,
        llm_router_engine_pythons=python310,
        llm_router_engine_lanes={"vllm": "cu13"},
        llm_router_models=models,
    )
    assert result.returncode != 0
    assert "vllm: no install lane fits this host" in result.stdout, result.stdout[-3000:]
    assert "cu13 needs Python 3.11/3.12 (this host has 3.10)" in result.stdout
    assert "llm_router_engine_pythons.vllm" in result.stdout


def test_router_python_too_old(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_accelerator="cpu",
        llm_router_python=fake_python(tmp_path, "3.10"),
        llm_router_models=[{"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"}],
    )
    assert result.returncode != 0 and "router: needs Python >=3.11" in result.stdout, result.stdout[-3000:]


def test_unknown_vllm_lane(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        **HOPPER,
        llm_router_engine_lanes={"vllm": "cu14"},
        llm_router_models=[{"id": "v", "backend": "vllm", "model": "/srv/v"}],
    )
    assert result.returncode != 0
    assert "vllm: lane 'cu14' (llm_router_engine_lanes.vllm) is not in the lanes table" in result.stdout


def test_llamacpp_version_must_be_a_build_tag(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_accelerator="cpu",
        llm_router_llamacpp_version="v0.3.0",
        llm_router_models=[{"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"}],
    )
    assert result.returncode != 0 and "is not a bNNNN release tag" in result.stdout


def test_sglang_pin_must_fit_cuda_12(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_gpu_compute_capabilities=["9.0"],
        llm_router_nvidia_driver_version="575.57.08",
        llm_router_sglang_version="0.5.23",
        llm_router_models=[MODEL],
    )
    assert result.returncode != 0, result.stdout[-3000:]
    assert "SGLang 0.5.11 and later need CUDA 13" in result.stdout, result.stdout[-3000:]


def test_duplicate_ports_and_names(tmp_path: Path) -> None:
    models = [{**MODEL, "port": 8002}]
    result = preflight(tmp_path, **HOPPER, llm_router_models=models)
    assert result.returncode != 0 and "Port clash" in result.stdout
    result = preflight(
        tmp_path,
        llm_router_accelerator="cpu",
        llm_router_models=[
            {"id": "a", "backend": "llamacpp", "model": "x"},
            {"id": "A", "backend": "llamacpp", "model": "y"},
        ],
    )
    assert result.returncode != 0 and "clashes with model" in result.stdout


def test_gpu_engine_on_cpu_host_is_refused(tmp_path: Path) -> None:
    result = preflight(tmp_path, llm_router_accelerator="cpu", llm_router_models=[MODEL])
    assert result.returncode != 0 and "only llama.cpp runs without a GPU" in result.stdout


def test_good_inventory_passes(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_gpu_compute_capabilities=["9.0", "12.0"],
        llm_router_nvidia_driver_version="580.95.05",
        llm_router_cuda_version="12.8",
        llm_router_models=[
            {**MODEL, "evict": "sleep"},
            {"id": "v", "backend": "vllm", "model": "/srv/v"},
            {"id": "t", "backend": "tabbyapi", "model": "/srv/t-exl3"},
            {"id": "t2", "backend": "tabbyapi", "model": "/srv/t-exl2", "format": "exl2"},
            {"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"},
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:]
