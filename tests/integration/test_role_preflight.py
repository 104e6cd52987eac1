"""The role's preflight refuses bad GPU/CUDA/inventory combinations with a clear message.

Runs only the read-only preflight phase of roles/llm_router against this machine (connection local).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "llm_router.yml"

pytestmark = pytest.mark.skipif(
    shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None,
    reason="ansible-core is not installed (pip install -e '.[ansible]')",
)


def preflight(tmp_path: Path, *args: str, **host_vars) -> subprocess.CompletedProcess[str]:
    """Runs preflight; render-only (no weights on this machine) unless the test sets llm_router_render_only."""
    host_vars.setdefault("llm_router_render_only", True)
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
            *args,
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


def test_sglang_needs_nvcc_of_its_lane_and_vllm_none(tmp_path: Path) -> None:
    """FlashInfer's JIT builds SGLang's sampling (and on sm_12x attention) kernels with nvcc at first use
    (engine-audit-2 #3); vLLM needs no toolkit. Without FlashInfer's JIT (triton attention, pytorch sampling) SGLang
    needs none either."""
    no_cuda = {**HOPPER, "llm_router_cuda_home": str(tmp_path / "no-cuda")}
    vllm = {"id": "v", "backend": "vllm", "model": "/srv/v"}
    result = preflight(tmp_path, **no_cuda, llm_router_models=[vllm])
    assert result.returncode == 0, result.stdout[-3000:]
    result = preflight(tmp_path, **no_cuda, llm_router_models=[MODEL, vllm])
    assert result.returncode != 0
    assert "SGLang models m build FlashInfer kernels with nvcc at first use" in result.stdout, result.stdout[-3000:]
    jit_free = {**MODEL, "extra_args": ["--attention-backend", "triton", "--sampling-backend", "pytorch"]}
    result = preflight(tmp_path, **no_cuda, llm_router_models=[jit_free, vllm])
    assert result.returncode == 0, result.stdout[-3000:]
    result = preflight(tmp_path, **HOPPER, llm_router_cuda_version="12.8", llm_router_models=[MODEL])
    assert result.returncode != 0
    assert "SGLang runs on CUDA 13 wheels here (lane cu13), but the toolkit" in result.stdout, result.stdout[-3000:]


def fake_toolkit(root: Path, version: str, files: bool) -> Path:
    """A toolkit folder whose nvcc says `version`, with or without what the llama.cpp CUDA build links."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, V{version}.88'\n")
    nvcc.chmod(0o755)
    if files:
        for name in (
            "include/cuda_runtime.h",
            "include/nv/target",
            "include/cublas_v2.h",
            "lib64/libcublas.so",
            "lib64/libcublasLt.so",
            "lib64/libcudart.so",
            "lib64/stubs/libcuda.so",
        ):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root")
def test_llamacpp_cuda_build_needs_cublas_and_cuda_needs_uvm(tmp_path: Path) -> None:
    """On the host itself (not render-only): the toolkit's cuBLAS, runtime and driver library for the llama.cpp
    build, named by package (configure otherwise stops at `CUDA::cublas but the target was not found`); then
    nvidia-modprobe, which the units run so /dev/nvidia-uvm exists after a reboot (engine-audit-2 #4). This machine
    has neither a GPU nor nvidia-modprobe."""
    Path("/srv").mkdir(exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="llm-router-test-", dir="/srv"))
    try:
        top.chmod(0o755)
        weights = top / "g.gguf"
        weights.write_bytes(b"GGUF")
        weights.chmod(0o644)
        host = {
            **HOPPER,
            "llm_router_render_only": False,
            "llm_router_engine_user": "nobody",
            "llm_router_models": [{"id": "g", "backend": "llamacpp", "model": str(weights)}],
        }
        bare = fake_toolkit(tmp_path / "cuda-bare", "13.0", files=False)
        result = preflight(tmp_path, **host, llm_router_cuda_home=str(bare))
        assert result.returncode != 0
        out = result.stdout
        assert "llama.cpp's CUDA build links with more than nvcc, and the toolkit at" in out, out[-3000:]
        packages = "cuda-cccl-13-0 cuda-cudart-dev-13-0 cuda-driver-dev-13-0 libcublas-dev-13-0"
        assert f"install {packages} from NVIDIA's" in out
        full = fake_toolkit(tmp_path / "cuda-full", "13.0", files=True)
        result = preflight(tmp_path, **host, llm_router_cuda_home=str(full))
        assert result.returncode != 0
        assert "/usr/bin/nvidia-modprobe not found: the engine units run it" in result.stdout, result.stdout[-3000:]
        result = preflight(tmp_path, **host, llm_router_cuda_home=str(full), llm_router_nvidia_modprobe="/bin/true")
        assert result.returncode == 0, result.stdout[-3000:]
        # SGLang's FlashInfer JIT includes cuRAND (flashinfer 0.7.2 sampling.cuh:20-22), which the full
        # llama.cpp toolkit above lacks.
        (top / "sglang-model").mkdir(mode=0o755)
        sglang = {"id": "s", "backend": "sglang", "model": str(top / "sglang-model")}
        result = preflight(tmp_path, **{**host, "llm_router_models": [sglang]}, llm_router_cuda_home=str(full))
        assert result.returncode != 0
        assert "SGLang models s compile FlashInfer kernels with more than nvcc" in result.stdout, result.stdout[-3000:]
        assert "install libcurand-dev-13-0 from NVIDIA's" in result.stdout
    finally:
        shutil.rmtree(top)


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


GGUF = [{"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"}]
GITHUB_B11400 = "https://github.com/ggml-org/llama.cpp/archive/refs/tags/b11400.tar.gz"


def test_llamacpp_source_url_needs_a_checksum(tmp_path: Path) -> None:
    """Issue 10: a URL source is downloaded only with a checksum (get_url's <algorithm>:<digest>), unless the user
    opts out with `none`; a file on the controller needs none."""
    github = {
        "llm_router_accelerator": "cpu",
        "llm_router_models": GGUF,
        "llm_router_llamacpp_version": "b11400",
        "llm_router_llamacpp_source": GITHUB_B11400,
        "llm_router_llamacpp_archive_dir": "llama.cpp-b11400",
    }
    result = preflight(tmp_path, **github, llm_router_llamacpp_checksum="")
    assert result.returncode != 0
    out = result.stdout
    assert f"llm_router_llamacpp_source {GITHUB_B11400} is a URL, so llm_router_llamacpp_checksum must pin" in out, out[
        -3000:
    ]
    assert "or to none to download it unverified" in out
    for checksum in ("none", "sha256:" + "0" * 64):
        result = preflight(tmp_path, **github, llm_router_llamacpp_checksum=checksum)
        assert result.returncode == 0, (checksum, result.stdout[-3000:])
    result = preflight(
        tmp_path,
        llm_router_accelerator="cpu",
        llm_router_models=GGUF,
        llm_router_llamacpp_source="/srv/llama_cpp_python-0.3.36.tar.gz",
        llm_router_llamacpp_checksum="",
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_llamacpp_source_must_match_its_version_and_folder(tmp_path: Path) -> None:
    """The default sdist vendors b11312 (llama-cpp-python 0.3.36 CHANGELOG.md: "update llama.cpp to
    ggml-org/llama.cpp@0c1e57098"); a GitHub tag archive bNNNN.tar.gz unpacks to llama.cpp-bNNNN."""
    result = preflight(
        tmp_path, llm_router_accelerator="cpu", llm_router_models=GGUF, llm_router_llamacpp_version="b11400"
    )
    assert result.returncode != 0
    assert "that sdist vendors llama.cpp b11312" in result.stdout, result.stdout[-3000:]
    result = preflight(
        tmp_path,
        llm_router_accelerator="cpu",
        llm_router_models=GGUF,
        llm_router_llamacpp_version="b11400",
        llm_router_llamacpp_source=GITHUB_B11400,
        llm_router_llamacpp_checksum="none",
    )
    assert result.returncode != 0
    assert "llm_router_llamacpp_archive_dir llama_cpp_python-0.3.36/vendor/llama.cpp:" in result.stdout
    assert "needs llm_router_llamacpp_version bNNNN and llm_router_llamacpp_archive_dir llama.cpp-bNNNN" in (
        result.stdout
    )


def test_default_llamacpp_source_builds_the_vendored_tree(tmp_path: Path) -> None:
    """The default source is the llama-cpp-python 0.3.36 sdist (PyPI simple index, link #sha256=832db069...), the
    same tree scripts/build-llama-server.sh builds for the tests: the build script cds into its vendor/llama.cpp.
    Check mode with --diff shows the rendered script without writing it."""
    result = preflight(
        tmp_path,
        "--check",
        "--diff",
        "--tags",
        "llm_router_llamacpp",
        llm_router_accelerator="cpu",
        llm_router_models=GGUF,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    assert "\n+src=/opt/llm-router/build/llama_cpp_python-0.3.36/vendor/llama.cpp\n" in out, out[-3000:]
    assert "\n+# Source: llama_cpp_python-0.3.36/vendor/llama.cpp of https://files.pythonhosted.org/packages/" in out
    assert "\n+  -DLLAMA_BUILD_NUMBER=11312 \\\n" in out


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
            {"id": "a", "backend": "llamacpp", "model": "/srv/x.gguf"},
            {"id": "A", "backend": "llamacpp", "model": "/srv/y.gguf"},
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
        llm_router_cuda_version="13.0",
        llm_router_models=[
            {**MODEL, "evict": "sleep"},
            {"id": "v", "backend": "vllm", "model": "/srv/v"},
            {"id": "t", "backend": "tabbyapi", "model": "/srv/t-exl3"},
            {"id": "t2", "backend": "tabbyapi", "model": "/srv/t-exl2", "format": "exl2"},
            {"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf"},
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_unknown_model_key_names_the_key_and_the_model(tmp_path: Path) -> None:
    """Refused before the role's argument validation (whose message names no model), also in check mode."""
    models = [
        {"id": "good", "backend": "llamacpp", "model": "/srv/g.gguf"},
        {"id": "typo", "backend": "vllm", "model": "/srv/v", "tensor_paralel": 2},
    ]
    result = preflight(tmp_path, "--check", **HOPPER, llm_router_models=models)
    assert result.returncode != 0
    assert "model 'typo': unknown key 'tensor_paralel' (did you mean 'tensor_parallel'?)" in result.stdout, (
        result.stdout[-3000:]
    )


def test_backend_options_and_gpus_are_cross_checked(tmp_path: Path) -> None:
    result = preflight(
        tmp_path,
        **HOPPER,
        llm_router_models=[
            {"id": "q", "backend": "sglang", "model": "/srv/q", "gpus": "0,1", "tensor_parallel": 2},
            {"id": "g", "backend": "llamacpp", "model": "/srv/g.gguf", "evict": "sleep"},
        ],
    )
    assert result.returncode != 0
    out = result.stdout
    # HOPPER lists one GPU: index 1 does not exist.
    assert "model 'q': gpus '0,1' names GPU 1, but this host has 1 GPU(s)" in out, out[-3000:]
    assert "model 'g': evict 'sleep' on backend llamacpp" in out


def test_missing_weights_are_refused_with_their_path(tmp_path: Path) -> None:
    missing = "/srv/llm-router-test-missing/tiny.gguf"
    for check in ([], ["--check"]):
        result = preflight(
            tmp_path,
            *check,
            llm_router_render_only=False,
            llm_router_accelerator="cpu",
            llm_router_models=[{"id": "tiny", "backend": "llamacpp", "model": missing}],
        )
        assert result.returncode != 0
        assert f"model 'tiny': weights {missing} not found on this host" in result.stdout, result.stdout[-3000:]


def test_weights_under_home_are_refused(tmp_path: Path) -> None:
    """The model unit's ProtectHome=yes hides /home from the engine, even when the file is there."""
    result = preflight(
        tmp_path,
        llm_router_accelerator="cpu",
        llm_router_models=[{"id": "h", "backend": "llamacpp", "model": "/home/alice/models/h.gguf"}],
    )
    assert result.returncode != 0
    assert "model 'h': weights /home/alice/models/h.gguf are under /home (ProtectHome=yes" in result.stdout, (
        result.stdout[-3000:]
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root")
def test_weights_the_engine_user_cannot_read_are_refused(tmp_path: Path) -> None:
    """`test -r` as the engine user (here `nobody`): a root-only directory hides the file, an open one does not.
    Under /srv: the checkout may be under /home and pytest's tmp_path under /tmp, both refused for weights."""
    Path("/srv").mkdir(exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="llm-router-test-", dir="/srv"))
    try:
        top.chmod(0o755)
        for mode, readable in ((0o700, False), (0o755, True)):
            folder = top / f"{mode:o}"
            folder.mkdir(mode=mode)
            folder.chmod(mode)
            weights = folder / "w.gguf"
            weights.write_bytes(b"GGUF")
            weights.chmod(0o644)
            result = preflight(
                tmp_path,
                llm_router_render_only=False,
                llm_router_accelerator="cpu",
                llm_router_engine_user="nobody",
                llm_router_models=[{"id": "w", "backend": "llamacpp", "model": str(weights)}],
            )
            message = f"model 'w': weights {weights} are not readable by the engine user nobody"
            assert (result.returncode == 0) == readable, result.stdout[-3000:]
            assert (message in result.stdout) != readable, result.stdout[-3000:]
    finally:
        shutil.rmtree(top)


def test_molecule_hosts_pass_preflight_in_check_mode(tmp_path: Path) -> None:
    """Both Molecule hosts' inventories pass the schema and weights checks (the CPU host's GGUF files come
    by `source:`, the render-only GPU host has no weights)."""
    text = (ROOT / "molecule/default/molecule.yml").read_text()
    text = text.replace("${MOLECULE_MODELS_DIR}", str(tmp_path)).replace(
        "${LLAMACPP_ARCHIVE}", "/nonexistent/llama_cpp_python-0.3.36.tar.gz"
    )
    hosts = yaml.safe_load(text)["provisioner"]["inventory"]["host_vars"]
    for name, host_vars in hosts.items():
        result = preflight(tmp_path, "--check", **{"llm_router_render_only": False, **host_vars})
        assert result.returncode == 0, (name, result.stdout[-3000:])


RENDER_TAGS = [
    "llm_router_llamacpp",
    "llm_router_sglang",
    "llm_router_vllm",
    "llm_router_tabbyapi",
    "llm_router_models",
    "llm_router_openwebui",
    "llm_router_configure",
]


@pytest.mark.parametrize("tag", RENDER_TAGS)
def test_every_tag_works_alone_in_check_mode(tmp_path: Path, tag: str) -> None:
    """Issue 10: `--tags llm_router_llamacpp` (and every per-engine/phase tag) used to fail alone on missing facts.
    The Molecule render host's inventory (every engine) in check mode on this machine: nothing is written."""
    molecule = yaml.safe_load((ROOT / "molecule" / "default" / "molecule.yml").read_text())
    host = dict(molecule["provisioner"]["inventory"]["host_vars"]["llm-gpu-render"])
    host["llm_router_source_dir"] = str(ROOT)
    result = preflight(tmp_path, "--check", "--tags", tag, **host)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "failed=0" in result.stdout
