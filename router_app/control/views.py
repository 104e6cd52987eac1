"""What the switch owner tells the outside: each model's status (llama.cpp router-mode words), what a waiting
request waits for, models on their way in or out, and memory per device."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

from router_app.control.policy.scheduler import Scheduler
from router_app.control.policy.vocabulary import Phase
from router_app.engines.instance import EngineInstance, ModelState
from router_app.memory.devices import MemoryModel
from router_app.memory.estimate import footprint_key
from router_app.memory.history import History


class SwitchView:
    """Status, progress and memory views of the switcher's state. It holds references to the objects the switcher
    owns and changes none of them."""

    def __init__(
        self,
        scheduler: Scheduler,
        runtimes: Mapping[str, EngineInstance],
        load_started: Mapping[str, float],
        history: History,
        memory: MemoryModel | None,
        clock: Callable[[], float],
    ) -> None:
        self.scheduler = scheduler
        self.runtimes = runtimes
        self._load_started = load_started
        self.history = history
        self.memory = memory
        self.clock = clock

    def status(self, model: str) -> str:
        """`loaded`, `loading`, `sleeping`, `unloaded` or `failed` (what Open-WebUI's llama.cpp provider reads)."""
        runtime = self.runtimes[model]
        if runtime.supervisor is None or not self.scheduler.manages(model):
            return "loaded"
        phase = self.scheduler.phase(model)
        if phase in (Phase.READY, Phase.DRAINING, Phase.EVICTING):
            return "loaded"
        if phase in (Phase.LOADING, Phase.PENDING):
            return "loading"
        if phase is Phase.SLEEPING:
            return "sleeping"
        return "failed" if runtime.state is ModelState.FAILED else "unloaded"

    def load_estimate(self, model: str) -> float | None:
        """The median of `model`'s recorded load times, if any."""
        return self.history.get(model).median_load_s()

    def describe_wait(self, request_id: int, model: str, since: float) -> str:
        """What request `request_id` for `model`, waiting since `since` (time.monotonic), waits for."""
        where = self.scheduler.waiting(request_id)
        now = self.clock()
        elapsed = int(time.monotonic() - since)
        if where is None:
            return f"Starting {model}…"
        if where.phase is Phase.LOADING:
            loading = int(now - self._load_started.get(model, now))
            estimate = self.load_estimate(model)
            progress = self.runtimes[model].progress
            text = f"Loading {model}… {loading} s"
            if estimate is not None:
                text += f" of ~{max(estimate, 1):.0f} s"
            return text + (f" ({progress:.0%})" if progress is not None else "")
        busy = list(where.draining) + [(m, self.scheduler.inflight(m)) for m in where.blocked_by]
        if busy:
            names = ", ".join(f"{count} request(s) on {model}" for model, count in busy)
            return f"Waiting for {names} to finish… {elapsed} s"
        if where.evicting:
            return f"Unloading {', '.join(where.evicting)}… {elapsed} s"
        if where.phase is Phase.PENDING:
            return f"Freeing memory for {model}… {elapsed} s"
        return f"Queued for {model}… {elapsed} s"

    def current(self) -> dict[str, list[str]]:
        """Resident models per device."""
        out: dict[str, list[str]] = {}
        for model in self.scheduler.resident():
            for device in self.scheduler.spec(model).devices:
                out.setdefault(device, []).append(model)
        return out

    def resident(self) -> list[str]:
        return [m for m in self.scheduler.resident() if self.scheduler.phase(m) is not Phase.LOADING]

    def switching(self) -> dict[str, dict[str, object]]:
        """Models on their way in or out."""
        now = self.clock()
        out: dict[str, dict[str, object]] = {}
        for model in self.runtimes:
            if not self.scheduler.manages(model):
                continue
            phase = self.scheduler.phase(model)
            if phase in (Phase.LOADING, Phase.PENDING, Phase.DRAINING, Phase.EVICTING):
                entry: dict[str, object] = {"phase": phase.value}
                if phase is Phase.LOADING:
                    entry["elapsed_s"] = round(now - self._load_started.get(model, now), 3)
                    estimate = self.load_estimate(model)
                    if estimate is not None:
                        entry["estimate_s"] = round(estimate, 3)
                out[model] = entry
        return out

    def memory_report(self) -> list[dict[str, object]]:
        """Per device: capacity, what each resident model holds, what is free (for /health)."""
        if self.memory is None or not self.memory.enabled:
            return []
        report = []
        for name, info in self.memory.devices.items():
            models = []
            for model in self.runtimes:
                if not self.scheduler.manages(model) or name not in self.scheduler.spec(model).devices:
                    continue
                phase = self.scheduler.phase(model)
                if phase in (Phase.STOPPED, Phase.PENDING):
                    continue
                entry = self.history.footprint(model, footprint_key(self.runtimes[model].model))
                spec = self.scheduler.spec(model)
                counted = spec.sleep_footprint if phase is Phase.SLEEPING else spec.footprint
                models.append({"model": model, "phase": phase.value, "measured": entry.get(name), "counted": counted})
            used = self.scheduler.used(name)
            entry_out: dict[str, object] = {"device": name, "kind": info.kind, "capacity": info.capacity, "used": used}
            if info.capacity is not None:
                entry_out["free"] = info.capacity - used
            if info.kind == "gpu" and self.memory.nvml is not None:
                with contextlib.suppress(Exception):
                    entry_out["free_nvml"] = self.memory.nvml.free(name)
            entry_out["models"] = models
            report.append(entry_out)
        return report
