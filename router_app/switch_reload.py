"""Applying a reloaded config to the running switcher (`router_app.reload` reads and diffs the file).

A mixin of `router_app.switcher.Switcher`. The old engine of a changed or removed model is renamed to a
retiring id, drains and stops like any eviction, and is forgotten; the new definition of a changed model
shares a temporary exclusive group with it, so it cannot start (maybe the same systemd unit) before the
old one is gone.
"""

from __future__ import annotations

import asyncio
import logging

from .config import RouterSettings
from .runtime import ModelRuntime
from .scheduler import ModelSpec

log = logging.getLogger(__name__)


class Reconfiguration:
    """Rename, add and retire models in a running switcher."""

    def _id_of(self, runtime: ModelRuntime) -> str:
        return next((key for key, rt in self.runtimes.items() if rt is runtime), runtime.model.id)

    def _rename(self, model: str, new_id: str) -> None:
        self.scheduler.rename(model, new_id)
        if self._on_rename is not None:
            self._on_rename(model, new_id)
        self.runtimes[new_id] = self.runtimes.pop(model)
        for table in (self._loads, self._evictions, self._load_started, self._evicted, self._statuses):
            if model in table:
                table[new_id] = table.pop(model)  # type: ignore[index]

    async def reconfigure(self, runtimes: dict[str, ModelRuntime], changed: set[str], removed: set[str]) -> None:
        """Apply a reloaded config. `runtimes` are the new engines of added and changed models; unchanged models
        keep running and keep their requests. The old engines of changed and removed models drain, stop and are
        forgotten; requests waiting for a changed model wait for its new definition, those for a removed one fail."""
        self._reloads += 1
        now = self.clock()
        retiring: list[tuple[str, str | None]] = []
        for model in sorted(changed | removed):
            old = f"{model}~retiring-{self._reloads}"
            self._rename(model, old)
            retiring.append((old, model if model in changed else None))
        for model, runtime in runtimes.items():
            runtime.on_lost = self._lost_handler(runtime)
            self.runtimes[model] = runtime
            spec = self._spec(runtime)
            if model in changed:  # not before the old engine (maybe the same systemd unit) is gone
                old = next(o for o, successor in retiring if successor == model)
                group = f"~reload-{model}"
                self.scheduler.set_spec(ModelSpec(**{**self.scheduler.spec(old).__dict__, "group": group}))
                spec = ModelSpec(**{**spec.__dict__, "group": group})
            self.scheduler.add(spec)
            self._statuses[model] = self.status(model)
        for old, successor in retiring:
            self._stopped[old] = asyncio.Event()
            log.info(
                "config reload: %s %s; its engine drains and stops",
                old.split("~")[0],
                "changed" if successor else "removed",
            )
            self.apply(self.scheduler.retire(old, self.clock(), successor))
        for old, successor in retiring:
            try:
                await self._stopped[old].wait()
            finally:  # each retiring engine is forgotten, whatever happened to the others
                del self._stopped[old]
                self.scheduler.remove(old)
                self.runtimes.pop(old, None)
                self._statuses.pop(old, None)
                if successor is not None:
                    self.scheduler.set_spec(self._spec(self.runtimes[successor]))
        self.apply([])
        for model, runtime in runtimes.items():  # changed pinned/preload models come back like at start
            if runtime.model.preload or runtime.model.pinned:
                self._tasks.add(asyncio.create_task(self._preload(model), name=f"preload-{model}"))
        log.info("config reload done in %.2f s", self.clock() - now)

    def update_settings(self, settings: RouterSettings) -> None:
        """Settings that apply without a restart: fairness, drain bound, idle TTL."""
        self.settings = settings
        self.scheduler.fairness_s = settings.fairness_s
        self.scheduler.drain_timeout_s = settings.drain_timeout_s
        self.scheduler.default_ttl_s = settings.idle_ttl_s
        self.apply([])
