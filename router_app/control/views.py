"""What the switch owner tells the outside: each model's status (llama.cpp router-mode words), what a waiting
request waits for, models on their way in or out, and memory per device. Answers are by model name; the switcher's
tables are by engine instance key (a model's current instance, and old ones a config reload is retiring)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

from router_app.control.policy.scheduler import Scheduler
from router_app.control.policy.vocabulary import Phase
from router_app.engines.instance import EngineInstance, ModelState
from router_app.memory.devices import MemoryModel
from router_app.memory.estimate import footprint_key
from router_app.memory.history import History


class SwitchView:
    """Status, progress and memory views of the switcher's state. It holds references to the objects the switcher
    owns (`instances` by key, `current` key of each model) and changes none of them."""

    def __init__(
        self,
        scheduler: Scheduler,
        instances: Mapping[str, EngineInstance],
        current: Mapping[str, str],
        load_started: Mapping[str, float],
        history: History,
        memory: MemoryModel | None,
        clock: Callable[[], float],
        estimates: Mapping[str, int | None],
    ) -> None:
        self.scheduler = scheduler
        self._estimates = estimates
        self._instances = instances
        self._current = current
        self._load_started = load_started
        self.history = history
        self.memory = memory
        self.clock = clock

    def instances(self) -> dict[str, EngineInstance]:
        """The engine instance serving each model's new requests, by model name."""
        return {model: self._instances[key] for model, key in self._current.items()}

    def _names(self, keys: Iterable[str]) -> list[str]:
        return [self._instances[key].model.id for key in keys]

    def manages(self, model: str) -> bool:
        """Whether the scheduler switches `model` (a local engine, not a remote API)."""
        key = self._current.get(model)
        return key is not None and self.scheduler.manages(key)

    def phase(self, model: str) -> Phase:
        return self.scheduler.phase(self._current[model])

    def inflight(self, model: str) -> int:
        """Requests in flight on `model`'s current engine."""
        return self.scheduler.inflight(self._current[model])

    def status(self, model: str) -> str:
        """`loaded`, `loading`, `sleeping`, `unloaded` or `failed` (what Open-WebUI's llama.cpp provider reads)."""
        key = self._current[model]
        runtime = self._instances[key]
        if runtime.supervisor is None or not self.scheduler.manages(key):
            return "loaded"
        phase = self.scheduler.phase(key)
        if phase in (Phase.READY, Phase.DRAINING, Phase.EVICTING):
            return "loaded"
        if phase in (Phase.LOADING, Phase.PENDING):
            return "loading"
        if phase is Phase.SLEEPING:
            return "sleeping"
        return "failed" if runtime.state is ModelState.FAILED else "unloaded"

    def pinned(self, model: str) -> bool:
        key = self._current[model]
        return self.scheduler.manages(key) and self.scheduler.spec(key).pinned

    def idle_unload_in(self, model: str) -> float | None:
        """Seconds until `model` is unloaded for being idle (its TTL), if it is resident, idle and has a TTL."""
        key = self._current[model]
        if not self.scheduler.manages(key) or self.scheduler.phase(key) is not Phase.READY:
            return None
        ttl = self.scheduler.ttl(key)
        if ttl is None or self.scheduler.inflight(key):
            return None
        return max(self.scheduler.last_used(key) + ttl - self.clock(), 0.0)

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
            loading = int(now - self._load_started.get(where.model, now))
            estimate = self.load_estimate(model)
            progress = self._instances[where.model].progress
            text = f"Loading {model}… {loading} s"
            if estimate is not None:
                text += f" of ~{max(estimate, 1):.0f} s"
            return text + (f" ({progress:.0%})" if progress is not None else "")
        busy = [(self._instances[key].model.id, count) for key, count in where.draining]
        busy += [(self._instances[key].model.id, self.scheduler.inflight(key)) for key in where.blocked_by]
        if any(count for _, count in busy):
            names = ", ".join(f"{count} request(s) on {name}" for name, count in busy if count)
            return f"Waiting for {names} to finish… {elapsed} s"
        if busy:  # idle, kept a moment for its clients' follow-up requests
            return f"Waiting for follow-up requests to {', '.join(name for name, _ in busy)}… {elapsed} s"
        if where.evicting:
            return f"Unloading {', '.join(self._names(where.evicting))}… {elapsed} s"
        if where.phase is Phase.PENDING:
            return f"Freeing memory for {model}… {elapsed} s"
        return f"Queued for {model}… {elapsed} s"

    def current(self) -> dict[str, list[str]]:
        """Resident models per device."""
        out: dict[str, list[str]] = {}
        for key in self.scheduler.resident():
            for device in self.scheduler.spec(key).devices:
                out.setdefault(device, []).append(self._instances[key].model.id)
        return out

    def resident(self) -> list[str]:
        """Models whose current engine is resident and not loading."""
        keys = set(self._current.values())
        return [
            self._instances[k].model.id
            for k in self.scheduler.resident()
            if k in keys and self.scheduler.phase(k) is not Phase.LOADING
        ]

    def switching(self) -> dict[str, dict[str, object]]:
        """Models on their way in or out."""
        now = self.clock()
        out: dict[str, dict[str, object]] = {}
        for model, key in self._current.items():
            if not self.scheduler.manages(key):
                continue
            phase = self.scheduler.phase(key)
            if phase in (Phase.LOADING, Phase.PENDING, Phase.DRAINING, Phase.EVICTING):
                entry: dict[str, object] = {"phase": phase.value}
                if phase is Phase.LOADING:
                    entry["elapsed_s"] = round(now - self._load_started.get(key, now), 3)
                    estimate = self.load_estimate(model)
                    if estimate is not None:
                        entry["estimate_s"] = round(estimate, 3)
                out[model] = entry
        return out

    def memory_report(self) -> list[dict[str, object]]:
        """Per device: capacity, what each resident engine holds, what is free (for /health). An old engine that a
        config reload is retiring is listed with `retiring: true`: it holds memory until it is gone."""
        if self.memory is None or not self.memory.enabled:
            return []
        report = []
        for name, info in self.memory.devices.items():
            models = []
            for key, runtime in self._instances.items():
                if not self.scheduler.manages(key) or name not in self.scheduler.spec(key).devices:
                    continue
                phase = self.scheduler.phase(key)
                if phase in (Phase.STOPPED, Phase.PENDING):
                    continue
                model = runtime.model.id
                entry = self.history.footprint(model, footprint_key(runtime.model))
                spec = self.scheduler.spec(key)
                counted = spec.sleep_footprint if phase is Phase.SLEEPING else spec.footprint
                held: dict[str, object] = {"model": model, "phase": phase.value}
                held.update(measured=entry.get(name), counted=counted, estimated=self._estimates.get(key))
                held["counted_from"] = (
                    "config" if runtime.model.memory else "estimate" if spec.estimated else "measurement"
                )
                if self._current.get(model) != key:
                    held["retiring"] = True
                models.append(held)
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
