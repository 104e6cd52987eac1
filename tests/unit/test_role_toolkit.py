"""The role's CUDA toolkit checks (filter_plugins/llm_router_toolkit.py): what preflight refuses, and why.

Facts (engine-audit-2 #3, #4, #7): FlashInfer's JIT needs nvcc of the SGLang lane's CUDA major, and >= 12.9 for
sm_12x on the CUDA 12 lane (flashinfer 0.6.7.post3 compilation_context.py:46-52); a toolkit's builds need a driver
of its major (13.x >= 580.65.06); the llama.cpp CUDA build links cuBLAS, cudart and libcuda (ggml-cuda
CMakeLists.txt b11312); CUDA needs /dev/nvidia-uvm, which the units create with nvidia-modprobe.
"""

from __future__ import annotations

import pytest

from tests.role_render import load_filter, normalize

toolkit = load_filter("llm_router_toolkit")

SGLANG_CU13 = {"sglang": {"lane": "cu13", "cuda_major": 13}}
SGLANG_CU12 = {"sglang": {"lane": "cu12", "cuda_major": 12}}
ALL_FILES = dict.fromkeys(toolkit.TOOLKIT_FILES, "/somewhere")


def errors(models, plan=SGLANG_CU13, version="13.0", driver="580.95.05", archs=("90",), llamacpp=False, found=None):
    return toolkit.toolkit_errors(
        normalize(models, archs=list(archs)), plan, version, "/usr/local/cuda", driver, list(archs), llamacpp, found
    )


SGLANG = {"id": "s", "backend": "sglang", "model": "/m/s"}
JIT_FREE = {**SGLANG, "extra_args": ["--attention-backend", "triton", "--sampling-backend", "pytorch"]}


def test_sglang_needs_an_nvcc_of_its_lane_major() -> None:
    (missing,) = errors([SGLANG], version="")
    assert "no CUDA toolkit at /usr/local/cuda" in missing and "cuda-toolkit-13-X" in missing
    (other_major,) = errors([SGLANG], version="12.8")
    assert "CUDA 13 wheels here (lane cu13), but the toolkit at /usr/local/cuda is CUDA 12.8" in other_major
    assert errors([SGLANG], version="13.0") == []
    assert errors([SGLANG], plan=SGLANG_CU12, version="12.4") == []  # Hopper: no 12.9 floor


def test_sglang_cu12_lane_on_blackwell_needs_nvcc_12_9() -> None:
    (refused,) = errors([SGLANG], plan=SGLANG_CU12, version="12.8", archs=("90", "120a"))
    assert "SM 12.x requires CUDA >= 12.9" in refused and "cuda-toolkit-12-9" in refused
    assert errors([SGLANG], plan=SGLANG_CU12, version="12.9", archs=("120a",)) == []


def test_sglang_without_flashinfer_jit_needs_no_toolkit() -> None:
    assert errors([JIT_FREE], version="") == []
    sampling_only = {**SGLANG, "extra_args": ["--sampling-backend", "pytorch"]}
    assert errors([sampling_only], version="") != []  # attention left to SGLang (flashinfer on sm_12x)
    attention_only = {**SGLANG, "extra_args": ["--attention-backend", "triton"]}
    assert errors([attention_only], version="") != []  # sampling still FlashInfer
    assert errors([{"id": "v", "backend": "vllm", "model": "/m/v"}], version="") == []


def test_the_driver_must_run_what_the_toolkit_builds() -> None:
    gguf = {"id": "g", "backend": "llamacpp", "model": "/m/g.gguf"}
    (old,) = errors([gguf], plan={}, version="13.0", driver="570.172.08", llamacpp=True)
    assert "needs NVIDIA driver >= 580.65.06; this host has 570.172.08" in old
    assert errors([gguf], plan={}, version="13.0", driver="580.65.06", llamacpp=True) == []
    assert errors([gguf], plan={}, version="12.8", driver="550.54.15", llamacpp=True) == []
    assert errors([gguf], plan={}, version="12.8", driver="520.61.05", llamacpp=True) != []
    # Nothing builds with the toolkit: its version does not matter.
    assert errors([{"id": "v", "backend": "vllm", "model": "/m/v"}], plan={}, version="13.0", driver="570.1") == []


@pytest.mark.parametrize(
    ("need", "package"),
    [
        ("cuda_runtime_header", "cuda-cudart-dev-13-0"),
        ("cublas_header", "libcublas-dev-13-0"),
        ("cublas_lib", "libcublas-dev-13-0"),
        ("cublaslt_lib", "libcublas-dev-13-0"),
        ("cccl_header", "cuda-cccl-13-0"),
        ("cudart_lib", "cuda-cudart-dev-13-0"),
        ("driver_lib", "cuda-driver-dev-13-0"),
    ],
)
def test_llamacpp_build_names_the_missing_package(need: str, package: str) -> None:
    gguf = {"id": "g", "backend": "llamacpp", "model": "/m/g.gguf"}
    found = {**ALL_FILES, need: ""}
    (refused,) = errors([gguf], plan={}, llamacpp=True, found=found)
    assert refused.startswith("llama.cpp's CUDA build links with more than nvcc")
    assert f"install {package} from NVIDIA's CUDA repository" in refused
    assert toolkit.TOOLKIT_FILES[need][0] in refused
    assert errors([gguf], plan={}, llamacpp=True, found=ALL_FILES) == []
    assert errors([gguf], plan={}, llamacpp=True, found=None) == []  # render-only: no files to look at
    assert errors([gguf], plan={}, llamacpp=True, found={**ALL_FILES, "curand_header": ""}) == []  # not linked


@pytest.mark.parametrize(
    ("need", "package"),
    [
        ("cuda_runtime_header", "cuda-cudart-dev-13-0"),
        ("curand_header", "libcurand-dev-13-0"),
        ("cudart_lib", "cuda-cudart-dev-13-0"),
        ("driver_lib", "cuda-driver-dev-13-0"),
    ],
)
def test_flashinfer_jit_names_the_missing_package(need: str, package: str) -> None:
    """flashinfer 0.7.2: sampling.cuh:20-22 includes cuRAND; jit/cpp_ext.py:275-278 links -lcudart -lcuda."""
    (refused,) = errors([SGLANG], found={**ALL_FILES, need: ""})
    assert refused.startswith("SGLang models s compile FlashInfer kernels with more than nvcc")
    assert f"install {package} from NVIDIA's CUDA repository" in refused
    assert errors([SGLANG], found={**ALL_FILES, "cublas_header": "", "cublas_lib": ""}) == []  # not used
    assert errors([JIT_FREE], found={}) == []


def test_stat_results_pick_the_first_existing_candidate() -> None:
    items = toolkit.toolkit_stat_items("/usr/local/cuda-13.0")
    assert {"need": "cublas_header", "path": "/usr/local/cuda-13.0/include/cublas_v2.h"} in items
    assert {"need": "driver_lib", "path": "/usr/local/cuda-13.0/lib64/stubs/libcuda.so"} in items
    results = [
        {"item": {"need": "cublas_lib", "path": "/a/libcublas.so"}, "stat": {"exists": False}},
        {"item": {"need": "cublas_lib", "path": "/b/libcublas.so"}, "stat": {"exists": True}},
        {"item": {"need": "cublas_lib", "path": "/c/libcublas.so"}, "stat": {"exists": True}},
        {"item": {"need": "cudart_lib", "path": "/a/libcudart.so"}, "stat": {"exists": False}},
    ]
    assert toolkit.toolkit_found(results) == {"cublas_lib": "/b/libcublas.so", "cudart_lib": ""}


def test_uvm_needs_nvidia_modprobe_unless_the_host_makes_the_node() -> None:
    """A node present at converge time may be gone after a reboot: the helper must be there (engine-audit-2 #4)."""
    assert toolkit.uvm_errors(False, True, "/usr/bin/nvidia-modprobe") == []
    (refused,) = toolkit.uvm_errors(True, False, "/usr/bin/nvidia-modprobe")
    assert refused.startswith("/usr/bin/nvidia-modprobe not found") and "apt install nvidia-modprobe" in refused
    assert toolkit.uvm_errors(True, False, "") == []  # the host makes it at boot (llm_router_nvidia_modprobe: "")
    (refused,) = toolkit.uvm_errors(False, False, "")
    assert refused.startswith("/dev/nvidia-uvm does not exist and llm_router_nvidia_modprobe is empty")
