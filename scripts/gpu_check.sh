#!/usr/bin/env bash
# A GPU check sized for a lent machine (docs/provisioning.md "A GPU check on a lent machine"): one NVIDIA GPU, nvcc,
# CMake and Python 3.12, no package registry, at most 64 MiB carried in. Prepare here with `make gpu-check-bundle`
# (.gpu-check/: the pinned llama.cpp source and the router's wheels), carry .gpu-check, and run there, in the
# repository root:
#   scripts/gpu_check.sh            build llama-server for the GPU's arch (role's CMake arguments, all cores), run the
#                                   router from the carried wheels and check NVML capacity, a learned footprint
#                                   against its estimate, co-residency, eviction by real VRAM, memory freed; exit 1
#                                   on any failed check. Logs go to build/gpu-check/ (and to $OUT when set).
#   scripts/gpu_check.sh --cpu      rehearse the same flow here on the CPU llama-server (`make gpu-check-cpu`)
#   scripts/gpu_check.sh --dry-run  render the router config for a GPU (--gpu NAME,CAP,MiB) and check-config it
# Env: PYTHON (default: python3, the lent machine's; .venv/bin/python here for --cpu/--dry-run), CUDA_HOME,
# GPU_CHECK_CUBLAS / GPU_CHECK_LIBCUDA (cuBLAS dir with include/ and lib/, the driver's libcuda) where the toolkit
# lacks them and they are not found by themselves.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
for arg in "$@"; do
    # Rehearsals run here, with this checkout's venv (the lent machine has none: .venv is not carried).
    if [[ -z "${PYTHON:-}" && ("$arg" == --cpu || "$arg" == --dry-run) && -x .venv/bin/python ]]; then
        python=.venv/bin/python
    fi
done
export PYTHONUNBUFFERED=1
exec "$python" scripts/gpu_check.py run "$@"
