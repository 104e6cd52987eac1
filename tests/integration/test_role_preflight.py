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


def test_blackwell_needs_cuda_12_8(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_gpu_compute_capabilities=["9.0", "12.0"],
        llm_router_cuda_version="12.4",
        llm_router_models=[MODEL],
    )
    assert result.returncode != 0
    assert "need CUDA 12.8 or newer" in result.stdout, result.stdout[-2000:]


def test_sglang_pin_must_fit_cuda_12(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        llm_router_gpu_compute_capabilities=["9.0"],
        llm_router_cuda_version="12.8",
        llm_router_sglang_version="0.5.23",
        llm_router_models=[MODEL],
    )
    assert result.returncode != 0 and "SGLang after 0.5.19 needs CUDA 13" in result.stdout


def test_duplicate_ports_and_names(tmp_path: Path) -> None:
    models = [{**MODEL, "port": 8002}]
    result = preflight(
        tmp_path, llm_router_gpu_compute_capabilities=["9.0"], llm_router_cuda_version="12.8", llm_router_models=models
    )
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
        llm_router_cuda_version="12.8",
        llm_router_models=[MODEL, {"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"}],
    )
    assert result.returncode == 0, result.stdout[-3000:]
