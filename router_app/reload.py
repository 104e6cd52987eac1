"""Config reload without disturbing models whose definition did not change (SIGHUP, `systemctl reload`).

The file is read and validated first; an invalid one is refused with the error logged and the running
config kept. Models whose entry is unchanged keep running and keep their requests; changed and removed
ones drain and stop (a changed one starts again from its new definition on the next request); added ones
are available at once. Keys are re-read. Settings that shape the process itself need a restart and are
kept (with a warning) until then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router_app.config import Config, ConfigError, ModelConfig, load_config
from router_app.control.switcher import Switcher
from router_app.engines.instance import EngineInstance
from router_app.fleet import Fleet
from router_app.live import Keys, Live, LiveConfig
from router_app.memory.warming import warm_files

log = logging.getLogger(__name__)

# router: keys that only a restart changes (listen socket, supervisor, memory source, state).
RESTART_ONLY = (
    "host", "port", "supervisor", "systemctl", "memory", "state_dir", "log_level", "log_lines", "shutdown_grace_s",
)  # fmt: skip


@dataclass
class LiveParts:
    """What a reload changes: the live configuration (swapped whole), the engines and the fleet's peers."""

    live: LiveConfig
    switcher: Switcher
    make_runtime: Callable[[Config, ModelConfig], EngineInstance]
    make_keys: Callable[[Config], Keys]
    fleet: Fleet | None = None


class Reloader:
    """Re-reads the config file and applies the difference; one reload at a time."""

    def __init__(self, parts: LiveParts, path: Path | None) -> None:
        self.parts = parts
        self.path = path
        self._lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self.parts.live.current.config

    async def reload(self) -> bool:
        async with self._lock:
            try:
                new = load_config(self.path)
                keys = self.parts.make_keys(new)
                peers = self.parts.fleet.prepare(new.router.peers) if self.parts.fleet is not None else None
            except ConfigError as exc:
                log.error("config reload refused, the running config stays: %s", exc)
                return False
            await self.apply(new, keys)
            if peers is not None:
                self.parts.fleet.install(peers, new.router.peer_refresh_s)
            return True

    async def apply(self, new: Config, keys: Keys) -> None:
        old = self.config
        kept = {
            key: getattr(old.router, key)
            for key in RESTART_ONLY
            if getattr(old.router, key) != getattr(new.router, key)
        }
        for key in kept:
            log.warning("config reload: router.%s changed; it takes effect after a restart", key)
        new = new.model_copy(update={"router": new.router.model_copy(update=kept)})
        before = {m.id: m for m in old.models}
        after = {m.id: m for m in new.models}
        removed = set(before) - set(after)
        added = set(after) - set(before)
        changed = {m for m in set(before) & set(after) if before[m] != after[m]}
        log.info(
            "config reload: %d unchanged, %d changed (%s), %d added (%s), %d removed (%s)",
            len(before) - len(changed) - len(removed),
            len(changed),
            ", ".join(sorted(changed)) or "-",
            len(added),
            ", ".join(sorted(added)) or "-",
            len(removed),
            ", ".join(sorted(removed)) or "-",
        )
        runtimes = {m: self.parts.make_runtime(new, after[m]) for m in sorted(added | changed)}
        parts = self.parts
        parts.live.swap(Live(new, keys))
        parts.switcher.update_settings(new.router)
        await parts.switcher.reconfigure(runtimes, changed, removed)
        warmer = parts.switcher.warmer
        if warmer is not None:
            budget = new.router.page_cache_budget
            if budget != "auto" and budget != warmer.budget:
                log.info("page-cache warming budget: %d bytes (was %d)", budget, warmer.budget)
                warmer.budget = budget
            warmer.set_models({model.id: warm_files(model) for model in new.models})
            warmer.start()
