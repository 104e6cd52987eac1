"""Device capacities, free memory and what engines use.

- GPU hosts: NVML (`nvidia-ml-py`) gives each GPU's capacity and free memory, and what each engine
  process uses; a footprint is the engine's process tree's use per GPU, measured once it is ready.
- Hosts without GPUs: declared budgets (`router.memory.devices`, e.g. `cpu: 3GiB`) against the
  resident set size of the engine's process tree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from router_app.config import Config, ModelConfig
from router_app.memory.estimate import MiB

log = logging.getLogger(__name__)


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
