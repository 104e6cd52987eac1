"""The single owner of switching state.

Every scheduler event happens here, synchronously on the event loop, so no two coroutines
ever see the state half-changed. The owner turns the scheduler's effects into actions:
resolving waiting requests and running one switch task per GPU group.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from .metrics import RouterMetrics
from .runtime import ModelRuntime, ModelState, SwitchError
from .scheduler import BeginSwitch, Drained, Effect, Fail, Grant, Scheduler

log = logging.getLogger(__name__)


@dataclass
class _SwitchProgress:
    target: str | None
    evict: str | None
    started: float = field(default_factory=time.monotonic)
    phase: str = "draining"
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Ticket:
    """A request's claim on a model: wait for `granted`, then `release` exactly once."""

    def __init__(self, switcher: Switcher, request_id: int, model: str) -> None:
        self._switcher = switcher
        self.request_id = request_id
        self.model = model
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.created = time.monotonic()
        self.waited = False
        self._released = False

    async def wait(self) -> None:
        """Wait until the model is resident (raises SwitchError if the switch failed)."""
        await asyncio.shield(self.granted)

    def status(self) -> str:
        """A one-line description of what this request is waiting for."""
        return self._switcher.describe_wait(self)

    def release(self) -> None:
        """The request is over (served, failed or abandoned by its client)."""
        if self._released:
            return
        self._released = True
        if self.granted.done() and not self.granted.cancelled() and self.granted.exception() is None:
            self._switcher.apply(self._switcher.scheduler.release(self.request_id))
        else:
            self._switcher.forget(self.request_id)
            self._switcher.apply(self._switcher.scheduler.cancel(self.request_id))
            if not self.granted.done():
                self.granted.cancel()


class Switcher:
    """Owns the scheduler, the model runtimes and the switch tasks."""

    def __init__(
        self,
        runtimes: dict[str, ModelRuntime],
        drain_timeout_s: float,
        metrics: RouterMetrics | None = None,
        before_evict: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.runtimes = runtimes
        groups = {mid: rt.model.group for mid, rt in runtimes.items() if rt.supervisor is not None}
        self.scheduler = Scheduler(groups)
        self._drain_timeout_s = drain_timeout_s
        self._metrics = metrics
        self._before_evict = before_evict
        self._ids: Iterator[int] = itertools.count(1)
        self._tickets: dict[int, Ticket] = {}
        self._switches: dict[str, _SwitchProgress] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        for runtime in runtimes.values():
            runtime.on_lost = self._engine_lost

    # --- requests ------------------------------------------------------------------------

    def ticket(self, model: str) -> Ticket:
        """Claim `model` for one request; granted at once if it is resident and nothing is switching."""
        ticket = Ticket(self, next(self._ids), model)
        self._tickets[ticket.request_id] = ticket
        self.apply(self.scheduler.request(ticket.request_id, model))
        ticket.waited = not ticket.granted.done()
        return ticket

    def forget(self, request_id: int) -> None:
        """Drop a ticket whose client went away before it was granted."""
        self._tickets.pop(request_id, None)

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Grant):
                ticket = self._tickets.pop(effect.request_id, None)
                if ticket is not None and not ticket.granted.done():
                    ticket.granted.set_result(None)
            elif isinstance(effect, Fail):
                ticket = self._tickets.pop(effect.request_id, None)
                if ticket is not None and not ticket.granted.done():
                    ticket.granted.set_exception(SwitchError(effect.reason))
                    ticket.granted.exception()  # mark retrieved: a vanished client may never look
            elif isinstance(effect, BeginSwitch):
                self._start_switch(effect)
            elif isinstance(effect, Drained):
                progress = self._switches.get(effect.group)
                if progress is not None:
                    progress.drained.set()

    def describe_wait(self, ticket: Ticket) -> str:
        where = self.scheduler.waiting(ticket.request_id)
        if where is None:
            return f"Starting {ticket.model}…"
        group = self.runtimes[ticket.model].model.group
        progress = self._switches.get(group)
        elapsed = int(time.monotonic() - ticket.created)
        if not where.joined_switch:
            ahead = where.switch_target or "unload"
            return f"Queued for {ticket.model} (#{where.queue_position}) behind the switch to {ahead}… {elapsed} s"
        if progress is not None and progress.phase == "draining" and where.switch_evict:
            busy = self.scheduler.inflight(where.switch_evict)
            return f"Waiting for {busy} request(s) on {where.switch_evict} to finish… {elapsed} s"
        if progress is not None and progress.phase == "stopping" and where.switch_evict:
            return f"Unloading {where.switch_evict}… {elapsed} s"
        return f"Loading {ticket.model}… {elapsed} s"

    # --- switching -----------------------------------------------------------------------

    def _start_switch(self, effect: BeginSwitch) -> None:
        progress = _SwitchProgress(effect.target, effect.evict)
        if not effect.drain:
            progress.drained.set()
        self._switches[effect.group] = progress
        task = asyncio.create_task(self._run_switch(effect, progress), name=f"switch-{effect.group}")
        progress.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_switch(self, effect: BeginSwitch, progress: _SwitchProgress) -> None:
        group = effect.group
        ok, reason = True, ""
        log.info("switch in group %s: %s -> %s", group, effect.evict or "(none)", effect.target or "(none)")
        try:
            if effect.drain:
                try:
                    await asyncio.wait_for(progress.drained.wait(), self._drain_timeout_s)
                except TimeoutError:
                    log.warning(
                        "switch in group %s: %d request(s) on %s still running after drain_timeout_s=%.0f; "
                        "evicting anyway",
                        group,
                        self.scheduler.inflight(effect.evict or ""),
                        effect.evict,
                        self._drain_timeout_s,
                    )
                    self.scheduler.drain_timed_out(group)
            progress.phase = "stopping"
            for runtime in self.runtimes.values():
                # The evicted model, and anything else left over in this group (failed, half-started).
                if (
                    runtime.model.group == group
                    and runtime.supervisor is not None
                    and runtime.model.id != effect.target
                    and runtime.state is not ModelState.STOPPED
                    and (runtime.model.id == effect.evict or runtime.state is not ModelState.SLEEPING)
                ):
                    if self._before_evict is not None:
                        await self._before_evict(runtime.model.id)
                    await runtime.deactivate()
            progress.phase = "loading"
            if effect.target is not None:
                await self.runtimes[effect.target].activate()
        except SwitchError as exc:
            ok, reason = False, str(exc)
            log.error("switch to %s failed: %s", effect.target, reason)
        except Exception as exc:  # a bug or an unexpected OS error must not wedge the group
            ok, reason = False, f"{effect.target}: {type(exc).__name__}: {exc}"
            log.exception("switch to %s failed", effect.target)
        finally:
            elapsed = time.monotonic() - progress.started
            if self._switches.get(group) is progress:
                del self._switches[group]
            if self._metrics is not None:
                self._metrics.switch_done(effect.target or "", ok, elapsed)
            log.info(
                "switch in group %s to %s %s in %.2f s",
                group,
                effect.target or "(none)",
                "done" if ok else "FAILED",
                elapsed,
            )
            self.apply(self.scheduler.switch_done(group, ok, reason))

    def _engine_lost(self, model: str, how: str) -> None:
        log.warning("model %s lost its engine (%s); the next request loads it again", model, how)
        self.scheduler.engine_lost(model)

    def mark_unreachable(self, model: str) -> None:
        """The proxy could not connect to a supposedly ready engine: reload it on the next request."""
        runtime = self.runtimes.get(model)
        if runtime is not None and runtime.supervisor is not None and runtime.state is ModelState.READY:
            runtime.state = ModelState.FAILED
            runtime.last_error = "engine refused connections"
            self.scheduler.engine_lost(model)

    # --- admin ---------------------------------------------------------------------------

    async def load(self, model: str) -> None:
        """Make `model` resident as if a request came, without serving anything."""
        ticket = self.ticket(model)
        try:
            await ticket.wait()
        finally:
            ticket.release()

    async def unload(self, model: str) -> bool:
        """Evict `model` if it is resident; returns whether anything was unloaded."""
        runtime = self.runtimes[model]
        if runtime.supervisor is None:
            return False
        group = runtime.model.group
        effects = self.scheduler.unload(model)
        if not effects:
            return False
        self.apply(effects)
        progress = self._switches.get(group)
        if progress is not None and progress.task is not None:
            await asyncio.shield(progress.task)
        return True

    def current(self) -> dict[str, str | None]:
        """Resident model per GPU group."""
        return self.scheduler.residents()

    def switching(self) -> dict[str, dict[str, object]]:
        return {
            group: {
                "target": p.target,
                "evict": p.evict,
                "phase": p.phase,
                "elapsed_s": round(time.monotonic() - p.started, 3),
            }
            for group, p in self._switches.items()
        }

    async def start(self) -> None:
        """Adopt engines that already run (systemd units survive a router restart)."""
        for runtime in self.runtimes.values():
            if runtime.supervisor is None:
                continue
            if self.scheduler.resident(runtime.model.group) is None:
                if await runtime.adopt():
                    self.scheduler.adopt(runtime.model.id)
            elif await runtime.supervisor.is_running():
                log.info(
                    "model %s is running beside resident %s in group %s: stopping it",
                    runtime.model.id,
                    self.scheduler.resident(runtime.model.group),
                    runtime.model.group,
                )
                await runtime.supervisor.stop()

    async def shutdown(self, stop_engines: bool) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if stop_engines:
            await asyncio.gather(*(rt.shutdown() for rt in self.runtimes.values()))
