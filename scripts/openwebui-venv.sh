#!/usr/bin/env bash
# Install Open-WebUI (for `make e2e`) from PyPI into its own venv, cached by version; print the venv's path.
#   scripts/openwebui-venv.sh     ->  ~/.cache/llm-router/openwebui-0.12.4/venv   (idempotent; a lock guards races)
#
# torch: Open-WebUI needs it only through sentence-transformers/accelerate, for local embeddings and reranking,
# which the e2e test does not use (RAG_EMBEDDING_ENGINE=openai). PyPI's Linux torch wheels are CUDA builds that pull
# ~30 nvidia-*/cuda-* wheels (GBs), so torch goes in first, one of two ways (OPENWEBUI_TORCH, default auto):
#   cpu          pip install torch==$TORCH_VERSION, when pip's plan for it has no CUDA packages (a CPU wheel on
#                find-links, as on this project's dev machines);
#   placeholder  a metadata-only torch distribution built here (no module: `import torch` fails), so that the
#                open-webui requirements are met without any torch download; used when pip would take CUDA.
# Env: OPENWEBUI_VERSION (0.12.4), TORCH_VERSION (2.13.0), OPENWEBUI_TORCH (auto|cpu|placeholder),
#      PYTHON (python3.11, else python3), LLM_ROUTER_CACHE (~/.cache/llm-router).
set -euo pipefail

version="${OPENWEBUI_VERSION:-0.12.4}"
torch_version="${TORCH_VERSION:-2.13.0}"
torch_mode="${OPENWEBUI_TORCH:-auto}"
cache="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}/openwebui-$version"
venv="$cache/venv"
stamp="$venv/.installed"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [[ -f "$stamp" ]]; then
    echo "$venv"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -f "$stamp" ]]; then
    echo "$venv"
    exit 0
fi

rm -rf "$venv"
"$python" -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install --upgrade pip >&2

if [[ "$torch_mode" == auto ]]; then
    report="$cache/torch-plan.json"
    "${pip[@]}" install --dry-run --ignore-installed --report "$report" "torch==$torch_version" >&2
    if "$py" - "$report" <<'PY'; then
import json, sys
names = [i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]]
sys.exit(0 if any(n.startswith(("nvidia-", "cuda-", "triton")) for n in names) else 1)
PY
        torch_mode=placeholder
    else
        torch_mode=cpu
    fi
fi

case "$torch_mode" in
cpu)
    "${pip[@]}" install "torch==$torch_version" >&2
    ;;
placeholder)
    wheels="$cache/wheels"
    mkdir -p "$wheels"
    "$py" - "$wheels" "$torch_version" <<'PY' >&2
import sys, zipfile
folder, version = sys.argv[1], sys.argv[2] + "+placeholder"
info = f"torch-{version}.dist-info"
files = {
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
    "Summary: placeholder for Open-WebUI's e2e venv (llm-router): no torch module, no CUDA download\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: llm-router\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
path = f"{folder}/torch-{version}-py3-none-any.whl"
with zipfile.ZipFile(path, "w") as wheel:
    for name, text in files.items():
        wheel.writestr(name, text)
print(path)
PY
    "${pip[@]}" install --no-index "$wheels/torch-$torch_version+placeholder-py3-none-any.whl" >&2
    ;;
*)
    echo "OPENWEBUI_TORCH must be auto, cpu or placeholder (got $torch_mode)" >&2
    exit 2
    ;;
esac

"${pip[@]}" install "open-webui==$version" >&2
"$py" - <<'PY' >&2
import importlib.metadata as md
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith(("nvidia", "cuda")))
print("open-webui", md.version("open-webui"), "torch", md.version("torch"), "CUDA wheels:", cuda or "none")
assert not cuda, "CUDA wheels were installed"
PY
echo "$torch_mode" >"$stamp"
echo "$venv"
