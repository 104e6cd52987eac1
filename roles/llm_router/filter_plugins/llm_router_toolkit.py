"""Filters that check the CUDA toolkit against what uses it: the llama.cpp CUDA build (nvcc, cuBLAS, the driver
library it links), SGLang's FlashInfer JIT (an nvcc of the lane's CUDA major), the driver that must run what the
toolkit builds, and /dev/nvidia-uvm. Pure Python: preflight.yml gathers the facts (nvcc --version, stat of the
files), these turn them into refusals that name the missing package. Tested in tests/unit/test_role_toolkit.py."""

from __future__ import annotations

import re
from typing import Any

# The oldest driver that runs code built by a toolkit of this major (CUDA minor version compatibility; NVIDIA
# CUDA Toolkit release notes, tables 2 and 3: 12.x >= 525.60.13; 13.0 GA ships 580.65.06, which the role's CUDA 13
# install lanes also require). A 13.x toolkit's llama-server on an R570 driver fails at its first CUDA call with
# "CUDA driver version is insufficient for CUDA runtime version" (engine-audit-2 #7).
MIN_DRIVER_FOR_TOOLKIT = {12: "525.60.13", 13: "580.65.06"}
# FlashInfer 0.6.7.post3 (SGLang's CUDA 12 lane) refuses sm_12x with nvcc < 12.9: "SM 12.x requires CUDA >= 12.9"
# (flashinfer compilation_context.py:46-52), and then fails with "No supported CUDA architectures found" (:91).
# FlashInfer 0.7.2 (CUDA 13 lane) takes 12.8 (:96-104), but its modules link the toolkit's libcudart
# (jit/cpp_ext.py:277), so the toolkit's major must be the lane's (engine-audit-2 #3).
SGLANG_CU12_MIN_NVCC_SM120 = "12.9"

# What the llama.cpp CUDA build links beyond nvcc (b11312 ggml/src/ggml-cuda/CMakeLists.txt:160-184, without
# GGML_STATIC: CUDA::cudart, CUDA::cublas, and CUDA::cuda_driver unless GGML_CUDA_NO_VMM), with the package of
# NVIDIA's CUDA repository that provides each ({ver}: major-minor, e.g. 13-0).
BUILD_NEEDS = {
    "cublas_header": ("cuBLAS headers (cublas_v2.h)", "libcublas-dev-{ver}"),
    "cublas_lib": ("cuBLAS libraries (libcublas.so, libcublasLt.so)", "libcublas-dev-{ver}"),
    "cudart_lib": ("the CUDA runtime (libcudart.so)", "cuda-cudart-dev-{ver}"),
    "driver_lib": ("the CUDA driver library to link (libcuda.so: stubs/ or the driver's)", "cuda-driver-dev-{ver}"),
}


def _version_tuple(text: Any) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(text)))


def _package_version(cuda_version: str) -> str:
    """'13.0' -> '13-0' (NVIDIA's package suffix); '' -> 'X-Y'."""
    parts = _version_tuple(cuda_version)
    return f"{parts[0]}-{parts[1]}" if len(parts) >= 2 else "X-Y"


def toolkit_candidates(cuda_home: str) -> dict[str, list[str]]:
    """Where each file the llama.cpp build links may be, in the toolkit or the distribution's library folders."""
    targets = f"{cuda_home}/targets/x86_64-linux"
    libs = [f"{cuda_home}/lib64", f"{cuda_home}/lib", f"{targets}/lib", "/usr/lib/x86_64-linux-gnu"]
    includes = [f"{cuda_home}/include", f"{targets}/include", "/usr/include"]
    return {
        "cublas_header": [f"{d}/cublas_v2.h" for d in includes],
        "cublas_lib": [f"{d}/libcublas.so" for d in libs],
        "cudart_lib": [f"{d}/libcudart.so" for d in libs],
        "driver_lib": [f"{cuda_home}/lib64/stubs/libcuda.so", f"{targets}/lib/stubs/libcuda.so"]
        + [f"{d}/libcuda.so" for d in libs],
    }


def toolkit_stat_items(cuda_home: str) -> list[dict[str, str]]:
    """toolkit_candidates as a flat list for a stat loop: [{need, path}]."""
    return [{"need": need, "path": path} for need, paths in toolkit_candidates(cuda_home).items() for path in paths]


def toolkit_found(results: list[dict[str, Any]]) -> dict[str, str]:
    """The stat loop's results -> need -> the first path that exists ('' when none)."""
    found: dict[str, str] = {}
    for result in results:
        item = result.get("item") or {}
        need = str(item.get("need", ""))
        exists = bool((result.get("stat") or {}).get("exists"))
        if need and not found.get(need):
            found[need] = str(item.get("path")) if exists else ""
    return found


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value after the last `flag` in argv, or of `flag=value`."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def sglang_needs_jit(model: dict[str, Any]) -> bool:
    """Whether this SGLang model runs FlashInfer kernels that are built with nvcc at first use.

    Sampling (top-p/top-k/min-p) uses FlashInfer unless `--sampling-backend pytorch` (0.5.10 server_args.py
    2211-2215; 0.5.23 arg_groups/overrides.py:1019-1025; layers/sampler.py); attention does where the backend is
    flashinfer (the role sets it on sm_12x) or left to SGLang. JIT-free: both set to non-FlashInfer backends.
    """
    argv = [str(a) for a in model.get("argv", [])]
    sampling = _flag_value(argv, "--sampling-backend")
    attention = _flag_value(argv, "--attention-backend")
    return sampling != "pytorch" or attention in (None, "flashinfer")


def toolkit_errors(
    models: list[dict[str, Any]],
    plan: dict[str, Any],
    cuda_version: str,
    cuda_home: str,
    driver: str,
    cuda_archs: list[str],
    llamacpp: bool,
    found: dict[str, str] | None = None,
) -> list[str]:
    """Why this host's CUDA toolkit cannot serve the planned engines (empty: it can).

    models: normalize_models output; plan: engine_plan()["engines"]; found: toolkit_found() of the stat loop, or
    None to skip the file checks (render-only hosts); llamacpp: llama.cpp is built for CUDA here.
    """
    errors: list[str] = []
    have = _version_tuple(cuda_version)
    ver = _package_version(cuda_version)
    nvcc = f"{cuda_home}/bin/nvcc"
    sm12 = any(str(a).startswith("12") for a in cuda_archs)

    jit_models = [m["id"] for m in models if m.get("backend") == "sglang" and sglang_needs_jit(m)]
    lane = plan.get("sglang") or {}
    if jit_models and lane:
        major = int(lane.get("cuda_major", 0))
        fallback = (
            "or run those models without FlashInfer's JIT: extra_args [--attention-backend, triton, "
            "--sampling-backend, pytorch]"
        )
        if not have:
            errors.append(
                f"SGLang models {', '.join(jit_models)} build FlashInfer kernels with nvcc at first use, and there is "
                f"no CUDA toolkit at {cuda_home} (looked for {nvcc}). Fix: install CUDA {major}.x (NVIDIA's "
                f"cuda-nvcc-{major}-X package, or cuda-toolkit-{major}-X) and set llm_router_cuda_home, {fallback}."
            )
        elif have[0] != major:
            errors.append(
                f"SGLang runs on CUDA {major} wheels here (lane {lane.get('lane')}), but the toolkit at {cuda_home} is "
                f"CUDA {cuda_version}: FlashInfer's JIT modules would link CUDA {have[0]}'s runtime into a CUDA "
                f"{major} process (models {', '.join(jit_models)}). Fix: install CUDA {major}.x and point "
                f"llm_router_cuda_home at it, or force llm_router_engine_lanes.sglang: cu{have[0]}, {fallback}."
            )
        elif major == 12 and sm12 and have < _version_tuple(SGLANG_CU12_MIN_NVCC_SM120):
            errors.append(
                f"SGLang's CUDA 12 lane (FlashInfer 0.6.7.post3) refuses sm_12x GPUs with nvcc < "
                f'{SGLANG_CU12_MIN_NVCC_SM120} ("SM 12.x requires CUDA >= 12.9"); the toolkit at {cuda_home} is '
                f"{cuda_version} (models {', '.join(jit_models)}). Fix: install CUDA 12.9 (cuda-nvcc-12-9), "
                f"{fallback}."
            )

    uses_toolkit = llamacpp or bool(jit_models and lane)
    if uses_toolkit and have and driver:
        need = MIN_DRIVER_FOR_TOOLKIT.get(have[0])
        if need and _version_tuple(driver) < _version_tuple(need):
            errors.append(
                f"The CUDA {cuda_version} toolkit at {cuda_home} builds code that needs NVIDIA driver >= {need}; this "
                f'host has {driver} ("CUDA driver version is insufficient" at the first CUDA call). Fix: upgrade '
                f"the driver, or install a toolkit of the driver's CUDA major and set llm_router_cuda_home."
            )

    if llamacpp and have and found is not None:
        missing = [need for need in BUILD_NEEDS if not found.get(need)]
        if missing:
            what = "; ".join(BUILD_NEEDS[need][0] for need in missing)
            packages = sorted({BUILD_NEEDS[need][1].format(ver=ver) for need in missing})
            errors.append(
                f"llama.cpp's CUDA build links more than nvcc, and the toolkit at {cuda_home} lacks: {what}. Fix: "
                f"install {' '.join(packages)} from NVIDIA's CUDA repository (or the whole cuda-toolkit-{ver}), "
                "or set llm_router_accelerator: cpu."
            )
    return errors


def uvm_errors(found_uvm: bool, found_modprobe: bool, modprobe: str) -> list[str]:
    """CUDA needs /dev/nvidia-uvm; the units create it with nvidia-modprobe (ExecStartPre) when it is missing."""
    if found_uvm or found_modprobe:
        return []
    return [
        f"Neither /dev/nvidia-uvm nor {modprobe} exists: CUDA cannot start in the engines' sandbox (NoNewPrivileges "
        "forbids the setuid helper that creates the node). Fix: install nvidia-modprobe (apt install nvidia-modprobe) "
        "or set llm_router_nvidia_modprobe to where it is, or load nvidia-uvm and create its node at boot."
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_toolkit_stat_items": toolkit_stat_items,
            "llm_router_toolkit_found": toolkit_found,
            "llm_router_toolkit_errors": toolkit_errors,
            "llm_router_uvm_errors": uvm_errors,
        }
