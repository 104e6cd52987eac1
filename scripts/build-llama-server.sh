#!/usr/bin/env bash
# Build a static CPU llama-server from the llama.cpp source vendored in the
# pinned llama-cpp-python sdist (the only llama.cpp source on the package
# registries), and cache it under ~/.cache/llm-router keyed by build number.
#
# Prints the path of the binary on stdout. Idempotent: a cached binary is reused.
# Keeps the sdist in the cache (src/llama_cpp_python-<version>.tar.gz): it is the
# role's default llama.cpp source, and Molecule (make molecule) passes this file to
# the role. Also leaves src/llama.cpp-b<N>.tar.gz, the vendored tree alone, to read.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
LLAMA_BUILD_NUMBER="${LLAMA_BUILD_NUMBER:-11312}"
LLAMA_BUILD_COMMIT="${LLAMA_BUILD_COMMIT:-0c1e570}"
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI (its link's #sha256= in https://pypi.org/simple/llama-cpp-python/);
# the role's default llm_router_llamacpp_checksum is the same (tests/unit/test_llamacpp_source.py).
LLAMA_CPP_PYTHON_SHA256="${LLAMA_CPP_PYTHON_SHA256:-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}"
CACHE_ROOT="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"

dest="$CACHE_ROOT/llama-server/b$LLAMA_BUILD_NUMBER"
bin="$dest/llama-server"
archive="$CACHE_ROOT/src/llama.cpp-b$LLAMA_BUILD_NUMBER.tar.gz"
sdist="$CACHE_ROOT/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"

log() { echo "build-llama-server: $*" >&2; }

if [[ -x "$bin" && -f "$archive" && -f "$sdist" ]] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

for tool in cmake g++ make; do
  command -v "$tool" >/dev/null || { log "missing '$tool'; install it (Debian: apt-get install cmake g++ make)"; exit 1; }
done

mkdir -p "$CACHE_ROOT/src" "$dest"
work="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [[ ! -f "$sdist" ]]; then
  log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    -d "$work/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  echo "$LLAMA_CPP_PYTHON_SHA256  $work/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" | sha256sum -c --quiet - >&2 || {
    log "the sdist's sha256 is not LLAMA_CPP_PYTHON_SHA256=$LLAMA_CPP_PYTHON_SHA256 (set it for another version)"
    exit 1
  }
  mv "$work/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" "$sdist"
fi

log "unpacking vendored llama.cpp"
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
src="$work/llama.cpp-b$LLAMA_BUILD_NUMBER"
mv "$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" "$src"

if [[ ! -f "$archive" ]]; then
  log "writing source archive $archive"
  tar -czf "$archive.tmp" -C "$work" "llama.cpp-b$LLAMA_BUILD_NUMBER"
  mv "$archive.tmp" "$archive"
fi

if [[ ! -x "$bin" ]]; then
  log "configuring (static CPU build, target llama-server only)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER" -DLLAMA_BUILD_COMMIT="$LLAMA_BUILD_COMMIT" >&2
  log "building with $JOBS jobs (about 10 minutes on 2 cores)"
  cmake --build "$work/build" --target llama-server -j "$JOBS" >&2
  install -m 0755 "$work/build/bin/llama-server" "$bin.tmp"
  strip "$bin.tmp" || true
  mv "$bin.tmp" "$bin"
fi

"$bin" --version >&2
echo "$bin"
