#!/usr/bin/env bash
# `make check-cuda-build` (on demand, not in `make test`): compile llama-server with exactly the build the role
# renders for a host with one sm_90 and one sm_120 GPU, with this machine's nvcc, and check the binary's GPU code.
#   scripts/check-cuda-build.sh          full build (1-2 h on 2 cores: 118 min beside other work), cached under
#                                        ~/.cache/llm-router/cuda-build/<role's build id>/: a second run is instant
#   scripts/check-cuda-build.sh --smoke  configure with the role's arguments, compile two ggml-cuda objects, link a
#                                        test program against the driver stub (1-3 min); caches no binary
# What comes from the role, not from a copy: scripts/cuda-build-args.yml runs the role's own llamacpp.yml tasks
# (render-only) with llm_router_gpu_compute_capabilities $GPU_CAPS; they render the role's llamacpp-build.sh and
# its _llm_router_llamacpp_cmake / _llm_router_llamacpp_build_id. The full build runs that rendered script as is;
# the smoke passes the same argument list to cmake. Nothing is added to the arguments. What an nvcc-only toolkit
# lacks comes through the environment only (docs/provisioning.md "llama.cpp CUDA build, compiled on a CPU machine"):
#   CMAKE_LIBRARY_PATH  cuBLAS (PyPI nvidia-cublas) and a libcuda.so link stub: FindCUDAToolkit's find_library
#                       searches it, so CUDA::cublas, CUDA::cublasLt and CUDA::cuda_driver exist
#   CPATH               cuBLAS headers (cublas_v2.h) for nvcc and g++
# Env: GPU_CAPS ("9.0 12.0"), CUDA_HOME (/usr/local/cuda), NVIDIA_CUBLAS_VERSION (13.1.1.3), CUOBJDUMP_VERSION
# (13.2.51, the oldest nvidia-cuda-cuobjdump on PyPI; used when the toolkit has no cuobjdump), JOBS (2), NICE (19),
# PYTHON (.venv/bin/python, with ansible-core), LLM_ROUTER_CACHE (~/.cache/llm-router).
# Needs root (the role's template task sets owner root) and the cached llama.cpp source sdist (`make llama-server`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
cache="$cache_root/cuda-build"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
gpu_caps="${GPU_CAPS:-9.0 12.0}"
cublas_version="${NVIDIA_CUBLAS_VERSION:-13.1.1.3}"
cuobjdump_version="${CUOBJDUMP_VERSION:-13.2.51}"
jobs="${JOBS:-2}"
nice_level="${NICE:-19}"
python="$(realpath -s "${PYTHON:-$here/.venv/bin/python}")" # absolute (Ansible's interpreter), venv link kept
mode=full
case "${1:-}" in
"") ;;
--smoke) mode=smoke ;;
*)
    echo "usage: $0 [--smoke]" >&2
    exit 2
    ;;
esac

log() { echo "check-cuda-build: $*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
now() { date +%s; }
json() { "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
t_start=$(now)

[[ $EUID -eq 0 ]] || die "run as root: the role's template task sets owner root on the build script"
[[ -x "$cuda_home/bin/nvcc" ]] || die "no nvcc at $cuda_home/bin/nvcc (set CUDA_HOME)"
ansible_playbook="$(dirname "$python")/ansible-playbook"
[[ -x "$ansible_playbook" ]] || die "no $ansible_playbook: run 'make' once (the venv with ansible-core) or set PYTHON"
for tool in cmake make g++ gcc readelf nm unzip; do
    command -v "$tool" >/dev/null || die "missing '$tool'"
done
nvcc_version="$("$cuda_home/bin/nvcc" --version | sed -n 's/.*release [0-9.]*, V\([0-9.]*\).*/\1/p')"
cuda_release="$(echo "$nvcc_version" | cut -d. -f1,2)"
cuda_major="${nvcc_version%%.*}"
[[ -n "$nvcc_version" ]] || die "cannot read the release from '$cuda_home/bin/nvcc --version'"
[[ "${cublas_version%%.*}" == "$cuda_major" ]] ||
    die "NVIDIA_CUBLAS_VERSION=$cublas_version does not match nvcc's CUDA major $cuda_major"
mkdir -p "$cache"

# 1. The role renders its build: arguments, build id and llamacpp-build.sh. Into a scratch base dir first; the build
# dir is keyed by the build id it returns.
caps_json="$("$python" -c 'import json, sys; print(json.dumps(sys.argv[1].split()))' "$gpu_caps")"
render() { # <base dir>: runs the role's llamacpp.yml (render-only) with this host's values
    local base="$1"
    mkdir -p "$base/build" "$base/bin"
    ANSIBLE_ROLES_PATH="$here/roles" ANSIBLE_HOME="$cache/.ansible" ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 \
        ANSIBLE_CONFIG="$here/ansible.cfg" "$ansible_playbook" -i localhost, "$here/scripts/cuda-build-args.yml" \
        -e "ansible_python_interpreter=$python" \
        -e "{\"llm_router_base_dir\": \"$base\", \"llm_router_gpu_compute_capabilities\": $caps_json,
              \"llm_router_cuda_home\": \"$cuda_home\", \"llm_router_llamacpp_build_jobs\": $jobs,
              \"check_cuda_version\": \"$cuda_release\"}" >"$base/render.log" 2>&1 ||
        die "the role did not render its llama.cpp build; Ansible said:
$(grep -E -A2 'FAILED|ERROR' "$base/render.log" | head -12)"
    [[ -s "$base/cmake-args.json" && -s "$base/build/llamacpp-build.sh" ]] ||
        die "the role rendered no cmake-args.json / llamacpp-build.sh in $base"
}
scratch="$(mktemp -d "$cache/render.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
render "$scratch"
build_id="$(json "$scratch/cmake-args.json" build_id)"
mapfile -t cmake_args < <("$python" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["cmake"]))' \
    "$scratch/cmake-args.json")
archs="$(printf '%s\n' "${cmake_args[@]}" | sed -n 's/^-DCMAKE_CUDA_ARCHITECTURES=//p')"
[[ -n "$archs" ]] && printf '%s\n' "${cmake_args[@]}" | grep -qx -- '-DGGML_CUDA=ON' ||
    die "the role's arguments are not a CUDA build: ${cmake_args[*]}"
# CMAKE_CUDA_ARCHITECTURES entries -> the cubins the binary must hold (90 -> sm_90, 120a -> sm_120a).
mapfile -t want_sms < <(echo "$archs" | tr ';' '\n' | sed -E 's/-(real|virtual)$//; s/^/sm_/')
key="${build_id// /-}"
dest="$cache/$key"
stamp="nvcc $nvcc_version, nvidia-cublas $cublas_version"
log "role build id: $build_id; CMake arguments: ${cmake_args[*]}"

if [[ "$mode" == full && -x "$dest/llama-server" && "$(cat "$dest/stamp" 2>/dev/null)" == "$stamp" ]]; then
    cat "$dest/summary.txt"
    echo "cached: $dest/llama-server (this run: $(($(now) - t_start)) s)"
    exit 0
fi

# 2. What the nvcc-only toolkit lacks, cached by version.
cublas="$cache/cublas-$cublas_version"
if [[ ! -f "$cublas/include/cublas_v2.h" ]]; then
    log "fetching nvidia-cublas==$cublas_version (PyPI wheel, ~420 MB)"
    tmp="$(mktemp -d "$cache/cublas.XXXXXX")"
    "$python" -m pip download --quiet --no-deps -d "$tmp/dl" "nvidia-cublas==$cublas_version"
    unzip -q "$tmp"/dl/nvidia_cublas-*.whl "nvidia/cu$cuda_major/*" -d "$tmp"
    # FindCUDAToolkit looks for libcublas.so / libcublasLt.so; the wheel has only the sonames.
    ln -s libcublas.so."$cuda_major" "$tmp/nvidia/cu$cuda_major/lib/libcublas.so"
    ln -s libcublasLt.so."$cuda_major" "$tmp/nvidia/cu$cuda_major/lib/libcublasLt.so"
    rm -rf "$cublas"
    mv "$tmp/nvidia/cu$cuda_major" "$cublas"
    rm -rf "$tmp"
fi

# A link stub for the driver library, as NVIDIA's lib64/stubs/libcuda.so: every cu* function of this toolkit's
# cuda.h, under the names its macros map them to (cuMemGetInfo -> cuMemGetInfo_v2), soname libcuda.so.1 like the
# driver. It only satisfies the linker; it is never run. No libcuda.so.1 in its folder: the build puts the folder
# on the binary's RUNPATH (as it does NVIDIA's stubs/), and the loader must find the real driver instead.
stub="$cache/libcuda-stub-$nvcc_version"
if [[ ! -f "$stub/libcuda.so" ]]; then
    log "generating the libcuda.so link stub from $cuda_home/include/cuda.h"
    tmp="$(mktemp -d "$cache/stub.XXXXXX")"
    echo '#include <cuda.h>' | gcc -E -P -I"$cuda_home/include" -x c - |
        grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' | sort -u >"$tmp/symbols.txt"
    [[ $(wc -l <"$tmp/symbols.txt") -gt 100 ]] || die "found too few driver functions in cuda.h: $tmp/symbols.txt"
    sed 's/.*/int &(void) { return 34; }/' "$tmp/symbols.txt" >"$tmp/libcuda-stub.c" # 34: CUDA_ERROR_STUB_LIBRARY
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so" "$tmp/libcuda-stub.c"
    rm -rf "$stub"
    mv "$tmp" "$stub"
fi

cuobjdump="$cuda_home/bin/cuobjdump"
if [[ ! -x "$cuobjdump" ]]; then
    cuobjdump="$cache/cuobjdump-$cuobjdump_version/cuobjdump"
    if [[ ! -x "$cuobjdump" ]]; then
        log "fetching nvidia-cuda-cuobjdump==$cuobjdump_version (the toolkit has no cuobjdump)"
        tmp="$(mktemp -d "$cache/cuobjdump.XXXXXX")"
        "$python" -m pip download --quiet --no-deps -d "$tmp/dl" "nvidia-cuda-cuobjdump==$cuobjdump_version"
        unzip -q -j "$tmp"/dl/nvidia_cuda_cuobjdump-*.whl '*/bin/cuobjdump' -d "$tmp"
        chmod 0755 "$tmp/cuobjdump"
        mkdir -p "$(dirname "$cuobjdump")"
        mv "$tmp/cuobjdump" "$cuobjdump"
        rm -rf "$tmp"
    fi
fi

# The stub links what the driver API declares: a program calling functions ggml-cuda uses for VMM.
selftest="$scratch/stub-test"
mkdir -p "$selftest"
cat >"$selftest/t.c" <<'EOF'
#include <cuda.h>
int main(void) {
    CUmemGenericAllocationHandle handle;
    CUmemAllocationProp prop = {0};
    CUdeviceptr ptr;
    size_t free_bytes, total_bytes;
    cuInit(0);
    cuMemGetInfo(&free_bytes, &total_bytes);
    cuMemCreate(&handle, 0, &prop, 0);
    cuMemAddressReserve(&ptr, 0, 0, 0, 0);
    return (int)cuMemMap(ptr, 0, 0, handle, 0);
}
EOF
gcc -I"$cuda_home/include" "$selftest/t.c" -L"$stub" -lcuda -o "$selftest/t" 2>"$selftest/link.log" ||
    die "a test program does not link against the stub $stub/libcuda.so: $(cat "$selftest/link.log")"
readelf -d "$selftest/t" | grep -q 'NEEDED.*\[libcuda\.so\.1\]' || die "the stub's test program does not need libcuda.so.1"
log "link stub: $stub/libcuda.so ($(wc -l <"$stub/symbols.txt") driver functions); a test program links against it"

export CMAKE_LIBRARY_PATH="$cublas/lib:$stub${CMAKE_LIBRARY_PATH:+:$CMAKE_LIBRARY_PATH}"
export CPATH="$cublas/include${CPATH:+:$CPATH}"
unset CMAKE_GENERATOR # the role's script runs with CMake's default generator
log "added through the environment: CMAKE_LIBRARY_PATH=$CMAKE_LIBRARY_PATH CPATH=$CPATH"

check_cubins() { # <file> <report>: the file holds a cubin for exactly the role's architectures
    "$cuobjdump" --list-elf "$1" >"$2" || die "cuobjdump --list-elf $1 failed"
    local have
    have="$(grep -oE 'sm_[0-9]+[af]?' "$2" | sort -u | tr '\n' ' ')"
    [[ "$have" == "$(printf '%s\n' "${want_sms[@]}" | sort -u | tr '\n' ' ')" ]] ||
        die "$1 holds cubins for '$have', the role asked for ${want_sms[*]}"
}

# 3. The role's build in its own base dir (the smoke in another, so it never disturbs a full build): the role's
# script and arguments rendered there, the source unpacked as its unarchive task does (the folder into <base>/build).
work="$cache/$mode-$key"
sdist="$cache_root/src/$(json "$scratch/cmake-args.json" source)"
[[ -f "$sdist" ]] || die "no $sdist: run 'make llama-server' (it caches the pinned llama.cpp source)"
checksum="$(json "$scratch/cmake-args.json" checksum)"
[[ "$checksum" != sha256:* ]] || echo "${checksum#sha256:}  $sdist" | sha256sum -c --quiet - ||
    die "$sdist does not match the role's llm_router_llamacpp_checksum $checksum"
render "$work"
[[ "$(json "$work/cmake-args.json" build_id)" == "$build_id" ]] || die "the build id changed between two renders"
src="$(json "$work/cmake-args.json" src)"
if [[ ! -f "$src/CMakeLists.txt" ]]; then
    log "unpacking $(json "$work/cmake-args.json" archive_dir) from $sdist"
    tar -xzf "$sdist" -C "$work/build" "$(json "$work/cmake-args.json" archive_dir)"
fi

if [[ "$mode" == smoke ]]; then
    smoke="$work/smoke-build"
    t0=$(now)
    nice -n "$nice_level" cmake -S "$src" -B "$smoke" "${cmake_args[@]}" >"$work/configure.log" 2>&1 ||
        die "configure with the role's arguments failed: $(grep -A3 'CMake Error' "$work/configure.log" | head -12)"
    t1=$(now)
    grep -qxE "CMAKE_CUDA_ARCHITECTURES:[A-Z]+=$archs" "$smoke/CMakeCache.txt" ||
        die "CMakeCache.txt has $(grep '^CMAKE_CUDA_ARCHITECTURES' "$smoke/CMakeCache.txt")"
    grep -E '^CUDA_(cublas|cublasLt|cuda_driver|cudart)_LIBRARY:' "$smoke/CMakeCache.txt" >&2
    objects=(arange.cu.o argsort.cu.o) # argsort includes CCCL's cub; both include cublas_v2.h via vendors/cuda.h
    nice -n "$nice_level" make -C "$smoke/ggml/src/ggml-cuda" "${objects[@]}" >"$work/build.log" 2>&1 ||
        die "compiling ${objects[*]} failed: $(tail -20 "$work/build.log")"
    t2=$(now)
    for object in "${objects[@]}"; do
        check_cubins "$smoke/ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/$object" "$work/$object.cuobjdump"
        log "$object: $(tr '\n' ' ' <"$work/$object.cuobjdump")"
    done
    rm -rf "$work"
    echo "smoke passed: configure with the role's arguments $((t1 - t0)) s; ${objects[*]} compiled for" \
        "${want_sms[*]} in $((t2 - t1)) s; driver stub link test; total $(($(now) - t_start)) s"
    exit 0
fi

# 4. Full build: the role's rendered llamacpp-build.sh, unchanged (nice'd: this machine is shared).
build_log="$work/build.log"
log "running the role's $work/build/llamacpp-build.sh under nice -n $nice_level, $jobs jobs; log: $build_log"
t0=$(now)
if ! nice -n "$nice_level" bash "$work/build/llamacpp-build.sh" >"$build_log" 2>&1; then
    die "the role's build script failed after $(($(now) - t0)) s (log: $build_log):
$(grep -E -B2 -A6 'error|Error' "$build_log" | tail -30)"
fi
t_build=$(($(now) - t0))
binary="$work/bin/llama-server"
[[ "$(cat "$work/bin/.llama-server.build")" == "$build_id" ]] || die "the build marker is not the role's build id"
check_cubins "$binary" "$work/cuobjdump.txt"
needed="$(readelf -d "$binary" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
for lib in "libcuda.so.1" "libcudart.so.$cuda_major" "libcublas.so.$cuda_major"; do
    [[ " $needed" == *" $lib "* ]] || die "llama-server does not need $lib (NEEDED: $needed)"
done
driver_symbols="$(nm -D --undefined-only "$binary" | awk '$2 ~ /^cu[A-Z]/ {print $2}' | sort -u)"
cu_objects="$(find "$src/build/ggml/src/ggml-cuda" -name '*.cu.o' | wc -l)"
mkdir -p "$dest"
cp "$binary" "$dest/llama-server.tmp"
mv "$dest/llama-server.tmp" "$dest/llama-server"
cp "$build_log" "$dest/build.log"
cp "$work/cuobjdump.txt" "$dest/cuobjdump.txt"
cp "$work/cmake-args.json" "$dest/cmake-args.json"
echo "$driver_symbols" >"$dest/driver-symbols.txt"
cat >"$dest/summary.txt" <<EOF
llama.cpp CUDA build as the role renders it, compiled on $(uname -n) ($(nproc) cores) on $(date -u +%Y-%m-%dT%H:%MZ)
role build id: $build_id
CMake arguments (the role's): ${cmake_args[*]}
added through the environment: CMAKE_LIBRARY_PATH=$CMAKE_LIBRARY_PATH CPATH=$CPATH
toolkit: nvcc $nvcc_version ($cuda_home); cuBLAS: nvidia-cublas $cublas_version; link stub: $stub/libcuda.so
result: built in $t_build s (nice -n $nice_level, $jobs jobs), $cu_objects ggml-cuda objects
cubins (cuobjdump --list-elf): $(grep -c . "$work/cuobjdump.txt") for $(grep -oE 'sm_[0-9]+[af]?' "$work/cuobjdump.txt" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
NEEDED: $needed
driver functions it links: $(echo "$driver_symbols" | wc -l) ($(echo "$driver_symbols" | tr '\n' ' '))
binary: $dest/llama-server ($(du -h "$dest/llama-server" | cut -f1)); log: $dest/build.log
EOF
echo "$stamp" >"$dest/stamp"
rm -rf "$work"
cat "$dest/summary.txt"
