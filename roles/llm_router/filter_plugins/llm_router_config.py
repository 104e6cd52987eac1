"""Filters for what the router is given: its config.yml (the contract in docs/config.md) from the normalized
models, with a revision per local model, and the sudoers command lines for its model units. Pure Python,
unit-tested in tests/unit/test_role_filters.py."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Inventory model keys the router's config takes as they are (docs/config.md).
ROUTER_MODEL_KEYS = (
    "load_timeout_s",
    "health_path",
    "context_length",
    "mem_fraction",
    "parallel",
    "memory",
    "sleep_memory",
    "pinned",
    "preload",
    "ttl_s",
    "on_abandon",
    "defaults",
    "overrides",
    "strip",
)


# The TabbyAPI config.yml inputs (templates/tabbyapi-config.yml.j2) besides argv/env/workdir.
TABBY_CONFIG_KEYS = ("port", "model", "context_length", "cache_size", "tensor_parallel", "gpu_split", "cache_mode")


def engine_key(model: dict[str, Any]) -> str:
    """Which installed engine runs a model: llamacpp, sglang, vllm, tabbyapi or tabbyapi_exl2 (EXL2 checkout)."""
    if model["backend"] == "tabbyapi" and str(model.get("format", "")).lower() == "exl2":
        return "tabbyapi_exl2"
    return str(model["backend"])


def model_revision(model: dict[str, Any], engine_ids: dict[str, str]) -> str:
    """A short hash of everything that shapes a local model's running engine (sha256, 16 hex).

    argv, env, working directory, the TabbyAPI config inputs and the install identity of its engine
    (llama.cpp build id, pip engine install id, which includes the TabbyAPI commit). It is the model's
    `revision` in config.yml: when it changes, a config reload drains and restarts that model alone.
    """
    tabby = {k: model.get(k) for k in TABBY_CONFIG_KEYS} if model["backend"] == "tabbyapi" else None
    identity = {
        "argv": [str(a) for a in model.get("argv", [])],
        "env": {str(k): str(v) for k, v in (model.get("env") or {}).items()},
        "workdir": str(model.get("workdir", "")),
        "tabbyapi": tabby,
        "engine": str(engine_ids.get(engine_key(model), "")),
        "api_key_file": str(model.get("api_key_file") or ""),  # the path only, never the key
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def router_config(
    models: list[dict[str, Any]],
    settings: dict[str, Any],
    config_dir: str,
    engine_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The router's config.yml (docs/config.md) for normalized models.

    engine_ids: engine (engine_key) -> install identity; given, each local model gets a `revision`.
    """
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
        for key in ROUTER_MODEL_KEYS:
            if model.get(key) is not None:
                entry[key] = model[key]
        if model["backend"] == "openai":
            entry["url"] = model["url"]
            if model.get("api_key_file"):
                entry["api_key_file"] = model["api_key_file"]
        else:
            entry["port"] = model["port"]
            entry["unit"] = model["unit"]
            if model.get("api_key_file"):
                entry["api_key_file"] = model["api_key_file"]
            if engine_ids is not None:
                entry["revision"] = model_revision(model, engine_ids)
            if model.get("gpus") not in (None, ""):
                # Which GPUs it occupies, for memory-aware placement (NVML indices; CUDA_DEVICE_ORDER=PCI_BUS_ID).
                entry["devices"] = [g.strip() for g in str(model["gpus"]).split(",") if g.strip()]
            if model.get("slot_dir"):
                entry["slot_dir"] = model["slot_dir"]
            if model.get("page_cache") is False:
                entry["page_cache"] = False
            if model.get("model") and not str(model["model"]).startswith(("http://", "https://")):
                entry["weights"] = str(model["model"])  # the estimate before the first load reads it
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
            "llm_router_config": router_config,
            "llm_router_sudoers_commands": sudoers_commands,
        }
