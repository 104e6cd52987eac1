"""Filters that check the CUDA toolkit against what uses it: the llama.cpp CUDA build (nvcc, cuBLAS, the driver
library it links), SGLang's FlashInfer JIT (nvcc of the lane's CUDA major, cuRAND, the runtime), the driver that
must run what the toolkit builds, and /dev/nvidia-uvm. Pure Python: preflight.yml gathers the facts (nvcc --version,
stat of the files), these turn them into refusals that name the missing package. Tested in
tests/unit/test_role_toolkit.py."""

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

# Files of the toolkit that its users need beyond nvcc, with the package of NVIDIA's CUDA repository that provides each
# ({ver}: major-minor, e.g. 13-0).
TOOLKIT_FILES = {
    "cuda_runtime_header": ("the CUDA runtime headers (cuda_runtime.h)", "cuda-cudart-dev-{ver}"),
    "curand_header": ("the cuRAND headers (curand_kernel.h)", "libcurand-dev-{ver}"),
    "cublas_header": ("the cuBLAS headers (cublas_v2.h)", "libcublas-dev-{ver}"),
    "cublas_lib": ("the cuBLAS library (libcublas.so)", "libcublas-dev-{ver}"),
    "cublaslt_lib": ("the cuBLASLt library (libcublasLt.so)", "libcublas-dev-{ver}"),
    "cccl_header": ("CCCL (nv/target, which cuda_fp16.h includes)", "cuda-cccl-{ver}"),
    "cudart_lib": ("the CUDA runtime library (libcudart.so)", "cuda-cudart-dev-{ver}"),
    "driver_lib": ("the CUDA driver library to link (libcuda.so: stubs/ or the driver's)", "cuda-driver-dev-{ver}"),
}
# The llama.cpp CUDA build (b11312 ggml/src/ggml-cuda/CMakeLists.txt:160-184, without GGML_STATIC: CUDA::cudart,
# CUDA::cublas, and CUDA::cuda_driver unless GGML_CUDA_NO_VMM).
LLAMACPP_NEEDS = (
    "cuda_runtime_header",
    "cccl_header",
    "cublas_header",
    "cublas_lib",
    "cublaslt_lib",
    "cudart_lib",
    "driver_lib",
)
# FlashInfer's JIT (SGLang): sampling.cuh includes curand.h, curand_kernel.h, curand_philox4x32_x.h (flashinfer 0.7.2
# data/include/flashinfer/sampling.cuh:20-22); modules compile against $cuda_home/include and link
# -L$cuda_home/lib64 -L$cuda_home/lib64/stubs -lcudart -lcuda (jit/cpp_ext.py:136-153, 275-278).
FLASHINFER_NEEDS = ("cuda_runtime_header", "curand_header", "cudart_lib", "driver_lib")
BUILD_NEEDS = {need: TOOLKIT_FILES[need] for need in LLAMACPP_NEEDS}


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
        "cuda_runtime_header": [f"{d}/cuda_runtime.h" for d in includes],
        "curand_header": [f"{d}/curand_kernel.h" for d in includes],
        "cublas_header": [f"{d}/cublas_v2.h" for d in includes],
        "cublas_lib": [f"{d}/libcublas.so" for d in libs],
        "cublaslt_lib": [f"{d}/libcublasLt.so" for d in libs],
        "cccl_header": [f"{d}/{sub}nv/target" for d in includes for sub in ("", "cccl/")],
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
    sglang_jit = bool(jit_models and lane)
    if sglang_jit:
        major = int(lane.get("cuda_major", 0))
        fallback = (
            "or run those models without FlashInfer's JIT: extra_args [--attention-backend, triton, "
            "--sampling-backend, pytorch]"
        )
        if not have:
            errors.append(
                f"SGLang models {', '.join(jit_models)} build FlashInfer kernels with nvcc at first use, and there is "
                f"no CUDA toolkit at {cuda_home} (looked for {nvcc}). Fix: install NVIDIA's cuda-toolkit-{major}-X "
                f"(at least cuda-nvcc, cuda-cudart-dev, libcurand-dev, cuda-driver-dev) and set "
                f"llm_router_cuda_home, {fallback}."
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
                f"{cuda_version} (models {', '.join(jit_models)}). Fix: install CUDA 12.9 (cuda-toolkit-12-9), "
                f"{fallback}."
            )
        elif found is not None:
            errors += _missing_files(
                f"SGLang models {', '.join(jit_models)} compile FlashInfer kernels",
                FLASHINFER_NEEDS,
                found,
                cuda_home,
                ver,
            )

    uses_toolkit = llamacpp or sglang_jit
    if uses_toolkit and have and driver:
        need = MIN_DRIVER_FOR_TOOLKIT.get(have[0])
        if need and _version_tuple(driver) < _version_tuple(need):
            errors.append(
                f"The CUDA {cuda_version} toolkit at {cuda_home} builds code that needs NVIDIA driver >= {need}; this "
                f'host has {driver} ("CUDA driver version is insufficient" at the first CUDA call). Fix: upgrade '
                f"the driver, or install a toolkit of the driver's CUDA major and set llm_router_cuda_home."
            )

    if llamacpp and have and found is not None:
        errors += _missing_files("llama.cpp's CUDA build links", LLAMACPP_NEEDS, found, cuda_home, ver)
    return errors


def _missing_files(who: str, needs: tuple[str, ...], found: dict[str, str], cuda_home: str, ver: str) -> list[str]:
    missing = [need for need in needs if not found.get(need)]
    if not missing:
        return []
    what = "; ".join(TOOLKIT_FILES[need][0] for need in missing)
    packages = sorted({TOOLKIT_FILES[need][1].format(ver=ver) for need in missing})
    return [
        f"{who} with more than nvcc, and the toolkit at {cuda_home} lacks: {what}. Fix: install "
        f"{' '.join(packages)} from NVIDIA's CUDA repository (or the whole cuda-toolkit-{ver})."
    ]


def uvm_errors(found_uvm: bool, found_modprobe: bool, modprobe: str) -> list[str]:
    """CUDA needs /dev/nvidia-uvm. Libcuda creates it through the setuid nvidia-modprobe, which the engines' sandbox
    (NoNewPrivileges=) cannot run, so the units run the helper privileged first (ExecStartPre): it must exist, since
    a node present now may be gone after a reboot. `modprobe` empty: the host makes the node at boot itself."""
    if not modprobe:
        if found_uvm:
            return []
        return [
            "/dev/nvidia-uvm does not exist and llm_router_nvidia_modprobe is empty, so nothing creates it: CUDA "
            "cannot start in the engines' sandbox. Fix: install nvidia-modprobe and set llm_router_nvidia_modprobe to "
            "it, or load nvidia-uvm and create its node at boot."
        ]
    if found_modprobe:
        return []
    return [
        f"{modprobe} not found: the engine units run it (as root, ExecStartPre) so that /dev/nvidia-uvm exists after a "
        "reboot, which CUDA in the sandbox (NoNewPrivileges) cannot create itself. Fix: apt install nvidia-modprobe, "
        "or set llm_router_nvidia_modprobe to where it is, or to '' if the host creates the node at boot."
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_toolkit_stat_items": toolkit_stat_items,
            "llm_router_toolkit_found": toolkit_found,
            "llm_router_toolkit_errors": toolkit_errors,
            "llm_router_uvm_errors": uvm_errors,
        }
