"""Filters that turn the inventory's model list into engine command lines, unit names and the
router's config.yml (the contract in docs/config.md). Kept in Python so the logic is testable
(tests/unit/test_role_filters.py) instead of living in long Jinja expressions."""

from __future__ import annotations

import re
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


def cuda_architectures(compute_capabilities: list[Any]) -> list[str]:
    """nvidia-smi compute_cap values -> CMAKE_CUDA_ARCHITECTURES entries: 9.0 -> 90, 12.0 -> 120a.

    Blackwell consumer/workstation parts (12.x) need the arch-specific 'a' variant for their FP4
    tensor cores; ggml rewrites 12X to 12Xa itself, the role says so explicitly.
    """
    archs: list[str] = []
    for value in compute_capabilities:
        text = str(value).strip()
        match = re.fullmatch(r"(\d+)\.(\d+)", text)
        if not match:
            raise FilterError(f"compute capability {text!r} is not like '9.0' or '12.0'")
        major, minor = int(match.group(1)), int(match.group(2))
        arch = f"{major}{minor}" + ("a" if major >= 12 else "")
        if arch not in archs:
            archs.append(arch)
    return archs


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
            argv.append("--enable-memory-saver")
    elif backend == "vllm":
        argv = [paths["vllm_bin"], "serve", model["model"], "--served-model-name", served, *listen]
        _flag(argv, "--max-model-len", ctx)
        _flag(argv, "--tensor-parallel-size", tp)
        _flag(argv, "--quantization", quant)
        _flag(argv, "--gpu-memory-utilization", model.get("mem_fraction"))
        if model.get("evict") == "sleep":
            argv.append("--enable-sleep-mode")
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


def normalize_models(
    models: list[dict[str, Any]],
    base_port: int = 8100,
    paths: dict[str, str] | None = None,
    cuda_archs: list[str] | None = None,
    accelerator: str = "cuda",
) -> list[dict[str, Any]]:
    """Validate inventory models and add what the templates need: slug, port, unit, argv, env, workdir."""
    paths = paths or {}
    cuda_archs = cuda_archs or []
    used_ports: dict[int, str] = {}
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
        port = int(model.get("port") or base_port + index)
        if port in used_ports:
            raise FilterError(f"{where} ({model['id']}): port {port} is already used by {used_ports[port]!r}")
        used_ports[port] = model["id"]
        model["port"] = port
        model["unit"] = f"llm-model@{model['slug']}.service"
        model["argv"], model["workdir"] = _engine_command(model, port, paths, cuda_archs, accelerator)
        env = {str(k): str(v) for k, v in model["env"].items()}
        if model.get("gpus") is not None and accelerator == "cuda":
            env.setdefault("CUDA_VISIBLE_DEVICES", str(model["gpus"]))
        if model["backend"] == "vllm" and model["evict"] == "sleep":
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")
        model["env"] = env
        out.append(model)
    return out


def router_config(models: list[dict[str, Any]], settings: dict[str, Any], config_dir: str) -> dict[str, Any]:
    """The router's config.yml (docs/config.md) for normalized models."""
    entries = []
    for model in models:
        entry: dict[str, Any] = {"id": model["id"], "backend": model["backend"]}
        if model.get("aliases"):
            entry["aliases"] = list(model["aliases"])
        if model.get("description"):
            entry["description"] = model["description"]
        if model["served_name"] != model["id"]:
            entry["served_name"] = model["served_name"]
        if model["group"] != "default":
            entry["group"] = model["group"]
        if model["evict"] != "stop":
            entry["evict"] = model["evict"]
        for key in ("load_timeout_s", "health_path"):
            if model.get(key) is not None:
                entry[key] = model[key]
        if model["backend"] == "openai":
            entry["url"] = model["url"]
            if model.get("api_key_file"):
                entry["api_key_file"] = model["api_key_file"]
        else:
            entry["port"] = model["port"]
            entry["unit"] = model["unit"]
            if model["backend"] == "tabbyapi":
                entry["api_tokens_file"] = model["api_tokens_file"]
                entry["tabby_model_name"] = model.get(
                    "tabby_model_name", str(model["model"]).rstrip("/").split("/")[-1]
                )
        entries.append(entry)
    return {"router": dict(settings), "models": entries}


def sudoers_commands(models: list[dict[str, Any]], systemctl: str = "/usr/bin/systemctl") -> list[str]:
    """Exact command lines the router may run as root: start/stop of its own model units, nothing else."""
    commands = []
    for model in models:
        if model.get("unit"):
            commands += [f"{systemctl} start {model['unit']}", f"{systemctl} stop {model['unit']}"]
    return commands


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_slug": model_slug,
            "llm_router_cuda_architectures": cuda_architectures,
            "llm_router_normalize_models": normalize_models,
            "llm_router_config": router_config,
            "llm_router_sudoers_commands": sudoers_commands,
        }
