"""What the switch owner tells the outside: each model's status (llama.cpp router-mode words) and its changes,
what a waiting request waits for, models on their way in or out, and memory per device.

A mixin of `router_app.switcher.Switcher`: it reads the switcher's state and changes nothing but the
listeners.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .memory import footprint_key
from .runtime import ModelState
from .scheduler import Phase

if TYPE_CHECKING:
    from .switcher import Ticket

log = logging.getLogger(__name__)


class StatusReport:
    """Status, progress and memory views of the switcher's state."""

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

    def subscribe(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `listener(model, status)` on every status change; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for model in self.runtimes:
            if "~" in model:  # a retiring engine of a config reload: not a model clients know
                continue
            status = self.status(model)
            if self._statuses.get(model) != status:
                self._statuses[model] = status
                for listener in list(self._listeners):
                    try:
                        listener(model, status)
                    except Exception:
                        log.exception("status listener failed")

    def load_estimate(self, model: str) -> float | None:
        return self.history.get(model).median_load_s()

    def describe_wait(self, ticket: Ticket) -> str:
        where = self.scheduler.waiting(ticket.request_id)
        now = self.clock()
        elapsed = int(time.monotonic() - ticket.created)
        if where is None:
            return f"Starting {ticket.model}…"
        if where.phase is Phase.LOADING:
            loading = int(now - self._load_started.get(ticket.model, now))
            estimate = self.load_estimate(ticket.model)
            progress = self.runtimes[ticket.model].progress
            text = f"Loading {ticket.model}… {loading} s"
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
            return f"Freeing memory for {ticket.model}… {elapsed} s"
        return f"Queued for {ticket.model}… {elapsed} s"

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
