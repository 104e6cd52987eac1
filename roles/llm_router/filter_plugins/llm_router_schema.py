"""The schema of an llm_router_models entry and the checks preflight runs on it before touching the host:
unknown keys, options a backend cannot honour, GPUs vs tensor parallel, where weights may live.
Pure Python, unit-tested in tests/unit/test_role_filters.py."""

from __future__ import annotations

import difflib
import re
from typing import Any

BACKENDS = ("llamacpp", "sglang", "tabbyapi", "vllm", "openai")  # as in llm_router_models.py
LOCAL_BACKENDS = ("llamacpp", "sglang", "tabbyapi", "vllm")
ALL = BACKENDS
# Every key of an llm_router_models entry and the backends that honour it; meta/argument_specs.yml
# describes the same keys (tests/unit/test_role_filters.py keeps the two in step).
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "id": ALL,
    "backend": ALL,
    "aliases": ALL,
    "description": ALL,
    "served_name": ALL,
    "group": ALL,
    "evict": ALL,
    "load_timeout_s": ALL,
    "health_path": ALL,
    "context_length": ALL,
    "memory": ALL,
    "sleep_memory": ("sglang", "vllm", "tabbyapi"),
    "pinned": ALL,
    "preload": ALL,
    "ttl_s": ALL,
    "on_abandon": ALL,
    "defaults": ALL,
    "overrides": ALL,
    "strip": ALL,
    "url": ("openai",),
    "api_key_file": ("openai",),
    "model": LOCAL_BACKENDS,
    "source": LOCAL_BACKENDS,
    "checksum": LOCAL_BACKENDS,
    "format": LOCAL_BACKENDS,
    "port": LOCAL_BACKENDS,
    "extra_args": LOCAL_BACKENDS,
    "env": LOCAL_BACKENDS,
    "parallel": LOCAL_BACKENDS,
    "gpus": LOCAL_BACKENDS,
    "quantization": ("sglang", "vllm"),
    "mem_fraction": ("sglang", "vllm"),
    "tensor_parallel": ("sglang", "vllm", "tabbyapi"),
    "gpu_split": ("llamacpp", "tabbyapi"),
    "gpu_layers": ("llamacpp",),
    "kv_continuity": ("llamacpp",),
    "load_mode": ("llamacpp",),
    "cache_mode": ("tabbyapi",),
    "cache_size": ("tabbyapi",),
    "tabby_model_name": ("tabbyapi",),
}
GPU_KEYS = ("gpus", "tensor_parallel", "gpu_split", "gpu_layers")
# llama-server --load-mode values (b11312 common/arg.cpp:2691-2707).
LOAD_MODES = ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")
FORMATS = {"llamacpp": ("gguf",), "tabbyapi": ("exl2", "exl3")}
# The model unit's ProtectHome=yes hides these, PrivateTmp=yes gives it its own /tmp and /var/tmp
# (templates/llm-model@.service.j2): weights there are invisible to the engine.
HIDDEN_DIRS = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
}
# Flags that spread a model over more GPUs than its tensor-parallel size (vLLM, SGLang).
_OTHER_PARALLEL_FLAGS = ("--pipeline-parallel-size", "--pp-size", "--pp", "--data-parallel-size", "--dp-size", "--dp")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _gpu_list(value: Any) -> list[str]:
    """gpus as given ("0,1", 0, [0, 1]) -> ["0", "1"]."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(g).strip() for g in items if str(g).strip()]


def _hidden_by_unit(path: str) -> str:
    """The unit setting that hides `path` from the engine, or ''."""
    for root, setting in HIDDEN_DIRS.items():
        if path == root or path.startswith(root + "/"):
            return f"{root} ({setting} in llm-model@.service)"
    return ""


def weights_location(model: dict[str, Any]) -> str:
    """How a model's weights reach the engine: 'remote' (openai), 'fetched' (source:), 'hub' (a Hugging Face
    name that vLLM/SGLang download at start) or 'local' (a path that must exist on the host)."""
    if model.get("backend") == "openai":
        return "remote"
    if model.get("source"):
        return "fetched"
    path = str(model.get("model") or "")
    if model.get("backend") in ("sglang", "vllm") and not path.startswith("/"):
        return "hub"
    return "local"


def model_errors(models: Any, accelerator: str = "cuda", gpu_count: int = 0, gpus_known: bool = False) -> list[str]:
    """Everything wrong with llm_router_models, one message per problem naming the model, the key and the fix.

    gpu_count: GPUs found (nvidia-smi lines, or the length of llm_router_gpu_compute_capabilities);
    gpus_known: whether that count is reliable enough to check GPU indices against it.
    """
    if not isinstance(models, list):
        return [f"llm_router_models must be a list of model entries, not {type(models).__name__}."]
    errors: list[str] = []
    for index, model in enumerate(models):
        where = f"llm_router_models[{index}]"
        if not isinstance(model, dict):
            errors.append(f"{where}: each model is a mapping with id, backend, ...; got {model!r}.")
            continue
        name = f"model {model['id']!r}" if model.get("id") else where
        backend = model.get("backend")
        unknown = sorted(str(k) for k in model if k not in MODEL_KEYS)
        for key in unknown:
            close = [k for k in MODEL_KEYS if _similar(str(key), k)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(
                f"{name}: unknown key {key!r}{hint}. Fix: remove or rename it; model keys are "
                f"{', '.join(sorted(MODEL_KEYS))}."
            )
        if not model.get("id"):
            errors.append(f"{where}: 'id' is required (the name clients send as \"model\").")
        if backend not in BACKENDS:
            errors.append(f"{name}: backend {backend!r}; set 'backend' to one of {', '.join(BACKENDS)}.")
            continue
        for key in sorted(model):
            allowed = MODEL_KEYS.get(str(key))
            if allowed is not None and backend not in allowed and model[key] is not None:
                errors.append(
                    f"{name}: {key!r} has no effect on backend {backend} (only {', '.join(allowed)}). Fix: remove it."
                )
        if model.get("evict", "stop") not in ("stop", "sleep"):
            errors.append(f"{name}: evict {model['evict']!r}; set 'evict' to stop or sleep.")
        elif model.get("evict") == "sleep" and backend in ("llamacpp", "openai"):
            why = "llama.cpp has no sleep endpoint" if backend == "llamacpp" else "a remote endpoint has no lifecycle"
            errors.append(f"{name}: evict 'sleep' on backend {backend}: {why}. Fix: evict: stop (or remove it).")
        fmt = str(model.get("format") or "").lower()
        if fmt and backend in FORMATS and fmt not in FORMATS[backend]:
            errors.append(
                f"{name}: format {model['format']!r} cannot be served by {backend} (it serves "
                f"{' or '.join(FORMATS[backend])}). Fix: pick the backend for this format or correct 'format'."
            )
        if model.get("checksum") and not str(model.get("source") or "").startswith(("http://", "https://", "ftp://")):
            errors.append(f"{name}: 'checksum' verifies a download: it needs a URL in 'source'. Fix: remove it.")
        if backend == "tabbyapi":
            errors += _tabby_cache_errors(name, model, fmt)
        if model.get("load_mode") is not None and model["load_mode"] not in LOAD_MODES:
            errors.append(
                f"{name}: load_mode {model['load_mode']!r}; llama-server takes {', '.join(LOAD_MODES)}. "
                "Fix: one of these, or remove it (mmap on CPU, none with GPU offload)."
            )
        if backend != "openai":
            errors += _weights_errors(name, model)
            if accelerator == "cpu":
                for key in GPU_KEYS:
                    if model.get(key) is not None:
                        errors.append(
                            f"{name}: {key!r} on a CPU host (llm_router_accelerator: cpu) has no GPU to use. "
                            "Fix: remove it."
                        )
            else:
                errors += _gpu_errors(name, model, gpu_count, gpus_known)
    return errors


# TabbyAPI's cache settings (tabbyAPI@e632af4 common/config_models.py:194-211; the same at 79126f9): cache_mode is
# FP16/Q8/Q6/Q4 or "k,v" bits 2-8, cache_size a multiple of 256; anything else stops TabbyAPI at start-up.
TABBY_CACHE_MODE = re.compile(r"^(FP16|Q8|Q6|Q4|[2-8]\s*,\s*[2-8])$")


def _tabby_cache_errors(name: str, model: dict[str, Any], fmt: str) -> list[str]:
    errors: list[str] = []
    mode, size, ctx = model.get("cache_mode"), model.get("cache_size"), model.get("context_length")
    if mode is not None and not TABBY_CACHE_MODE.fullmatch(str(mode)):
        errors.append(f'{name}: cache_mode {mode!r}; TabbyAPI takes FP16, Q8, Q6, Q4 or "k,v" bits 2-8 ("8,6").')
    elif mode is not None and "," in str(mode) and fmt == "exl2":
        # exllamav2 warns and uses FP16 for a k,v pair (tabbyAPI@79126f9 backends/exllamav2/model.py:186-193).
        errors.append(f"{name}: cache_mode {mode!r} is EXL3-only; exllamav2 would use FP16. Fix: Q8, Q6 or Q4.")
    if size is not None and (not _is_number(size) or int(size) != size or int(size) % 256 or int(size) <= 0):
        errors.append(f"{name}: cache_size {size!r} must be a positive multiple of 256 tokens (TabbyAPI refuses it).")
    elif size is not None and _is_number(ctx) and ctx > size:
        # The backend lowers max_seq_len to cache_size (tabbyAPI@e632af4 backends/exllamav3/model.py:347-352).
        errors.append(f"{name}: context_length {ctx} exceeds cache_size {size}; TabbyAPI would cut it to {size}.")
    return errors


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a.lower(), b).ratio() >= 0.8


def _weights_errors(name: str, model: dict[str, Any]) -> list[str]:
    path = str(model.get("model") or "")
    if not path:
        return [f"{name}: 'model' is required: the path of the weights on the host (or a hub name for vLLM/SGLang)."]
    location = weights_location(model)
    if location == "hub":
        if not HUB_NAME.fullmatch(path):
            return [
                f"{name}: model {path!r} is neither an absolute path nor a Hugging Face name like org/name. "
                "Fix: give the absolute path of the weights on the host."
            ]
        return []
    if not path.startswith("/"):
        return [f"{name}: model {path!r} must be an absolute path on the host (e.g. /srv/llm-models/...)."]
    hidden = _hidden_by_unit(path)
    if hidden:
        return [
            f"{name}: weights {path} are under {hidden}, which the engine cannot see. "
            "Fix: move them under llm_router_models_dir (/srv/llm-models by default), /srv, /opt or /mnt."
        ]
    return []


def _gpu_errors(name: str, model: dict[str, Any], gpu_count: int, gpus_known: bool) -> list[str]:
    errors: list[str] = []
    backend = model["backend"]
    gpus = _gpu_list(model.get("gpus"))
    if model.get("gpus") is not None and not gpus:
        errors.append(f"{name}: 'gpus' is empty. Fix: list GPU indices such as \"0,1\", or remove it to use all GPUs.")
    if len(set(gpus)) != len(gpus):
        errors.append(f"{name}: gpus {model['gpus']!r} lists a GPU twice. Fix: list each index once.")
    indices = [g for g in gpus if not g.startswith(("GPU-", "MIG-"))]  # UUIDs pass through
    bad = [g for g in indices if not g.isdigit()]
    if bad:
        errors.append(f"{name}: gpus {model['gpus']!r}: {', '.join(bad)} is not a GPU index (0, 1, ...) or UUID.")
    elif gpus_known:
        beyond = [g for g in indices if int(g) >= gpu_count]
        if beyond:
            errors.append(
                f"{name}: gpus {model['gpus']!r} names GPU {', '.join(beyond)}, but this host has {gpu_count} GPU(s) "
                f"(indices 0..{gpu_count - 1}; nvidia-smi, or one entry per GPU in "
                "llm_router_gpu_compute_capabilities). Fix: use indices that exist."
            )
    visible = len(gpus) if gpus else (gpu_count if gpus_known else 0)
    tp = model.get("tensor_parallel")
    if tp is not None and backend in ("sglang", "vllm"):
        if isinstance(tp, bool) or not str(tp).isdigit() or int(tp) < 1:
            errors.append(f"{name}: tensor_parallel {tp!r} must be a whole number of GPUs (1, 2, 4, ...).")
        elif visible:
            extra = [str(a).split("=")[0] for a in model.get("extra_args") or []]
            spread = any(flag in extra for flag in _OTHER_PARALLEL_FLAGS)
            where = f"gpus {model['gpus']!r}" if gpus else "this host"
            if int(tp) > visible:
                errors.append(
                    f"{name}: tensor_parallel {tp} needs {tp} GPUs but {where} has {visible}. "
                    f"Fix: list {tp} GPUs in 'gpus' or lower tensor_parallel."
                )
            elif int(tp) < visible and gpus and not spread:
                errors.append(
                    f"{name}: tensor_parallel {tp} uses {tp} GPU(s) but gpus {model['gpus']!r} reserves {visible}. "
                    f"Fix: set tensor_parallel: {visible}, or list only {tp} GPU(s) in 'gpus'."
                )
    split = model.get("gpu_split")
    if split is not None:
        if not isinstance(split, (list, tuple)) or not all(_is_number(s) for s in split):
            errors.append(f"{name}: gpu_split {split!r} must be a list of numbers, one per GPU.")
        elif visible and len(split) > visible:
            errors.append(
                f"{name}: gpu_split has {len(split)} entries but the model sees {visible} GPU(s). "
                "Fix: one entry per GPU in 'gpus'."
            )
    return errors


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def local_weights(models: list[dict[str, Any]], fetched: bool = False) -> list[dict[str, str]]:
    """[{id, path}] of the models whose weights must already be on the host (not a hub name, not remote;
    the ones fetched by source: only with fetched=True, i.e. after the role fetched them)."""
    kinds = ("local", "fetched") if fetched else ("local",)
    return [
        {"id": str(m["id"]), "path": str(m["model"])}
        for m in models
        if isinstance(m, dict) and weights_location(m) in kinds and m.get("model")
    ]


def weights_errors(stat_results: list[dict[str, Any]]) -> list[str]:
    """Messages for models whose weights are missing (results of the stat loop over local_weights)."""
    errors = []
    for result in stat_results:
        item = result.get("item") or {}
        if result.get("skipped") or "stat" not in result:
            continue
        name, path = f"model {item.get('id')!r}", item.get("path")
        if not result["stat"].get("exists"):
            errors.append(
                f"{name}: weights {path} not found on this host. Fix: copy them there (see docs/provisioning.md "
                "'Where weights live'), set 'source' to fetch a single file, or correct 'model'."
            )
    return errors


def access_errors(access_results: list[dict[str, Any]], engine_user: str) -> list[str]:
    """Messages for models whose weights the engine user cannot read (results of the `test -r` loop)."""
    errors = []
    for result in access_results:
        if result.get("skipped") or "rc" not in result:
            continue
        if result["rc"] != 0:
            item = result.get("item") or {}
            errors.append(
                f"model {item.get('id')!r}: weights {item.get('path')} are not readable by the engine user "
                f"{engine_user} (every parent directory needs x for it, the file or directory r). Fix: e.g. "
                f"chgrp -R {engine_user} and chmod -R g+rX, or move them under llm_router_models_dir."
            )
    return errors


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_model_errors": model_errors,
            "llm_router_local_weights": local_weights,
            "llm_router_weights_errors": weights_errors,
            "llm_router_access_errors": access_errors,
        }
