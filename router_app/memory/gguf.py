"""GGUF metadata, read from the file header without loading the weights, and the KV cache it implies."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(handle: BinaryIO) -> str:
    length = _read(handle, "Q")
    return handle.read(length).decode("utf-8", errors="replace")


def _read_value(handle: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _GGUF_SCALARS:
        return _read(handle, _GGUF_SCALARS[kind])
    if kind == _STRING:
        return _read_string(handle)
    if kind == _ARRAY:
        item_kind, count = _read(handle, "I"), _read(handle, "Q")
        if item_kind in _GGUF_SCALARS and not keep:
            handle.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item_kind]), 1)
            return None
        values = [_read_value(handle, item_kind, keep) for _ in range(count)]
        return values if keep else None
    raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (v2/v3); arrays are skipped except short numeric ones."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _read(handle, "I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        _read(handle, "Q")  # tensor count
        count = _read(handle, "Q")
        meta: dict[str, Any] = {}
        for _ in range(count):
            key = _read_string(handle)
            kind = _read(handle, "I")
            meta[key] = _read_value(handle, kind, keep=key.endswith("head_count_kv"))
        return meta


def gguf_kv_cache_bytes(meta: dict[str, Any], context: int) -> int:
    """f16 K and V for every layer at `context` tokens (llama.cpp's default cache type)."""
    arch = meta.get("general.architecture", "llama")
    layers = int(meta.get(f"{arch}.block_count", 0))
    heads = int(meta.get(f"{arch}.attention.head_count", 0) or 1)
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts
        kv_heads = max(kv_heads) if kv_heads else heads
    embedding = int(meta.get(f"{arch}.embedding_length", 0))
    key_dim = int(meta.get(f"{arch}.attention.key_length", embedding // heads))
    value_dim = int(meta.get(f"{arch}.attention.value_length", embedding // heads))
    return layers * int(kv_heads) * (key_dim + value_dim) * context * 2
