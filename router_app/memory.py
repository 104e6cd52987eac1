"""The memory model: device capacities, model footprints (declared, estimated, measured) and free memory.

- GPU hosts: NVML (`nvidia-ml-py`) gives each GPU's capacity and free memory, and what each engine
  process uses; a footprint is the engine's process tree's use per GPU, measured once it is ready.
- Hosts without GPUs: declared budgets (`router.memory.devices`, e.g. `cpu: 3GiB`) against the
  resident set size of the engine's process tree.
- Before the first load a footprint is estimated: a GGUF file's size plus its KV cache at the
  configured context (from the file's metadata), or the size on disk / the engine's own memory
  fraction flag for other formats.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from .config import Backend, Config, ModelConfig

log = logging.getLogger(__name__)

MiB = 1024**2
# llama.cpp's compute buffers and runtime overhead beyond weights and KV cache (a flat allowance).
GGUF_OVERHEAD = 64 * MiB
# Engines whose memory flag reserves a fraction of the device, and that flag's default there.
_FRACTION_DEFAULT = {Backend.VLLM: 0.9}

# --- GGUF metadata --------------------------------------------------------------------------------

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
    if path.is_file():
        return path.stat().st_size
    weights = ("*.safetensors", "*.bin", "*.gguf", "*.pt")
    return sum(f.stat().st_size for pattern in weights for f in path.rglob(pattern) if f.is_file())


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


# --- measuring ------------------------------------------------------------------------------------


def process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    return procs


def rss_of(pids: Iterable[int]) -> int:
    """Resident memory of the processes and all their descendants."""
    total = 0
    for proc in process_tree(pids):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class Nvml:
    """The few NVML calls the router needs; `module` is pynvml (tests pass a fake)."""

    def __init__(self, module: Any) -> None:
        self._nv = module
        self._nv.nvmlInit()
        self.count = int(self._nv.nvmlDeviceGetCount())

    @classmethod
    def open(cls) -> Nvml | None:
        """NVML when a driver and GPUs are there, else None."""
        try:
            import pynvml
        except ImportError:
            return None
        try:
            nvml = cls(pynvml)
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.debug("NVML not available: %s", exc)
            return None
        return nvml if nvml.count else None

    def _handle(self, index: int) -> Any:
        return self._nv.nvmlDeviceGetHandleByIndex(index)

    def capacities(self) -> dict[str, int]:
        return {str(i): int(self._nv.nvmlDeviceGetMemoryInfo(self._handle(i)).total) for i in range(self.count)}

    def free(self, device: str) -> int:
        return int(self._nv.nvmlDeviceGetMemoryInfo(self._handle(int(device))).free)

    def used_by(self, pids: set[int]) -> dict[str, int]:
        """Memory per GPU used by these processes."""
        usage: dict[str, int] = {}
        for index in range(self.count):
            for proc in self._nv.nvmlDeviceGetComputeRunningProcesses(self._handle(index)):
                if proc.pid in pids and proc.usedGpuMemory:
                    usage[str(index)] = usage.get(str(index), 0) + int(proc.usedGpuMemory)
        return usage


@dataclass
class DeviceInfo:
    name: str
    capacity: int | None
    kind: str  # "gpu" (NVML) or "declared"


class MemoryModel:
    """Devices and their capacities for the scheduler; measuring and waiting for free memory."""

    def __init__(self, config: Config, nvml: Nvml | None = None) -> None:
        settings = config.router.memory
        self.settings = settings
        self.nvml = nvml
        self.source = settings.source
        if self.source == "auto":
            self.source = "nvml" if nvml is not None else ("declared" if settings.devices else "off")
        if self.source == "nvml" and nvml is None:
            log.warning("router.memory.source is nvml but NVML found no GPU: one model per group at a time")
            self.source = "off"
        self.devices: dict[str, DeviceInfo] = {}
        if self.source == "nvml" and nvml is not None:
            for name, total in nvml.capacities().items():
                self.devices[name] = DeviceInfo(name, total, "gpu")
        if self.source in ("nvml", "declared"):
            for name, capacity in settings.devices.items():
                kind = "gpu" if name in self.devices else "declared"
                self.devices[name] = DeviceInfo(name, capacity, kind)
        for info in self.devices.values():
            if info.capacity is not None:
                info.capacity = max(info.capacity - settings.reserve, 0)

    @property
    def enabled(self) -> bool:
        return self.source != "off"

    def devices_of(self, model: ModelConfig) -> tuple[str, ...]:
        """Where a model lives: its `devices`, else every device; without memory info, its group."""
        if not self.enabled:
            return (model.group or "default",)
        if model.devices:
            return tuple(model.devices)
        return tuple(self.devices) or ("default",)

    def capacities(self) -> dict[str, int | None]:
        if not self.enabled:
            return {}
        return {name: info.capacity for name, info in self.devices.items()}

    def measure(self, model: ModelConfig, pids: Iterable[int]) -> dict[str, int]:
        """What the model's engine uses now, per device it lives on."""
        pid_set = {p.pid for p in process_tree(pids)}
        if not pid_set:
            return {}
        devices = self.devices_of(model)
        usage: dict[str, int] = {}
        gpus = [d for d in devices if d in self.devices and self.devices[d].kind == "gpu"]
        if gpus and self.nvml is not None:
            measured = self.nvml.used_by(pid_set)
            usage.update({d: measured.get(d, 0) for d in gpus})
        declared = [d for d in devices if d in self.devices and self.devices[d].kind == "declared"]
        if declared:
            rss = rss_of(pid_set)
            usage.update({d: rss // len(declared) for d in declared})
        return usage

    async def wait_free(self, devices: Sequence[str], needed: int | None) -> str | None:
        """Poll NVML (with backoff, up to `free_wait_s`) until each GPU has `needed` bytes free.
        Returns None when it is free, else what is missing (the caller logs it and starts anyway)."""
        gpus = [d for d in devices if d in self.devices and self.devices[d].kind == "gpu"]
        if not gpus or needed is None or self.nvml is None:
            return None
        deadline = time.monotonic() + self.settings.free_wait_s
        delay = 0.05
        while True:
            short = {d: needed - self.nvml.free(d) for d in gpus}
            short = {d: s for d, s in short.items() if s > 0}
            if not short:
                return None
            if time.monotonic() >= deadline:
                return ", ".join(f"GPU {d}: {s / MiB:.0f} MiB short" for d, s in short.items())
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def footprint_key(model: ModelConfig) -> str:
    """Learned footprints are kept per model and what shapes its memory use (command, context, devices)."""
    parts = [model.id, model.backend.value, " ".join(model.command or []), str(model.unit), str(model.devices)]
    parts += [str(model.context_length), str(model.mem_fraction), str(model.weights)]
    return re.sub(r"\s+", " ", "|".join(parts))
