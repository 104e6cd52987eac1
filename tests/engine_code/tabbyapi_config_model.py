"""TabbyAPI's config.yml sections and keys at the two commits the role installs, and a check of a loaded config.yml.

Written by this project from reading TabbyAPI's source (theroyallab/tabbyAPI, AGPL-3.0; none of its code is copied
here): `common/config_models.py` for the keys and their pydantic types, `common/tabby_config.py` and
`common/utils.py` for how the file is loaded. Citations are file:line at the commit named.

TabbyAPI loads config.yml with ruamel.yaml (YAML 1.2, tabby_config.py:16,67), drops every null value
(tabby_config.py:39, utils.py:22-30), then validates with `TabbyConfigModel.model_validate` (tabby_config.py:43).
Its models keep pydantic's default extra='ignore', so an unknown section or key, a typo included, loads silently
and has no effect. `check` reports those, nulls and legacy keys besides what pydantic rejects. Types are checked
with pydantic in lax mode, as TabbyAPI's models validate them: "5000" is a valid port there, 5.5 is not.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, TypeAdapter, ValidationError

# roles/llm_router/defaults/main.yml: llm_router_tabbyapi_version (EXL3 models, checkout tabbyapi/main) and
# llm_router_tabbyapi_exl2_version (EXL2 models, checkout tabbyapi/exl2, branch exl2-checkpoint).
MAIN = "e632af41eba68abeadc3437c62674360f2f8cbf1"
EXL2 = "79126f904c2e00aece026b36bb70bbb87e4892b2"
COMMITS = (MAIN, EXL2)
MODELS_PY = "common/config_models.py"

# config_models.py:12-13 at both commits: the legacy sizes, or a k_bits,v_bits pair.
CACHE_PAIR = r"^[2-8]\s*,\s*[2-8]$"
CacheSize = Literal["FP16", "Q8", "Q6", "Q4"]
CacheMode = CacheSize | Annotated[str, StringConstraints(pattern=CACHE_PAIR)]


def _api_server_names(value: Any) -> Any:
    """NetworkConfig's before-validator: `.lower()` on each entry (config_models.py:87-89 main, :78-80 exl2).

    As there, any iterable passes it ("OAI" becomes ["o", "a", "i"]); TabbyAPI crashes on a non-string entry.
    """
    try:
        return [name.lower() for name in value]
    except (AttributeError, TypeError):
        raise ValueError("must be a list of names (OAI, Kobold); TabbyAPI calls .lower() on each entry") from None


Bool = bool | None
Int = int | None
Float = float | None
Str = str | None
Floats = list[float]
Strs = list[str]


@dataclass(frozen=True)
class Entries:
    """A list of nested mappings (lora.loras: LoraInstanceModel), each key checked like a section's."""

    keys: Mapping[str, Any]


@dataclass(frozen=True)
class Section:
    where: str  # common/config_models.py:<lines> at the commit
    keys: Mapping[str, Any] = field(default_factory=dict)  # key -> the type pydantic validates it as


# Keys both commits define, with the same type. Section lines differ: see _LINES.
_SHARED: dict[str, dict[str, Any]] = {
    "config": {"config": Str},  # ConfigOverrideConfig; the file may set it, only --config acts on it
    "network": {
        "host": Str,
        "port": Int,
        "disable_auth": Bool,
        "disable_fetch_requests": Bool,
        "send_tracebacks": Bool,
        "api_servers": Annotated[list[Literal["oai", "kobold"]] | None, BeforeValidator(_api_server_names)],
    },
    "logging": {
        "log_prompt": Bool,
        "log_generation_params": Bool,
        "log_requests": Bool,
        "log_chat_completion_requests": Bool,
    },
    "model": {
        "model_dir": str,
        "inline_model_loading": Bool,
        "use_dummy_models": Bool,
        "dummy_model_names": Strs,
        "model_name": Str,
        "use_as_default": Strs,
        "backend": Str,
        "max_seq_len": Annotated[int, Field(ge=-1)] | None,
        "cache_size": Annotated[int, Field(gt=0, multiple_of=256)] | None,
        "cache_mode": CacheMode | None,
        "tensor_parallel": Bool,
        "tensor_parallel_backend": Str,
        "gpu_split_auto": Bool,
        "autosplit_reserve": Floats,
        "gpu_split": Floats,
        "rope_scale": Float,
        "rope_alpha": float | Literal["auto"] | None,
        "chunk_size": Annotated[int, Field(gt=0)] | None,
        "output_chunking": Bool,
        "max_batch_size": Annotated[int, Field(ge=1)] | None,
        "prompt_template": Str,
        "vision": Bool,
        "force_enable_thinking": bool,
        "reasoning": bool,
        "reasoning_start_token": str,
        "reasoning_end_token": str,
        "tool_format": Str,
    },
    "draft_model": {
        "draft_mode": Literal["model", "disabled", "mtp", "ngram"] | None,
        "draft_model_dir": Str,
        "draft_model_name": Str,
        "draft_rope_scale": Float,
        "draft_rope_alpha": Float,
        "draft_cache_mode": CacheSize | None,
        "draft_gpu_split": Floats,
        "draft_num_tokens": Int,
        "ngram_match_min": Int,
    },
    "sampling": {"override_preset": Str},
    "lora": {
        "lora_dir": Str,
        "loras": Entries({"name": Str, "scaling": Annotated[float, Field(ge=0)]}),
    },
    "embeddings": {
        "embedding_model_dir": Str,
        "embeddings_device": Literal["cpu", "auto", "cuda"] | None,
        "embedding_model_name": Str,
    },
    "memory": {"sysmem_recurrent_cache": Int, "cuda_malloc_async": Bool},
    "developer": {
        "unsafe_launch": Bool,
        "disable_request_streaming": Bool,
        "realtime_process_priority": Bool,
        "seqlog": Bool,
        "seqlog_server_url": Str,
        "seqlog_api_key": Str,
    },
}

# What one commit has and the other lacks (the rest of both files differs only in descriptions).
_ONLY: dict[str, dict[str, dict[str, Any]]] = {
    MAIN: {
        "network": {"sse_ping_interval": Annotated[int, Field(ge=0)] | None},  # :75-83
        "model": {
            "cpu_moe_offload_layers": Int,  # :250-256
            "template_vars_default": dict,  # :320-328
            "template_vars_force": dict,  # :329-335
            "start_in_reasoning": str,  # :355-363 (auto, always, never: checked at use, not here)
            "tool_calls_in_reasoning": bool,  # :364-371
            "reasoning_budget_tokens": Int,  # :372-386
            "reasoning_budget_message": Str,  # :387-394
            "harmony": Bool,  # :402-411
            "muse_glimmer": Bool,  # :412-421
        },
        "draft_model": {"dynamic_draft": Bool},  # :492-498
        "memory": {"sysmem_kv_cache": Int},  # :585-588
    },
    EXL2: {
        "model": {"reasoning_suppress_header": str},  # :327-333
    },
}

# Section classes in config_models.py (TabbyConfigModel's field -> class lines); TabbyConfigModel itself is at
# :636-670 (main) and :544-578 (exl2), and lora.loras entries are LoraInstanceModel (:525-529 main, :437-441 exl2).
_LINES: dict[str, dict[str, str]] = {
    MAIN: {
        "config": "28-34",
        "network": "37-89",
        "logging": "94-121",
        "model": "124-424",
        "draft_model": "427-505",
        "sampling": "508-522",
        "lora": "532-548",
        "embeddings": "551-575",
        "memory": "578-597",
        "developer": "600-633",
    },
    EXL2: {
        "config": "28-34",
        "network": "37-80",
        "logging": "85-110",
        "model": "113-343",
        "draft_model": "346-417",
        "sampling": "420-434",
        "lora": "444-460",
        "embeddings": "463-487",
        "memory": "490-505",
        "developer": "508-541",
    },
}

SCHEMAS: dict[str, dict[str, Section]] = {
    commit: {
        name: Section(f"{MODELS_PY}:{_LINES[commit][name]}@{commit[:7]}", {**keys, **_ONLY[commit].get(name, {})})
        for name, keys in _SHARED.items()
    }
    for commit in COMMITS
}

# Values whose text must not reach an error message.
SECRET_KEYS = frozenset({"developer.seqlog_api_key"})


_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    # Keyed by id: Annotated[..., Field()] is not hashable; the annotations live as long as this module.
    if id(annotation) not in _ADAPTERS:
        _ADAPTERS[id(annotation)] = TypeAdapter(annotation)
    return _ADAPTERS[id(annotation)]


def _show(path: str, value: Any) -> str:
    return "<hidden>" if path in SECRET_KEYS else repr(value)


def _suggest(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_errors(path: str, annotation: Any, value: Any) -> list[str]:
    try:
        _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        reasons: list[str] = []
        for error in exc.errors():
            at = "".join(f"[{p}]" for p in error["loc"] if isinstance(p, int))
            reason = f"{at} {error['msg']}".strip()
            if reason not in reasons:
                reasons.append(reason)
        return [f"{path}: {_show(path, value)} is rejected by TabbyAPI: {' or '.join(reasons)}"]
    return []


def _check_keys(path: str, data: Mapping[Any, Any], keys: Mapping[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    for key, value in data.items():
        at = f"{path}.{key}"
        if key not in keys:
            errors.append(f"{at}: unknown key, TabbyAPI ignores it ({where}){_suggest(key, keys)}")
            continue
        if value is None:
            errors.append(f"{at}: null; TabbyAPI drops nulls before validating (common/utils.py:22-30), as if unset")
            continue
        if isinstance(value, list) and any(v is None for v in value):
            errors.append(f"{at}: null entries; TabbyAPI drops them (common/utils.py:28)")
            value = [v for v in value if v is not None]
        if isinstance(keys[key], Entries):
            if not isinstance(value, list):
                errors.append(f"{at}: {_show(at, value)} is rejected by TabbyAPI: must be a list of mappings")
                continue
            for index, entry in enumerate(value):
                if not isinstance(entry, Mapping):
                    errors.append(f"{at}[{index}]: {entry!r} is rejected by TabbyAPI: must be a mapping")
                else:
                    errors += _check_keys(f"{at}[{index}]", entry, keys[key].keys, where)
        else:
            errors += _type_errors(at, keys[key], value)
    return errors


def _legacy_keys(section: str, body: Mapping[Any, Any]) -> dict[Any, str]:
    """Keys of TabbyAPI's older layout -> what it does with them: it migrates them and rewrites the file."""
    rewrite = (
        "TabbyAPI migrates it by renaming config.yml to config.yml.bak and writing a new one (tabby_config.py:69-130),"
        " which the engine user cannot do in the role's root-owned config directory"
    )
    if section == "model":
        return {key: f"legacy place of the {key} section; {rewrite}" for key in ("draft", "lora") if body.get(key)}
    if section == "logging":
        return {key: f"legacy name of log_{key}; {rewrite}" for key in body if not str(key).startswith("log_")}
    return {}


def _behaviour_errors(data: Mapping[Any, Any], commit: str, backend: str | None) -> list[str]:
    """Valid values the loader or the backend then ignores or overrides."""
    model = data.get("model")
    if not isinstance(model, Mapping):
        return []
    errors = []
    model_keys, draft_keys = SCHEMAS[commit]["model"].keys, SCHEMAS[commit]["draft_model"].keys
    defaults = model.get("use_as_default")
    if isinstance(defaults, list):
        for name in defaults:
            if isinstance(name, str) and name not in model_keys and name not in draft_keys:
                errors.append(
                    f"model.use_as_default: {name!r} is no model or draft_model key; TabbyAPI logs"
                    f" 'invalid item' and ignores it (common/tabby_config.py:50-56){_suggest(name, model_keys)}"
                )
    seq, size = model.get("max_seq_len"), model.get("cache_size")
    if isinstance(seq, int) and isinstance(size, int) and seq > size:
        source = (
            "backends/exllamav3/model.py:347-352@e632af4"
            if commit == MAIN
            else "backends/exllamav2/model.py:403-408@79126f9 (paged mode)"
        )
        errors.append(
            f"model.max_seq_len: {seq} > cache_size {size}; TabbyAPI caps max_seq_len to cache_size ({source})"
        )
    mode = model.get("cache_mode")
    if backend == "exllamav2" and isinstance(mode, str) and mode != "FP16" and not mode.startswith("Q"):
        errors.append(
            f"model.cache_mode: {mode!r} is a k,v bits pair, which exllamav2 does not take; TabbyAPI warns and"
            " uses FP16 (backends/exllamav2/model.py:186-193@79126f9). Use FP16, Q8, Q6 or Q4"
        )
    return errors


def check(data: Any, commit: str, backend: str | None = None) -> list[str]:
    """Everything in a loaded config.yml that TabbyAPI at `commit` would reject, ignore or rewrite.

    backend: "exllamav2" or "exllamav3", the backend that loads the model (the exl2 checkout picks exllamav2 for
    anything not EXL3, common/model.py:63-71@79126f9); None skips the backend's own rules.
    """
    schema = SCHEMAS[commit]
    top = f"{MODELS_PY} TabbyConfigModel@{commit[:7]}"
    if not isinstance(data, Mapping):
        return [f"config.yml: the top level is {type(data).__name__}, TabbyAPI needs a mapping of sections"]
    errors: list[str] = []
    for name, body in data.items():
        if name not in schema:
            errors.append(f"{name}: unknown section, TabbyAPI ignores it ({top}){_suggest(name, schema)}")
        elif body is None:
            errors.append(f"{name}: null section; TabbyAPI drops it (common/utils.py:22-30), all its keys default")
        elif not isinstance(body, Mapping):
            errors.append(f"{name}: {body!r} is rejected by TabbyAPI: a section must be a mapping of keys")
        else:
            legacy = _legacy_keys(name, body)
            errors += [f"{name}.{key}: {why}" for key, why in legacy.items()]
            current = {k: v for k, v in body.items() if k not in legacy}
            errors += _check_keys(name, current, schema[name].keys, schema[name].where)
    return errors + _behaviour_errors(data, commit, backend)
