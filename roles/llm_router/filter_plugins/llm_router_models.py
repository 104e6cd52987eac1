"""Filters that turn the inventory's model list into what the templates need: slug, port, unit name, engine
command line and environment per model (normalize_models). Kept in Python so the logic is testable
(tests/unit/test_role_filters.py) instead of living in long Jinja expressions."""

from __future__ import annotations

import re
import zlib
from typing import Any

BACKENDS = ("llamacpp", "sglang", "tabbyapi", "vllm", "openai")
LOCAL = "127.0.0.1"


class FilterError(Exception):
    pass


def model_slug(model_id: str) -> str:
    """A unit-instance-safe name: lower-case letters, digits and '-' (e.g. Qwen/Qwen2.5-7B -> qwen-qwen2-5-7b)."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")
    if not slug:
        raise FilterError(f"model id {model_id!r} has no letters or digits")
    return slug


def _flag(argv: list[str], name: str, value: Any) -> None:
    if value is not None and value != "":
        argv += [name, str(value)]


def _engine_command(
    model: dict[str, Any], port: int, paths: dict[str, str], cuda_archs: list[str], accelerator: str
) -> tuple[list[str], str]:
    """(argv, working directory) for one model's engine."""
    backend = model["backend"]
    served = model["served_name"]
    ctx = model.get("context_length")
    tp = model.get("tensor_parallel")
    quant = model.get("quantization")
    extra = [str(a) for a in model.get("extra_args", [])]
    workdir = paths["base_dir"]
    listen = ["--host", LOCAL, "--port", str(port)]
    if backend == "llamacpp":
        argv = [paths["llama_server"], "--model", model["model"], "--alias", served, *listen]
        _flag(argv, "--ctx-size", ctx)
        if accelerator == "cuda":
            _flag(argv, "--n-gpu-layers", model.get("gpu_layers", "all"))
            split = model.get("gpu_split")
            if split:
                argv += ["--tensor-split", ",".join(str(s) for s in split)]
        else:
            argv += ["--n-gpu-layers", "0"]
        _flag(argv, "--parallel", model.get("parallel"))
        if "--load-mode" not in extra and "-lm" not in extra:
            argv += ["--load-mode", load_mode(model, accelerator)]
        if model.get("kv_continuity", True) and "--slot-save-path" not in extra:
            argv += ["--slot-save-path", f"{paths.get('state_dir', '/var/lib/llm-router')}/slots/{model['slug']}"]
    elif backend == "sglang":
        launch = [paths["sglang_python"], "-m", "sglang.launch_server", "--model-path", model["model"]]
        argv = [*launch, "--served-model-name", served, *listen]
        _flag(argv, "--context-length", ctx)
        _flag(argv, "--tp-size", tp)
        _flag(argv, "--quantization", quant)
        if quant in ("awq", "awq_marlin"):
            argv += ["--dtype", "half"]
        _flag(argv, "--mem-fraction-static", model.get("mem_fraction"))
        if any(a.startswith("12") for a in cuda_archs) and "--attention-backend" not in extra:
            argv += ["--attention-backend", "flashinfer"]  # fa3/trtllm kernels do not run on sm_120
        argv.append("--sleep-on-idle")
        if model.get("evict") == "sleep":
            # Without the CPU backup, release_memory_occupation discards the weights and resume maps
            # empty memory (0.5.19 model_runner_components/load_model_utils.py:268-287).
            argv += ["--enable-memory-saver", "--enable-weights-cpu-backup"]
    elif backend == "vllm":
        argv = [paths["vllm_bin"], "serve", model["model"], "--served-model-name", served, *listen]
        _flag(argv, "--max-model-len", ctx)
        _flag(argv, "--tensor-parallel-size", tp)
        _flag(argv, "--quantization", quant)
        _flag(argv, "--gpu-memory-utilization", model.get("mem_fraction"))
        if model.get("evict") == "sleep":
            argv.append("--enable-sleep-mode")
        # The engine key on every route, not only /v1 (files/llm_router_engine_auth.py; vllm 0.32.0
        # entrypoints/launchers/cli_args.py:351-356 `--middleware`, 0.19.1 entrypoints/openai/cli_args.py:260).
        argv += ["--middleware", VLLM_AUTH_MIDDLEWARE]
    elif backend == "tabbyapi":
        exl2 = str(model.get("format", "")).lower() == "exl2"
        checkout = paths["tabbyapi_exl2_dir"] if exl2 else paths["tabbyapi_dir"]
        argv = [
            f"{checkout}/venv/bin/python",
            "main.py",
            "--config",
            f"{paths['config_dir']}/tabbyapi/{model['slug']}/config.yml",
        ]
        # TabbyAPI reads api_tokens.yml from its working directory: one key pair per checkout.
        model["api_tokens_file"] = f"{checkout}/api_tokens.yml"
        workdir = checkout
    else:
        raise FilterError(f"backend {backend!r} has no engine command")
    return argv + extra, workdir


def load_mode(model: dict[str, Any], accelerator: str) -> str:
    """llama-server --load-mode: the inventory's, else `mmap` for a model on the CPU (its weights are used where the
    page cache holds them: the fastest cold and warm load in docs/benchmarks.md §8) and `none` for one offloaded to
    GPUs (buffered reads through the page cache, where warming and an earlier load leave the file, into pinned
    buffers uploaded asynchronously; mmap copies from pageable memory instead, and dio bypasses the page cache:
    b11312 src/llama-model-loader.cpp:1527-1700)."""
    if model.get("load_mode"):
        return str(model["load_mode"])
    on_cpu = accelerator != "cuda" or str(model.get("gpu_layers", "all")) == "0"
    return "mmap" if on_cpu else "none"


def _flag_value(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv[:-1]):
        if arg in names:
            return str(argv[index + 1])
    return None


def _slot_dir(argv: list[str]) -> str | None:
    """KV continuity: the directory llama-server saves slots to (its --slot-save-path), if it has one; the router's
    config gets it as the model's slot_dir."""
    return str(argv[argv.index("--slot-save-path") + 1]) if "--slot-save-path" in argv[:-1] else None


# Engines the role gives their own API key (`<config_dir>/engine-keys/<slug>.key`, handed to the unit by systemd
# LoadCredential=; templates/model-start.sh.j2 passes it on). TabbyAPI has its own api_tokens.yml.
KEYED_BACKENDS = ("llamacpp", "sglang", "vllm")
VLLM_AUTH_MIDDLEWARE = "llm_router_engine_auth.RequireKey"


def engine_key_file(config_dir: str, slug: str) -> str:
    """Where the role keeps a local model's engine key (read by the router as the model's api_key_file)."""
    return f"{config_dir}/engine-keys/{slug}.key"


# vLLM refuses to start when free memory < total x gpu_memory_utilization (0.33.0 vllm/v1/worker/utils.py:716-766;
# default 0.9); a sleeping SGLang/vLLM on the same GPUs keeps its CUDA context, graphs and NCCL buffers.
VLLM_SHARED_MEM_FRACTION = 0.8
GPU_BACKENDS = ("sglang", "vllm", "tabbyapi")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _gpu_list(value: Any) -> list[str]:
    """gpus as given ("0,1", 0, [0, 1]) -> ["0", "1"]."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(g).strip() for g in items if str(g).strip()]


def _gpu_set(model: dict[str, Any]) -> set[str] | None:
    """The CUDA_VISIBLE_DEVICES of a model as a set; None means all GPUs."""
    gpus = _gpu_list(model.get("gpus"))
    return set(gpus) if gpus else None


def _shares_gpus(a: dict[str, Any], b: dict[str, Any]) -> bool:
    sa, sb = _gpu_set(a), _gpu_set(b)
    return sa is None or sb is None or bool(sa & sb)


def _vllm_default_mem_fraction(model: dict[str, Any], models: list[dict[str, Any]]) -> float | None:
    """0.8 for a vLLM model that shares GPUs with a model that sleeps (keeps memory); else vLLM's own default."""
    for other in models:
        if other is model or other.get("backend") not in GPU_BACKENDS or other.get("evict") != "sleep":
            continue
        if _shares_gpus(model, other):
            return VLLM_SHARED_MEM_FRACTION
    return None


# Default engine ports: base + crc32(slug) % ENGINE_PORT_SPAN (8100-8999 by default), so a port depends on the
# model's id only and inserting, removing or reordering other models does not move it.
ENGINE_PORT_SPAN = 900


def engine_ports(models: list[dict[str, Any]], base_port: int) -> dict[int, int]:
    """List index -> port for every local model: its explicit `port`, else a stable port from its slug.

    Explicit ports are taken first; then, in slug order, each other model takes base + crc32(slug) % span,
    or the next free port in the span (wrapping) if that is taken, so only models whose slots collide move.
    """
    if not 0 < base_port <= 65536 - ENGINE_PORT_SPAN:
        raise FilterError(f"llm_router_engine_base_port {base_port}: needs {ENGINE_PORT_SPAN} ports up to 65535")
    ports: dict[int, int] = {}
    hashed: list[tuple[str, int]] = []
    for index, model in enumerate(models):
        if not isinstance(model, dict) or model.get("backend") == "openai" or not model.get("id"):
            continue
        if model.get("port"):
            ports[index] = int(model["port"])
        else:
            hashed.append((model_slug(str(model["id"])), index))
    taken = set(ports.values())
    for slug, index in sorted(hashed):
        offset = zlib.crc32(slug.encode()) % ENGINE_PORT_SPAN
        for step in range(ENGINE_PORT_SPAN):
            port = base_port + (offset + step) % ENGINE_PORT_SPAN
            if port not in taken:
                break
        else:
            raise FilterError(f"no free engine port in {base_port}-{base_port + ENGINE_PORT_SPAN - 1}")
        ports[index] = port
        taken.add(port)
    return ports


def engine_venv(model: dict[str, Any], paths: dict[str, str]) -> str:
    """The virtualenv a pip-installed engine runs from (its bin/ holds ninja, python and the engine's CLI)."""
    backend = model["backend"]
    if backend == "tabbyapi":
        return f"{model['workdir']}/venv"
    return paths.get(f"{backend}_venv", f"{paths.get('base_dir', '/opt/llm-router')}/engines/{backend}/venv")


# The driver's JIT cache for PTX (vLLM's FlashAttention-2 ships only sm_80 SASS + compute_80 PTX, so sm_120 runs it
# JIT-compiled: vllm 0.19.1/0.32.0 vllm_flash_attn/_vllm_fa2_C.abi3.so fatbin; engine-audit-2 #10). The default cap
# (256 MiB) would evict and recompile kernels at every start; 4 GiB keeps them under HOME.
CUDA_JIT_CACHE_BYTES = "4294967296"


def _gpu_engine_env(
    model: dict[str, Any], env: dict[str, str], paths: dict[str, str], cuda_archs: list[str], cuda_home: str
) -> dict[str, str]:
    """PATH, CUDA_HOME and the JIT cache size of a GPU engine; values the inventory set in `env` win.

    PATH: the engine's venv/bin first. FlashInfer's JIT runs `ninja` by name (flashinfer 0.6.7.post3
    jit/cpp_ext.py:318, 0.7.2 :419) and pip puts ninja in the venv's bin/, which systemd's PATH lacks
    (engine-audit-2 #2); then the toolkit's bin/ for nvcc (Triton/FlashInfer look up CUDA_HOME and nvcc).
    systemd's EnvironmentFile does not expand $PATH, so it is written out.
    """
    out: dict[str, str] = {}
    bins = [f"{engine_venv(model, paths)}/bin"] + ([f"{cuda_home}/bin"] if cuda_home else [])
    if "PATH" not in env:
        out["PATH"] = ":".join([*bins, SYSTEM_PATH])
    if cuda_home and "CUDA_HOME" not in env:
        out["CUDA_HOME"] = cuda_home
    if any(arch.startswith("12") for arch in cuda_archs) and "CUDA_CACHE_MAXSIZE" not in env:
        out["CUDA_CACHE_MAXSIZE"] = CUDA_JIT_CACHE_BYTES
    return out


def normalize_models(
    models: list[dict[str, Any]],
    base_port: int = 8100,
    paths: dict[str, str] | None = None,
    cuda_archs: list[str] | None = None,
    accelerator: str = "cuda",
    cuda_home: str = "",
) -> list[dict[str, Any]]:
    """Validate inventory models and add what the templates need: slug, port, unit, argv, env, workdir.

    cuda_home: the CUDA toolkit, exported as CUDA_HOME (and its bin/ on PATH after the engine's venv) to the GPU
    engines so Triton/FlashInfer JIT find nvcc; empty when the host has no toolkit.
    """
    paths = paths or {}
    cuda_archs = cuda_archs or []
    used_ports: dict[int, str] = {}
    default_ports = engine_ports(models, base_port)
    seen: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for index, source in enumerate(models):
        model = dict(source)
        where = f"llm_router_models[{index}]"
        for key in ("id", "backend"):
            if not model.get(key):
                raise FilterError(f"{where}: '{key}' is required")
        if model["backend"] not in BACKENDS:
            raise FilterError(f"{where} ({model['id']}): backend {model['backend']!r}; allowed: {', '.join(BACKENDS)}")
        model["slug"] = model_slug(model["id"])
        for name in [model["id"], model["slug"], *model.get("aliases", [])]:
            if name in seen and seen[name] != model["id"]:
                raise FilterError(f"{where}: name {name!r} clashes with model {seen[name]!r}")
            seen[name] = model["id"]
        if model.get("gpus") is not None:
            model["gpus"] = ",".join(_gpu_list(model["gpus"]))  # "0,1", 0 and [0, 1] alike
        model.setdefault("served_name", model["id"])
        model.setdefault("evict", "stop")
        model.setdefault("group", "default")
        model.setdefault("env", {})
        if model["backend"] == "openai":
            if not model.get("url"):
                raise FilterError(f"{where} ({model['id']}): backend openai needs 'url'")
            out.append(model)
            continue
        if not model.get("model"):
            raise FilterError(f"{where} ({model['id']}): 'model' (path or name of the weights) is required")
        # A directory given as /srv/x/ would give TabbyAPI an empty model_name (basename ''; engine-audit-2 #12).
        model["model"] = str(model["model"]).rstrip("/") or "/"
        port = default_ports[index]
        if port in used_ports:
            raise FilterError(f"{where} ({model['id']}): port {port} is already used by {used_ports[port]!r}")
        used_ports[port] = model["id"]
        model["port"] = port
        model["unit"] = f"llm-model@{model['slug']}.service"
        if model["backend"] == "vllm" and model.get("mem_fraction") is None:
            fraction = _vllm_default_mem_fraction(source, models)
            if fraction is not None:
                model["mem_fraction"] = fraction
        model["argv"], model["workdir"] = _engine_command(model, port, paths, cuda_archs, accelerator)
        if model["backend"] == "llamacpp" and model.get("kv_continuity", True) and _slot_dir(model["argv"]):
            model["slot_dir"] = _slot_dir(model["argv"])
        if model["backend"] == "llamacpp" and _flag_value(model["argv"], "--load-mode", "-lm") == "dio":
            model["page_cache"] = False  # O_DIRECT reads past the page cache: warming it would only cost I/O
        env = {str(k): str(v) for k, v in model["env"].items()}
        if model.get("gpus") is not None and accelerator == "cuda":
            env.setdefault("CUDA_VISIBLE_DEVICES", str(model["gpus"]))
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # indices as nvidia-smi/NVML number them
        if model["backend"] == "vllm" and model["evict"] == "sleep":
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")
        if model["backend"] == "vllm":
            # vLLM reports usage to stats.vllm.ai unless told not to (0.32.0 usage/usage_lib.py:50-68, envs.py:36).
            env.setdefault("VLLM_NO_USAGE_STATS", "1")
            env.setdefault("DO_NOT_TRACK", "1")
        if model["backend"] in KEYED_BACKENDS:
            model["api_key_file"] = engine_key_file(paths.get("config_dir", "/etc/llm-router"), model["slug"])
        if model["backend"] == "vllm":
            lib = f"{paths.get('base_dir', '/opt/llm-router')}/lib/python"  # the --middleware module
            env["PYTHONPATH"] = f"{lib}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else lib
        if model["backend"] in GPU_BACKENDS and accelerator == "cuda":
            env.update(_gpu_engine_env(model, env, paths, cuda_archs, cuda_home))
        model["env"] = env
        out.append(model)
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_slug": model_slug,
            "llm_router_normalize_models": normalize_models,
        }
