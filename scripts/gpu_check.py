#!/usr/bin/env python3
"""A GPU check sized for a lent machine (docs/provisioning.md "A GPU check on a lent machine").

For a machine with one NVIDIA GPU, nvcc, CMake and Python 3.12 but no package registry, reached with at most
64 MiB carried in. Three steps, each its own subcommand:

  bundle         (here: `make gpu-check-bundle`) .gpu-check/: the pinned llama.cpp source archive that
                 scripts/build-llama-server.sh keeps, the router's runtime wheels (cp312 manylinux, the versions of
                 this checkout's .venv) and a manifest; fails when what travels would pass the carry limit.
  run            (there: scripts/gpu_check.sh) build llama-server for the GPU's own arch with the role's CMake
                 arguments, generate three GGUF models whose KV cache takes ~40% of the GPU each, run the router
                 (process supervisor, memory source nvml) and check through it: NVML capacity = nvidia-smi, a
                 learned footprint against its estimate, two models co-resident, a third evicting one by real VRAM,
                 memory back after the stop. One line per check; exit 1 when any fails.
  run --cpu      (here) the same flow on the cached CPU llama-server with a declared memory budget: every step but
                 NVML and the CUDA build, to find the script's own faults before device time is spent.
  run --dry-run  render the router config for a given GPU and validate it with `llm-router check-config`.

Standard library, plus the router (router_app) and the role's filter plugins from this checkout once the carried
wheels are on the path (the script puts them there itself).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Carried (in .gitignore): the device run's `carry` names it. GPU_CHECK_BUNDLE: elsewhere (tests).
BUNDLE = Path(os.environ.get("GPU_CHECK_BUNDLE", str(ROOT / ".gpu-check")))
WORK = ROOT / "build" / "gpu-check"  # ignored, not carried: kept between calls on a warm machine
CACHE = Path(os.environ.get("LLM_ROUTER_CACHE", str(Path.home() / ".cache" / "llm-router")))
MiB = 1024**2
GiB = 1024**3

# What a lent machine takes in: the working tree (tracked and untracked files) plus the carried paths.
CARRY_LIMIT = 64 * MiB
# The lent machine's Python (its torch venv: /opt/torch/.venv/bin/python3, 3.12.3) and pip's tags for its wheels.
TARGET_PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
PLATFORMS += ["manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]

# The models: llama, 32 layers, 32 KV heads of width 128 on a 64-wide residual stream: 0.5 MiB of f16 KV cache per
# token from a ~130 MiB file, so the context sets the VRAM (router_app/tools/tiny_gguf.py head_dim).
GPU_GEOMETRY = {"layers": 32, "heads": 32, "head_dim": 128, "dim": 64, "ff": 128}
CPU_GEOMETRY = {"layers": 4, "heads": 8, "head_dim": 128, "dim": 64, "ff": 128}
TRAIN_CTX = 1 << 20  # the models' context_length: above any --ctx-size used here
# Each model's estimate as a share of the device: two fit (0.8 plus CUDA contexts), a third does not (1.2).
MODEL_SHARE = 0.40
CPU_BUDGET = 3 * GiB  # run --cpu: the declared budget (memory.devices.cpu); fixed overheads ~2% of a model
# The estimate (router_app/memory/estimate.py: file + f16 KV at the context + 64 MiB) may miss the engine's real
# use by this share of itself: a miss this size still lets the scheduler place models right (the spare here is
# 20%).
FOOTPRINT_TOLERANCE = 0.05
# After the stop, NVML's used memory must be back to the baseline taken before the router started, within this.
FREED_SLACK = 256 * MiB
FREED_WAIT_S = 60.0
MODELS = ("gpu-check-a", "gpu-check-b", "gpu-check-c")


# --- small helpers ----------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mib(value: float | None) -> str:
    return "?" if value is None else f"{value / MiB:.0f} MiB"


@functools.cache
def gpu_smoke() -> ModuleType:
    """scripts/gpu_smoke.py (its HTTP helper)."""
    return load_module("gpu_smoke", Path(__file__).with_name("gpu_smoke.py"))


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def role_filters() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The role's filter plugins (pure Python): models (argv, env), config (config.yml), engines (CUDA archs)."""
    plugins = ROOT / "roles/llm_router/filter_plugins"
    return (
        load_module("llm_router_models", plugins / "llm_router_models.py"),
        load_module("llm_router_config", plugins / "llm_router_config.py"),
        load_module("llm_router_engines", plugins / "llm_router_engines.py"),
    )


def llamacpp_version() -> str:
    """llm_router_llamacpp_version from the role's defaults (b11312)."""
    text = (ROOT / "roles/llm_router/defaults/main.yml").read_text()
    match = re.search(r"^llm_router_llamacpp_version:\s*[\"']?(b\d+)", text, re.MULTILINE)
    if not match:
        raise SystemExit("gpu-check: llm_router_llamacpp_version not found in roles/llm_router/defaults/main.yml")
    return match.group(1)


def role_cmake_args(accelerator: str, archs: list[str], cuda_home: str, version: str) -> list[str]:
    """The role's `_llm_router_llamacpp_cmake` (roles/llm_router/vars/main.yml) with no llm_router_llamacpp_cmake_args;
    tests/unit/test_gpu_check.py renders the role's own expression and compares."""
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
    args += ["-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"]
    args += ["-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_NUMBER=" + re.sub("^b", "", version)]
    if accelerator == "cpu":
        return [*args, "-DGGML_NATIVE=OFF"]
    return [
        *args,
        "-DGGML_CUDA=ON",
        "-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(archs),
        f"-DCMAKE_CUDA_COMPILER={cuda_home}/bin/nvcc",
    ]


# --- bundle (here) ----------------------------------------------------------------------------------------------------


def runtime_closure(env_python: str = TARGET_PYTHON) -> dict[str, str]:
    """The router's runtime requirements, transitively, as installed in this venv: {distribution: version}.

    Markers are evaluated for CPython `env_python` on x86-64 Linux, so what the lent machine needs is carried even
    where this venv's Python would skip it."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    marker_env = {
        "python_version": env_python,
        "python_full_version": env_python + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    found: dict[str, str] = {}
    todo = [Requirement(r) for r in metadata.requires("llm-router") or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(marker_env):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in found:
            continue
        distribution = metadata.distribution(requirement.name)
        found[name] = distribution.version
        todo += [Requirement(r) for r in distribution.requires or []]
    return dict(sorted(found.items()))


def travelling_bytes() -> tuple[int, str]:
    """Bytes of the working tree that travels besides carried paths (tracked + untracked, not ignored)."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        return 0, "git ls-files failed: the working tree is not counted"
    total = 0
    for name in result.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total, ""


def bundle(args: argparse.Namespace) -> int:
    version = llamacpp_version()
    archive = CACHE / "src" / f"llama.cpp-{version}.tar.gz"
    if not archive.is_file():
        raise SystemExit(f"gpu-check: {archive} is missing; scripts/build-llama-server.sh (make llama-server) makes it")
    wheels_dir = BUNDLE / "wheels"
    shutil.rmtree(BUNDLE, ignore_errors=True)
    wheels_dir.mkdir(parents=True)
    closure = runtime_closure()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", TARGET_PYTHON, "--implementation", "cp", "-d", str(wheels_dir)]
    cmd += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    cmd += [f"{name}=={version_}" for name, version_ in closure.items()]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise SystemExit("gpu-check: pip could not download the router's wheels for the lent machine")
    shutil.copy2(archive, BUNDLE / archive.name)
    wheels = sorted(wheels_dir.glob("*.whl"))
    manifest = {
        "llamacpp_version": version,
        "archive": {"name": archive.name, "bytes": archive.stat().st_size, "sha256": sha256(archive)},
        "python": TARGET_PYTHON,
        "wheels": {w.name: {"bytes": w.stat().st_size, "sha256": sha256(w)} for w in wheels},
        "requirements": closure,
    }
    (BUNDLE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    bundle_bytes = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    tree, note = travelling_bytes()
    total = bundle_bytes + tree
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    print(f"source  {archive.name}  {mib(archive.stat().st_size)}")
    print(f"wheels  {len(wheels)} for cp{TARGET_PYTHON.replace('.', '')}  {mib(wheel_bytes)}")
    print(f"bundle  {BUNDLE}/  {mib(bundle_bytes)}  ({bundle_bytes} bytes)")
    print(f"tree    working tree that travels  {mib(tree)}  {note}")
    print(f"total   {mib(total)} of {mib(CARRY_LIMIT)} ({total / CARRY_LIMIT:.0%})")
    if total > CARRY_LIMIT:
        print(f"FAIL  what travels ({mib(total)}) is over the limit of {mib(CARRY_LIMIT)}")
        return 1
    return 0


# --- the lent machine's facts -----------------------------------------------------------------------------------------


@dataclass
class Gpu:
    name: str
    compute_cap: str
    total_mib: int
    driver: str = ""


def nvidia_smi(*query: str) -> list[list[str]]:
    result = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvidia-smi {' '.join(query)}: {result.stderr.strip() or result.stdout.strip()}")
    return [[cell.strip() for cell in line.split(",")] for line in result.stdout.splitlines() if line.strip()]


def gpu0() -> Gpu:
    rows = nvidia_smi("--query-gpu=name,compute_cap,memory.total,driver_version", "-i", "0")
    name, cap, total, driver = rows[0]
    return Gpu(name, cap, int(total), driver)


def gpu_used_mib() -> int:
    return int(nvidia_smi("--query-gpu=memory.used", "-i", "0")[0][0])


def gpu_free_mib() -> int:
    return int(nvidia_smi("--query-gpu=memory.free", "-i", "0")[0][0])


def compute_apps() -> dict[int, int | None]:
    """PID -> used MiB of the processes on the GPU (None where nvidia-smi says N/A)."""
    apps: dict[int, int | None] = {}
    for row in nvidia_smi("--query-compute-apps=pid,used_memory"):
        if row and row[0].isdigit():
            apps[int(row[0])] = int(row[1]) if len(row) > 1 and row[1].isdigit() else None
    return apps


# --- checks: pure judges (tests/unit/test_gpu_check.py) ---------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    figures: str
    why: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name:<13} {self.figures}" + (
            f"  -- {self.why}" if self.why else ""
        )


def judge_capacity(router_bytes: int | None, smi_total_mib: int) -> Check:
    """The router's NVML capacity for GPU 0 (reserve 0) is what nvidia-smi reports (MiB, rounded down)."""
    figures = f"router {mib(router_bytes)} ({router_bytes} B)  nvidia-smi {smi_total_mib} MiB"
    if router_bytes is None:
        return Check("nvml-capacity", False, figures, "the router reports no capacity for GPU 0 (NVML not used?)")
    ok = router_bytes // MiB == smi_total_mib
    return Check("nvml-capacity", ok, figures, "" if ok else "NVML total and nvidia-smi differ")


def judge_footprint(model: str, measured: int | None, estimate: int | None, tolerance: float = FOOTPRINT_TOLERANCE):
    """A learned footprint (measured after the load) is within `tolerance` of the estimate made before it."""
    if not measured or not estimate:
        return Check("footprint", False, f"{model}: measured {mib(measured)} estimate {mib(estimate)}", "not measured")
    ratio = measured / estimate
    figures = f"{model}: measured {mib(measured)}  estimate {mib(estimate)}  ratio {ratio:.3f} (tolerance {tolerance})"
    ok = abs(ratio - 1) <= tolerance
    return Check("footprint", ok, figures, "" if ok else "the estimate misses the engine's real use")


def judge_coresident(states: dict[str, str], measured: dict[str, int | None], capacity: int) -> Check:
    """Both models are ready at once and their measured footprints fit the device together."""
    used = sum(v or 0 for v in measured.values())
    figures = " + ".join(f"{m} {states.get(m)} {mib(measured.get(m))}" for m in states) + f" = {mib(used)}"
    figures += f" of {mib(capacity)}"
    if any(state != "ready" for state in states.values()):
        return Check("co-resident", False, figures, "not every model is ready")
    if any(not v for v in measured.values()):
        return Check("co-resident", False, figures, "a footprint was not measured")
    ok = used <= capacity
    return Check("co-resident", ok, figures, "" if ok else "more than the device holds is counted as resident")


def judge_eviction(
    free_before: int, needed: int, states: dict[str, str], newcomer: str, gone: dict[str, bool], memory_evictions: int
) -> Check:
    """The newcomer did not fit next to the residents by real free memory; loading it evicted exactly one of them,
    whose process left the device, and the router counted one eviction for memory."""
    evicted = [m for m, s in states.items() if m != newcomer and s != "ready"]
    relation = "<" if free_before < needed else ">="
    figures = f"free {mib(free_before)} {relation} {newcomer} needs {mib(needed)}; after: " + ", ".join(
        f"{m} {s}" for m, s in states.items()
    )
    figures += f"; evictions(memory) {memory_evictions}"
    if free_before >= needed:
        return Check("evict", False, figures, "the newcomer fitted anyway: the check proves nothing")
    if states.get(newcomer) != "ready":
        return Check("evict", False, figures, f"{newcomer} is not ready")
    if len(evicted) != 1:
        return Check("evict", False, figures, f"expected one model evicted, got {evicted or 'none'}")
    if not gone.get(evicted[0]):
        return Check("evict", False, figures, f"{evicted[0]}'s engine still holds the device")
    if memory_evictions != 1:
        return Check("evict", False, figures, "the router did not count one eviction for memory")
    return Check("evict", True, figures)


def judge_freed(baseline_used: int, used_after: int, peak_used: int, alive: list[int], waited_s: float) -> Check:
    """After the stop every engine process is gone and the device's used memory is back to the baseline."""
    figures = f"used {mib(baseline_used)} before, {mib(peak_used)} at peak, {mib(used_after)} after {waited_s:.1f}s"
    if alive:
        return Check("freed", False, figures, f"engine processes still on the device: {alive}")
    ok = used_after <= baseline_used + FREED_SLACK
    return Check("freed", ok, figures, "" if ok else f"more than {mib(FREED_SLACK)} above the baseline")


# --- models and config ------------------------------------------------------------------------------------------------


def model_file_bytes(geometry: dict[str, int]) -> int:
    """The weights' bytes of a tiny_gguf model (F32) with this geometry, plus 1 MiB for metadata and alignment."""
    vocab, dim, ff = 448, geometry["dim"], geometry["ff"]
    width = geometry["heads"] * geometry["head_dim"]
    per_layer = 4 * width * dim + 3 * ff * dim + 2 * dim
    return 4 * (2 * vocab * dim + dim + geometry["layers"] * per_layer) + MiB


def kv_bytes_per_token(geometry: dict[str, int]) -> int:
    """f16 K and V over every layer (router_app/memory/gguf.py gguf_kv_cache_bytes)."""
    return geometry["layers"] * geometry["heads"] * 2 * geometry["head_dim"] * 2


def context_for(capacity: int, geometry: dict[str, int], share: float = MODEL_SHARE) -> int:
    """The --ctx-size (a multiple of 256) at which a model's estimate is about `share` of `capacity`."""
    room = share * capacity - model_file_bytes(geometry) - 64 * MiB
    return max(int(room // kv_bytes_per_token(geometry)) // 256 * 256, 256)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Setup:
    mode: str  # gpu | cpu | dry-run
    llama_server: Path
    capacity: int  # bytes: the GPU's total (NVML/nvidia-smi), or the declared CPU budget
    context: int
    geometry: dict[str, int]
    archs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the engines (LD_LIBRARY_PATH)


def write_config(setup: Setup, work: Path) -> tuple[Path, str, str, int]:
    """The router's config.yml, rendered by the role's own filters (argv, env, config keys) with the process supervisor
    instead of systemd units. Returns (path, client key, admin key, router port)."""
    models_f, config_f, _ = role_filters()
    etc = work / "etc"
    (etc / "engine-keys").mkdir(parents=True, exist_ok=True)
    client, admin = "sk-gpu-check-" + secrets.token_hex(12), "sk-gpu-check-admin-" + secrets.token_hex(12)
    for name, value in (("api-keys", client), ("admin.key", admin)):
        (etc / name).write_text(value + "\n")
        (etc / name).chmod(0o600)
    entries = []
    for model in MODELS:
        entry: dict[str, Any] = {
            "id": model,
            "backend": "llamacpp",
            "model": str(work / "models" / f"{model}.gguf"),
            "context_length": setup.context,
            "port": free_port(),
            "load_timeout_s": 300,
        }
        if setup.mode != "cpu":
            entry["gpus"] = "0"
        entries.append(entry)
    # state_dir: the role's KV continuity directories (slots/<slug>) land in the work directory, made by the router.
    paths = {
        "llama_server": str(setup.llama_server),
        "config_dir": str(etc),
        "base_dir": str(work),
        "state_dir": str(work),
    }
    accelerator = "cpu" if setup.mode == "cpu" else "cuda"
    models = models_f.normalize_models(entries, paths=paths, cuda_archs=setup.archs, accelerator=accelerator)
    memory: dict[str, Any] = {"source": "nvml", "reserve": 0, "free_wait_s": 60}
    if setup.mode == "cpu":
        memory = {"source": "declared", "devices": {"cpu": setup.capacity}, "reserve": 0}
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "supervisor": "process",
        "api_key_files": [str(etc / "api-keys")],
        "admin_key_file": str(etc / "admin.key"),
        "state_dir": str(work / "state"),
        "memory": memory,
        "fairness_s": 0,
        "load_timeout_s": 300,
        "log_level": "debug",  # the engines' output goes to router.log
    }
    config = config_f.router_config(models, settings, str(etc))
    for entry, model in zip(config["models"], models, strict=True):
        entry.pop("unit", None)
        # As model-start.sh.j2 runs it, with the key file in place of the unit's credential.
        entry["command"] = [*model["argv"], "--api-key-file", model["api_key_file"]]
        entry["env"] = {**model["env"], **setup.env}
        Path(model["api_key_file"]).write_text(secrets.token_hex(16) + "\n")
        Path(model["api_key_file"]).chmod(0o600)
    path = work / "config.yml"
    path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
    return path, client, admin, port


def check_config(path: Path, env: dict[str, str]) -> Check:
    result = subprocess.run(
        [sys.executable, "-m", "router_app.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    text = (result.stdout + result.stderr).strip().splitlines()
    return Check("check-config", result.returncode == 0, text[-1] if text else f"exit {result.returncode}")


# --- build (there) ----------------------------------------------------------------------------------------------------


def cuda_home() -> str:
    for candidate in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if candidate and Path(candidate, "bin", "nvcc").is_file():
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return str(Path(nvcc).resolve().parent.parent)
    raise SystemExit("gpu-check: no nvcc (CUDA_HOME, /usr/local/cuda/bin or PATH)")


def cublas_dirs() -> tuple[Path, Path] | None:
    """(include dir, lib dir) of a cuBLAS outside the toolkit: GPU_CHECK_CUBLAS (a dir with include/ and lib/), else
    the nvidia-cublas wheel in this Python (nvidia/cu13/ for CUDA 13, nvidia/cublas/ for CUDA 12)."""
    given = os.environ.get("GPU_CHECK_CUBLAS")
    bases = (
        [Path(given)]
        if given
        else [h.parent.parent for b in map(Path, sys.path) for h in b.glob("nvidia/*/include/cublas_v2.h")]
    )
    for base in bases:
        if (base / "include" / "cublas_v2.h").is_file() and sorted((base / "lib").glob("libcublas.so*")):
            return base / "include", base / "lib"
    return None


def driver_library() -> Path | None:
    """The driver's libcuda (GPU_CHECK_LIBCUDA, else what ldconfig knows, else NVIDIA's usual places)."""
    if os.environ.get("GPU_CHECK_LIBCUDA"):
        return Path(os.environ["GPU_CHECK_LIBCUDA"])
    result = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if "libcuda.so" in line and "=>" in line and "x86-64" in line:
            return Path(line.split("=>", 1)[1].strip())
    for pattern in ("usr/local/nvidia/lib64/libcuda.so*", "usr/lib/x86_64-linux-gnu/libcuda.so*"):
        found = sorted(Path("/").glob(pattern))
        if found:
            return found[0]
    return None


def toolkit_hints(output: str, links: Path, tried: set[str]) -> tuple[dict[str, str], dict[str, str], str]:
    """For what configure said the toolkit lacks: (build environment, engine environment, what was added).

    Only through the environment, never in the role's arguments (as scripts/check-cuda-build.sh does): FindCUDAToolkit
    searches CMAKE_LIBRARY_PATH, nvcc and g++ read CPATH. `links` gets the unversioned names find_library looks for."""
    build_env: dict[str, str] = {}
    engine_env: dict[str, str] = {}
    notes = []
    links.mkdir(parents=True, exist_ok=True)
    if ("CUDA::cublas" in output or "cublas_v2.h" in output) and "cublas" not in tried:
        tried.add("cublas")
        found = cublas_dirs()
        if found:
            include, lib = found
            for name in ("libcublas", "libcublasLt"):
                real = sorted(lib.glob(f"{name}.so*"))
                if real:
                    (links / f"{name}.so").unlink(missing_ok=True)
                    (links / f"{name}.so").symlink_to(real[0])
            build_env["CPATH"] = str(include)
            engine_env["LD_LIBRARY_PATH"] = str(lib)
            notes.append(f"cuBLAS from {lib.parent}")
    if "CUDA::cuda_driver" in output and "driver" not in tried:
        tried.add("driver")
        driver = driver_library()
        if driver:
            (links / "libcuda.so").unlink(missing_ok=True)
            (links / "libcuda.so").symlink_to(driver)
            notes.append(f"libcuda {driver}")
    if notes:
        build_env["CMAKE_LIBRARY_PATH"] = str(links)
    return build_env, engine_env, ", ".join(notes)


@dataclass
class Configured:
    ok: bool
    build_env: dict[str, str]  # what configure needed beyond the role's arguments (also for the compile)
    engine_env: dict[str, str]  # what llama-server needs at run time (LD_LIBRARY_PATH for a pip cuBLAS)
    notes: list[str]
    tail: str = ""


def configure(source: Path, build_dir: Path, role_args: list[str], log: Path) -> Configured:
    """cmake with the role's arguments; where it names a piece the toolkit lacks (cuBLAS, the driver library), once
    more with that piece found elsewhere and named in `notes`."""
    build_env: dict[str, str] = {}
    engine_env: dict[str, str] = {}
    notes: list[str] = []
    tried: set[str] = set()
    with log.open("a") as out:
        for _attempt in range(3):
            shutil.rmtree(build_dir, ignore_errors=True)
            cmd = ["cmake", "-S", str(source), "-B", str(build_dir), *role_args]
            out.write(f"+ {' '.join(f'{k}={v}' for k, v in build_env.items())} {' '.join(cmd)}\n")
            out.flush()
            result = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **build_env}
            )
            out.write(result.stdout)
            if result.returncode == 0:
                return Configured(True, build_env, engine_env, notes)
            more_build, more_engine, note = toolkit_hints(result.stdout, build_dir.parent / "cuda-links", tried)
            if not note:
                break
            build_env.update(more_build)
            engine_env.update(more_engine)
            notes.append(note)
    lines = result.stdout.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("CMake Error")), max(len(lines) - 12, 0))
    return Configured(False, build_env, engine_env, notes, "\n".join(lines[first : first + 12]))


def build(archs: list[str], version: str, archive: Path, jobs: int) -> tuple[Path, dict[str, str], Check]:
    """llama-server from the pinned source with the role's CMake arguments, built once per arguments and archive (a
    stamp), with -j `jobs`. Returns (binary, engine environment, check)."""
    home = cuda_home()
    role_args = role_cmake_args("cuda", archs, home, version)
    source = WORK / "src" / f"llama.cpp-{version}"
    build_dir = WORK / "llama-build"
    binary = build_dir / "bin" / "llama-server"
    stamp = WORK / "llama-server.stamp"
    identity = json.dumps({"args": role_args, "archive": sha256(archive)})
    started = time.monotonic()
    if binary.is_file() and stamp.is_file() and json.loads(stamp.read_text())["identity"] == identity:
        saved = json.loads(stamp.read_text())
        return binary, saved["env"], Check("build", True, f"cached: {saved['figures']}")
    # A run stopped by its time limit resumes: the same source stays unpacked, the same configure is not redone, and
    # `cmake --build` compiles only what is missing.
    unpacked = WORK / "src" / ".archive.sha256"
    if not (source.is_dir() and unpacked.is_file() and unpacked.read_text().strip() == sha256(archive)):
        shutil.rmtree(WORK / "src", ignore_errors=True)
        (WORK / "src").mkdir(parents=True)
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(WORK / "src")], check=True)
        unpacked.write_text(sha256(archive) + "\n")
    nvcc = subprocess.run([f"{home}/bin/nvcc", "--version"], capture_output=True, text=True).stdout
    nvcc_release = (re.findall(r"release ([\d.]+)", nvcc) or ["?"])[0]
    log = WORK / "build.log"
    configured_stamp = WORK / "llama-build.configured"
    saved_configure = json.loads(configured_stamp.read_text()) if configured_stamp.is_file() else {}
    if saved_configure.get("identity") == identity and (build_dir / "CMakeCache.txt").is_file():
        done = Configured(True, saved_configure["build_env"], saved_configure["engine_env"], saved_configure["notes"])
    else:
        configured_stamp.unlink(missing_ok=True)
        log.write_text("")
        done = configure(source, build_dir, role_args, log)
        if done.ok:
            keep = {"build_env": done.build_env, "engine_env": done.engine_env, "notes": done.notes}
            configured_stamp.write_text(json.dumps({"identity": identity, **keep}) + "\n")
    where = f"nvcc {nvcc_release} at {home}" + (f"; added: {'; '.join(done.notes)}" if done.notes else "")
    if not done.ok:
        return binary, {}, Check("build", False, f"configure failed ({where})", done.tail)
    configured = time.monotonic() - started
    cmd = ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)]
    print(f"INFO  build         configured in {configured:.0f}s ({where}); compiling, log {log}", flush=True)
    with log.open("a") as out:
        out.write("+ " + " ".join(cmd) + "\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **done.build_env})
    if result.returncode != 0:
        errors = [line for line in log.read_text().splitlines() if "error" in line.lower()]
        return (
            binary,
            {},
            Check("build", False, f"compile failed after {time.monotonic() - started:.0f}s", "\n".join(errors[-12:])),
        )
    figures = (
        f"llama-server {version} for {';'.join(archs)}, -j{jobs}: configure {configured:.0f}s, "
        f"total {time.monotonic() - started:.0f}s; {where}"
    )
    stamp.write_text(json.dumps({"identity": identity, "env": done.engine_env, "figures": figures}) + "\n")
    return binary, done.engine_env, Check("build", True, figures)


def list_devices(binary: Path, env: dict[str, str]) -> Check:
    """llama-server sees the GPU (`--list-devices`)."""
    result = subprocess.run(
        [str(binary), "--list-devices"], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )
    text = (result.stdout + result.stderr).strip()
    cuda = [line.strip() for line in text.splitlines() if line.strip().startswith("CUDA")]
    ok = result.returncode == 0 and bool(cuda)
    return Check(
        "cuda-device", ok, "; ".join(cuda) or text[-300:], "" if ok else "llama-server does not see a CUDA GPU"
    )


# --- the router -------------------------------------------------------------------------------------------------------


class Router:
    def __init__(self, config: Path, port: int, client: str, admin: str, env: dict[str, str], log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.client, self.admin_key = client, admin
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router_app.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )  # same process group: a hard kill of the check takes the router along (and its engines: PDEATHSIG)

    def http(self, method: str, path: str, body: Any = None, key: str = "", timeout: float = 600) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one call to the router (gpu_smoke.http: standard library only)."""
        return gpu_smoke().http(method, self.base + path, body, key, timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline, delay = time.monotonic() + timeout, 0.05
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the router exited with {self.proc.returncode}; see {self.log}")
            if self.http("GET", "/health", timeout=5)[0] == 200:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise RuntimeError(f"the router did not answer /health within {timeout:.0f}s; see {self.log}")

    def health(self) -> dict[str, Any]:
        status, reply = self.http("GET", "/health", timeout=10)
        if status != 200 or not isinstance(reply, dict):
            raise RuntimeError(f"/health: HTTP {status}: {str(reply)[:300]}")
        return reply

    def model(self, model: str) -> dict[str, Any]:
        status, reply = self.http("GET", f"/health/{model}", timeout=10)
        if status != 200 or not isinstance(reply, dict):
            raise RuntimeError(f"/health/{model}: HTTP {status}: {str(reply)[:300]}")
        return reply

    def admin(self, action: str, model: str | None = None) -> float:
        started = time.monotonic()
        status, reply = self.http("POST", f"/admin/{action}", {"model": model} if model else {}, self.admin_key)
        if status != 200:
            raise RuntimeError(f"/admin/{action} {model or ''}: HTTP {status}: {str(reply)[:400]}")
        return time.monotonic() - started

    def chat(self, model: str) -> float:
        """One short greedy chat; completion tokens per second over the request."""
        body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
        started = time.monotonic()
        status, reply = self.http("POST", "/v1/chat/completions", {**body, "temperature": 0}, self.client)
        elapsed = time.monotonic() - started
        if status != 200 or not isinstance(reply, dict):
            raise RuntimeError(f"chat with {model}: HTTP {status}: {str(reply)[:300]}")
        return ((reply.get("usage") or {}).get("completion_tokens") or 0) / max(elapsed, 1e-9)

    def metric(self, name: str, **labels: str) -> float:
        status, text = self.http("GET", "/metrics", timeout=10)
        total = 0.0
        for line in str(text).splitlines() if status == 200 else []:
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline, delay = time.monotonic() + timeout, 0.05
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def pid_of(info: dict[str, Any]) -> int | None:
    kind, _, value = str(info.get("supervisor", "")).partition(" ")
    return int(value) if kind == "pid" and value.isdigit() else None


def memory_entry(health: dict[str, Any], device: str) -> dict[str, Any]:
    for entry in health.get("memory", []):
        if entry.get("device") == device:
            return entry
    return {}


def measured_of(health: dict[str, Any], device: str) -> dict[str, int | None]:
    return {m["model"]: m.get("measured") for m in memory_entry(health, device).get("models", [])}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def poll(until: Callable[[], bool], timeout: float) -> tuple[bool, float]:
    started, delay = time.monotonic(), 0.05
    while True:
        if until():
            return True, time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return False, time.monotonic() - started
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def drive(router: Router, setup: Setup, config: Path, checks: list[Check], baseline_used: int) -> None:
    """The checks through the router; each appends its line (and prints it) as it completes."""
    from router_app.config import load_config
    from router_app.memory.estimate import estimate_footprint

    gpu = setup.mode == "gpu"
    device = "0" if gpu else "cpu"

    def add(check: Check) -> None:
        checks.append(check)
        print(check.line(), flush=True)

    health = router.health()
    capacity = memory_entry(health, device).get("capacity")
    if gpu:
        add(judge_capacity(capacity, setup.capacity // MiB))
    else:
        ok = capacity == setup.capacity
        add(Check("capacity", ok, f"declared cpu budget {mib(capacity)} (NVML is not exercised in --cpu)"))
    capacity = int(capacity or setup.capacity)
    cfg = {m.id: m for m in load_config(config).models}
    estimates = {m: estimate_footprint(cfg[m], capacity, 1) for m in MODELS}
    a, b, c = MODELS
    pids: dict[str, int | None] = {}
    for model in (a, b):
        load_s = router.admin("load", model)
        tok_s = router.chat(model)
        pids[model] = pid_of(router.model(model))
        print(f"INFO  load          {model}: {load_s:.1f}s, {tok_s:.0f} tok/s, pid {pids[model]}", flush=True)
        if model == a:
            measured = measured_of(router.health(), device).get(a)
            add(judge_footprint(a, measured, estimates[a]))
            if gpu:
                apps = compute_apps()
                print(f"INFO  nvidia-smi    {a}: pid {pids[a]} uses {apps.get(pids[a] or -1)} MiB", flush=True)
    health = router.health()
    states = {m: router.model(m)["state"] for m in (a, b)}
    add(judge_coresident(states, {m: measured_of(health, device).get(m) for m in (a, b)}, capacity))
    peak = gpu_used_mib() * MiB if gpu else 0
    # What is really free before the third load: NVML on the GPU, the declared budget's remainder in --cpu.
    free_before = gpu_free_mib() * MiB if gpu else int(memory_entry(health, device).get("free") or 0)
    before = router.metric("llm_router_evictions_total", reason="memory")
    load_s = router.admin("load", c)
    pids[c] = pid_of(router.model(c))
    states = {m: router.model(m)["state"] for m in MODELS}
    evicted = [m for m in (a, b) if states[m] != "ready"]

    def engine_gone(model: str) -> bool:
        pid = pids.get(model)
        if pid is None:
            return False
        return (not pid_alive(pid)) and (not gpu or pid not in compute_apps())

    gone = {m: poll(lambda m=m: engine_gone(m), 30)[0] for m in evicted}
    evictions = int(router.metric("llm_router_evictions_total", reason="memory") - before)
    print(f"INFO  load          {c}: {load_s:.1f}s (its estimate {mib(estimates[c])}), pid {pids[c]}", flush=True)
    add(judge_eviction(free_before, int(estimates[c] or 0), states, c, gone, evictions))
    router.admin("unload")
    alive = [p for p in pids.values() if p is not None]

    def freed() -> bool:
        nonlocal alive
        alive = [p for p in pids.values() if p is not None and pid_alive(p)]
        if gpu:
            alive += [p for p in compute_apps() if p in pids.values() and p not in alive]
            return not alive and gpu_used_mib() * MiB <= baseline_used + FREED_SLACK
        return not alive

    _, waited = poll(freed, FREED_WAIT_S)
    if gpu:
        add(judge_freed(baseline_used, gpu_used_mib() * MiB, peak, alive, waited))
    else:
        add(Check("freed", not alive, f"engine processes left: {alive} after {waited:.1f}s (no NVML in --cpu)"))


# --- run --------------------------------------------------------------------------------------------------------------


def install_wheels(manifest: dict[str, Any]) -> Path:
    """pip install the carried wheels into WORK/site (no index, no deps) once per manifest."""
    site = WORK / "site"
    stamp = site / ".manifest.sha256"
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return site
    shutil.rmtree(site, ignore_errors=True)
    wheels = [str(BUNDLE / "wheels" / name) for name in manifest["wheels"]]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    if subprocess.run([*cmd, "--target", str(site), *wheels], check=False).returncode != 0:
        raise SystemExit("gpu-check: pip could not install the carried wheels")
    stamp.write_text(digest + "\n")
    return site


def verify_bundle() -> dict[str, Any]:
    path = BUNDLE / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"gpu-check: {path} is missing: run `make gpu-check-bundle` and carry .gpu-check")
    manifest = json.loads(path.read_text())
    files = {
        manifest["archive"]["name"]: manifest["archive"],
        **{f"wheels/{k}": v for k, v in manifest["wheels"].items()},
    }
    for name, meta in files.items():
        if not (BUNDLE / name).is_file() or sha256(BUNDLE / name) != meta["sha256"]:
            raise SystemExit(f"gpu-check: .gpu-check/{name} is missing or not the file the manifest names")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version != manifest["python"]:
        raise SystemExit(f"gpu-check: this is Python {version}; the carried wheels are for {manifest['python']}")
    return manifest


def write_models(setup: Setup, work: Path) -> float:
    from router_app.tools import tiny_gguf

    started = time.monotonic()
    (work / "models").mkdir(parents=True, exist_ok=True)
    g = setup.geometry
    for seed, model in enumerate(MODELS, start=1):
        tiny_gguf.write_model(
            work / "models" / f"{model}.gguf",
            name=model,
            seed=seed,
            layers=g["layers"],
            dim=g["dim"],
            heads=g["heads"],
            ff=g["ff"],
            head_dim=g["head_dim"],
            ctx=TRAIN_CTX,
        )
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    started = float(os.environ.get("GPU_CHECK_STARTED", time.monotonic()))  # CLOCK_MONOTONIC survives the execve
    # `timeout` or a Ctrl-C: leave through the `finally` that stops the router, so no engine keeps the GPU.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    checks: list[Check] = []
    env = dict(os.environ)
    version = llamacpp_version()
    _, _, engines_f = role_filters()
    if args.mode == "gpu":
        manifest = verify_bundle()
        if os.environ.get("GPU_CHECK_SITE") is None:
            site = install_wheels(manifest)
            env["GPU_CHECK_SITE"], env["GPU_CHECK_STARTED"] = str(site), str(started)
            env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            os.execve(sys.executable, [sys.executable, *sys.argv], env)  # again, with the router's packages
        gpu = gpu0()
        print(
            f"INFO  gpu           {gpu.name}, compute capability {gpu.compute_cap}, {gpu.total_mib} MiB, "
            f"driver {gpu.driver}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
            flush=True,
        )
        archs = engines_f.cuda_architectures([gpu.compute_cap])
        binary, engine_env, check = build(archs, version, BUNDLE / manifest["archive"]["name"], args.jobs)
        checks.append(check)
        print(check.line(), flush=True)
        if not check.ok:
            return finish(checks, started)
        checks.append(list_devices(binary, engine_env))
        print(checks[-1].line(), flush=True)
        # The generator runs on the pinned source's own gguf-py (the gguf version CI uses: 0.19.0).
        sys.path.insert(0, str(WORK / "src" / f"llama.cpp-{version}" / "gguf-py"))
        geometry, capacity = GPU_GEOMETRY, gpu.total_mib * MiB
        setup = Setup("gpu", binary, capacity, context_for(capacity, geometry), geometry, archs, engine_env)
    elif args.mode == "cpu":
        binary = Path(os.environ.get("LLAMA_SERVER_BIN", str(CACHE / "llama-server" / version / "llama-server")))
        if not binary.is_file():
            raise SystemExit(f"gpu-check --cpu: no CPU llama-server at {binary} (make llama-server)")
        geometry = CPU_GEOMETRY
        setup = Setup("cpu", binary, CPU_BUDGET, context_for(CPU_BUDGET, geometry), geometry)
    else:
        name, cap, total = args.gpu.split(",")
        archs = engines_f.cuda_architectures([cap])
        capacity = int(total) * MiB
        binary = WORK / "llama-build" / "bin" / "llama-server"
        setup = Setup("dry-run", binary, capacity, context_for(capacity, GPU_GEOMETRY), GPU_GEOMETRY, archs)
        print(f"INFO  gpu           {name} (given), compute capability {cap}, {total} MiB: archs {archs}", flush=True)
        print(f"INFO  cmake         {' '.join(role_cmake_args('cuda', archs, '/usr/local/cuda', version))}")
    work = WORK if args.mode == "gpu" else Path(args.work)
    shutil.rmtree(work / "state", ignore_errors=True)
    shutil.rmtree(work / "etc", ignore_errors=True)
    kv = setup.context * kv_bytes_per_token(setup.geometry)
    print(
        f"INFO  models        3 x llama {setup.geometry}: --ctx-size {setup.context}, KV {mib(kv)} each, "
        f"{MODEL_SHARE:.0%} of {mib(setup.capacity)}",
        flush=True,
    )
    config, client, admin, port = write_config(setup, work)
    checks.append(check_config(config, env))
    print(checks[-1].line(), flush=True)
    if args.mode == "dry-run" or not checks[-1].ok:
        return finish(checks, started)
    print(f"INFO  generate      {write_models(setup, work):.1f}s for 3 models in {work / 'models'}", flush=True)
    baseline = gpu_used_mib() * MiB if setup.mode == "gpu" else 0
    router = Router(config, port, client, admin, env, work / "router.log")
    try:
        router.wait_ready()
        drive(router, setup, config, checks, baseline)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        checks.append(Check("router", False, "the checks stopped", str(exc)))
        print(checks[-1].line(), flush=True)
    finally:
        router.stop()
    if not all(c.ok for c in checks):
        print(f"---- last lines of {router.log}:")
        print("\n".join(router.log.read_text(errors="replace").splitlines()[-40:]))
    return finish(checks, started)


def finish(checks: list[Check], started: float) -> int:
    failed = [c for c in checks if not c.ok]
    print(f"gpu-check: {len(checks) - len(failed)} passed, {len(failed)} failed, {time.monotonic() - started:.0f}s")
    out = os.environ.get("OUT")
    if out and Path(out).is_dir():  # on the lent machine: the logs come back with $OUT
        for name in ("router.log", "build.log", "config.yml"):
            with contextlib.suppress(OSError):
                shutil.copy2(WORK / name, Path(out) / f"gpu-check-{name}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bundle", help="make .gpu-check/ (here, with network)").set_defaults(func=bundle)
    run_parser = sub.add_parser("run", help="build, start the router and check (on the lent machine)")
    modes = run_parser.add_mutually_exclusive_group()
    modes.add_argument("--cpu", dest="mode", action="store_const", const="cpu", help="rehearse on the CPU llama-server")
    modes.add_argument("--dry-run", dest="mode", action="store_const", const="dry-run", help="render and validate only")
    run_parser.set_defaults(mode="gpu", func=run)
    run_parser.add_argument("--gpu", default="NVIDIA H200,9.0,143771", help="--dry-run: name,compute_cap,total MiB")
    run_parser.add_argument("--work", default=str(WORK / "rehearsal"), help="--cpu/--dry-run: work directory")
    run_parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs (default: all cores)")
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
