"""Footprints before a first load: a GGUF file's size plus its KV cache at the configured context (from the
file's metadata), or the size on disk / the engine's own memory fraction flag for other formats; and the key
learned footprints are kept under."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from router_app.config import Backend, ModelConfig
from router_app.memory.gguf import gguf_kv_cache_bytes, gguf_metadata
from router_app.memory.pagecache import weight_files

log = logging.getLogger(__name__)

MiB = 1024**2
# llama.cpp's compute buffers and runtime overhead beyond weights and KV cache (a flat allowance).
GGUF_OVERHEAD = 64 * MiB
# Engines whose memory flag reserves a fraction of the device, and that flag's default there.
_FRACTION_DEFAULT = {Backend.VLLM: 0.9}


def command_option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the first of `names` in an argv (`--name value` or `--name=value`)."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def weights_of(model: ModelConfig) -> Path | None:
    """The model's weights: `weights`, else the `-m/--model` (llama.cpp) or `--model-path` argument."""
    if model.weights is not None:
        return model.weights
    found = command_option(model.command or [], "-m", "--model", "--model-path")
    return Path(found) if found else None


def size_on_disk(path: Path) -> int:
    """Bytes of the weight files at `path` (every part of a split GGUF, a directory's weight files)."""
    return sum(f.stat().st_size for f in weight_files(path))


def estimate_footprint(model: ModelConfig, capacity: int | None, devices: int) -> int | None:
    """Bytes per device before the first load, or None when nothing sensible can be said."""
    if model.backend in (Backend.VLLM, Backend.SGLANG) and capacity is not None:
        flag = command_option(model.command or [], "--gpu-memory-utilization", "--mem-fraction-static")
        fraction = model.mem_fraction or _float(flag) or _FRACTION_DEFAULT.get(model.backend)
        if fraction is None:  # SGLang sizes its pool from what is free: count it as the whole device
            return capacity
        return int(capacity * fraction)  # the engine reserves this share of every GPU it uses
    path = weights_of(model)
    if path is None or not path.exists():
        return None
    try:
        if path.is_file() and path.suffix == ".gguf":
            meta = gguf_metadata(path)
            context = model.context_length or _int(command_option(model.command or [], "-c", "--ctx-size"))
            if not context:
                arch = meta.get("general.architecture", "llama")
                context = int(meta.get(f"{arch}.context_length", 4096))
            total = path.stat().st_size + gguf_kv_cache_bytes(meta, context) + GGUF_OVERHEAD
        else:
            total = int(size_on_disk(path) * 1.2)  # weights plus a KV cache / activation allowance
    except (OSError, ValueError) as exc:
        log.warning("cannot estimate the footprint of %s from %s: %s", model.id, path, exc)
        return None
    return total // max(devices, 1)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def footprint_key(model: ModelConfig) -> str:
    """Learned footprints are kept per model and what shapes its memory use (command, context, devices)."""
    parts = [model.id, model.backend.value, " ".join(model.command or []), str(model.unit), str(model.devices)]
    parts += [str(model.context_length), str(model.mem_fraction), str(model.weights)]
    return re.sub(r"\s+", " ", "|".join(parts))
