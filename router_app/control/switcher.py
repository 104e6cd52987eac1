"""The single owner of scheduling state.

Every scheduler event happens here, synchronously on the event loop, so no two coroutines ever
see the state half-changed. The owner turns the scheduler's effects into actions: resolving
waiting requests, one task per load or eviction, cancelling abandoned loads, and a timer for the
scheduler's next deadline (idle TTL, fairness and drain bounds). It also learns what each model
costs: its load time and, once ready, its footprint (`router_app.memory.devices`), kept in `History`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

from router_app.config import RouterSettings
from router_app.control.policy.placement import format_bytes
from router_app.control.policy.scheduler import (
    CancelLoad,
    Effect,
    Evict,
    Fail,
    FailCause,
    Grant,
    Load,
    ModelSpec,
    Phase,
    Scheduler,
)
from router_app.control.views import SwitchView
from router_app.engines.instance import EngineInstance, LoadFailure, ModelState, SwitchError
from router_app.events import EventHub
from router_app.memory.devices import MemoryModel
from router_app.memory.estimate import estimate_footprint, footprint_key
from router_app.memory.history import History
from router_app.memory.warming import PageCacheWarmer
from router_app.metrics import RouterMetrics

log = logging.getLogger(__name__)


class RequestFailed(SwitchError):
    """A request's model could not be made resident; `cause` says why, typed (the error code the client gets)."""

    def __init__(self, reason: str, cause: FailCause) -> None:
        super().__init__(reason)
        self.cause = cause

    @property
    def code(self) -> str:  # type: ignore[override]
        return self.cause.value


class Ticket:
    """A request's claim on a model: wait for `granted`, then `release` exactly once."""

    def __init__(self, switcher: Switcher, request_id: int, model: str) -> None:
        self._switcher = switcher
        self.request_id = request_id
        self.model = model
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.created = time.monotonic()
        self.waited = False
        self.runtime: EngineInstance | None = None  # the engine instance it was granted
        self._released = False

    async def wait(self) -> None:
        """Wait until the model is resident (raises SwitchError if its load failed)."""
        await asyncio.shield(self.granted)

    def status(self) -> str:
        """A one-line description of what this request is waiting for."""
        return self._switcher.view.describe_wait(self.request_id, self.model, self.created)

    def release(self) -> None:
        """The request is over (served, failed or abandoned by its client)."""
        if self._released:
            return
        self._released = True
        switcher = self._switcher
        if self.granted.done() and not self.granted.cancelled() and self.granted.exception() is None:
            switcher.apply(switcher.scheduler.release(self.request_id, switcher.clock()))
        else:
            switcher.forget(self.request_id)
            switcher.apply(switcher.scheduler.cancel(self.request_id, switcher.clock()))
            if not self.granted.done():
                self.granted.cancel()


class Switcher:
    """Owns the scheduler, the engine instances and the load/evict tasks; `view` reads them for the outside.

    Everything is keyed by engine instance (`EngineInstance.key`): the scheduler, the tasks and the tables. A model's
    first instance has the model's id as key; a config reload that changes a model adds a new instance under a new
    key (`<id>#<reload>`) beside the old one, which keeps its key, drains and is forgotten once stopped. `current`
    maps each model clients can ask for to the key of the instance that serves its new requests."""

    def __init__(
        self,
        runtimes: dict[str, EngineInstance],
        settings: RouterSettings,
        metrics: RouterMetrics | None = None,
        before_evict: Callable[[EngineInstance], Awaitable[None]] | None = None,
        memory: MemoryModel | None = None,
        history: History | None = None,
        clock: Callable[[], float] = time.monotonic,
        warmer: PageCacheWarmer | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.instances: dict[str, EngineInstance] = {rt.key: rt for rt in runtimes.values()}
        self.current: dict[str, str] = {model: rt.key for model, rt in runtimes.items()}
        self._keys_used = set(self.instances)
        self.settings = settings
        self.memory = memory
        self.history = history or History(None)
        self.clock = clock
        self._metrics = metrics
        self._before_evict = before_evict
        self._pins: dict[str, bool] = {}  # pinned or unpinned at run time (POST /admin/pin), over the config
        self._estimates: dict[str, int | None] = {}  # by instance key: the footprint guessed from the files
        self.warmer = warmer
        self.events = events
        self.scheduler = Scheduler(
            memory.capacities() if memory else {},
            [self._spec(rt) for rt in runtimes.values() if rt.supervisor is not None],
            fairness_s=settings.fairness_s,
            drain_timeout_s=settings.drain_timeout_s,
            default_ttl_s=settings.idle_ttl_s,
        )
        for runtime in runtimes.values():
            median = self.history.get(runtime.model.id).median_load_s()
            if median is not None and self.scheduler.manages(runtime.key):
                self.scheduler.set_reload_cost(runtime.key, median)
            runtime.on_lost = self._lost_handler(runtime)
        self._ids: Iterator[int] = itertools.count(1)
        self._tickets: dict[int, Ticket] = {}
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._load_started: dict[str, float] = {}
        self._evictions: dict[str, asyncio.Task[None]] = {}
        self._evicted: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closing = False
        self._listeners: list[Callable[[str, str], None]] = []
        self._stopped: dict[str, asyncio.Event] = {}
        self._reloads = 0
        self.view = SwitchView(
            self.scheduler,
            self.instances,
            self.current,
            self._load_started,
            self.history,
            memory,
            clock,
            self._estimates,
        )
        self._statuses: dict[str, str] = {m: self.view.status(m) for m in self.current}

    def instance(self, model: str) -> EngineInstance:
        """The engine instance that serves `model`'s new requests."""
        return self.instances[self.current[model]]

    def _spec(self, runtime: EngineInstance) -> ModelSpec:
        model = runtime.model
        memory = self.memory
        enabled = memory is not None and memory.enabled
        devices = memory.devices_of(model) if memory is not None else (model.group or "default",)
        footprint = sleep_footprint = None
        estimated = False
        if enabled and memory is not None:
            learned = self.history.footprint(model.id, footprint_key(model))
            capacity = min((memory.capacities().get(d) or 0 for d in devices), default=0) or None
            if runtime.key not in self._estimates:  # an instance's files and devices never change: read them once
                self._estimates[runtime.key] = estimate_footprint(model, capacity, len(devices))
            estimate = self._estimates[runtime.key]
            footprint = model.memory or (max(learned.values()) if learned else None)
            if footprint is not None and capacity is not None and model.memory is None:
                footprint = min(footprint, capacity)  # learned: never "can never fit" because of a reserve
            if footprint is None:
                footprint = estimate
                estimated = footprint is not None
            asleep = self.history.get(model.id).sleep_footprint
            sleep_footprint = model.sleep_memory or (max(asleep.values()) if asleep else None)
        return ModelSpec(
            id=runtime.key,
            name=model.id,
            devices=devices,
            footprint=footprint,
            estimated=estimated,
            sleep_footprint=sleep_footprint or 0,
            sleeps=model.evict == "sleep" and runtime.adapter.supports_sleep,
            group=model.group if enabled else None,
            pinned=self._pins.get(model.id, model.pinned),
            ttl_s=model.ttl_s,
            # A first load compiles what later ones find cached: finished even when its clients left, or a client
            # timeout shorter than the compile would restart it from scratch at every request.
            cancel_abandoned=model.cancel_abandoned and self.history.loaded_before(model.id, model.revision),
        )

    # --- requests ------------------------------------------------------------------------

    def ticket(self, model: str) -> Ticket:
        """Claim `model` for one request; granted at once if it is resident and not draining."""
        ticket = Ticket(self, next(self._ids), model)
        self._tickets[ticket.request_id] = ticket
        if self.warmer is not None:
            self.warmer.touch(model)
        self.apply(self.scheduler.request(ticket.request_id, self.current[model], self.clock()))
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
                    ticket.runtime = self.instances.get(effect.model)
                    ticket.granted.set_result(None)
            elif isinstance(effect, Fail):
                ticket = self._tickets.pop(effect.request_id, None)
                if ticket is not None and not ticket.granted.done():
                    ticket.granted.set_exception(RequestFailed(effect.reason, effect.cause))
                    ticket.granted.exception()  # mark retrieved: a vanished client may never look
            elif isinstance(effect, Load):
                runtime = self.instances[effect.model]
                self._spawn(self._load(runtime), f"load-{effect.model}", self._loads, effect.model)
            elif isinstance(effect, Evict):
                self._evicted.setdefault(effect.model, asyncio.Event()).clear()
                runtime = self.instances[effect.model]
                self._spawn(self._evict(runtime, effect), f"evict-{effect.model}", self._evictions, effect.model)
            elif isinstance(effect, CancelLoad):
                task = self._loads.get(effect.model)
                if task is not None:
                    log.info("load of %s cancelled: every waiting client left", effect.model)
                    task.cancel()
        self._arm_timer()
        self._notify()
        self._warm_newcomers()
        for model, event in self._stopped.items():
            if self.scheduler.manages(model) and self.scheduler.phase(model) is Phase.STOPPED:
                event.set()
        for model, event in self._evicted.items():  # unload() waits for this, however the model got there
            if not self.scheduler.manages(model) or self.scheduler.phase(model) in (Phase.STOPPED, Phase.SLEEPING):
                event.set()

    def _warm_newcomers(self) -> None:
        """Models whose load is decided (waiting for victims, or loading) and that will read their weights: the
        warmer reads their files now, while the victims drain."""
        if self.warmer is None:
            return
        newcomers = set()
        for key, runtime in self.instances.items():
            phase = self.scheduler.phase(key) if self.scheduler.manages(key) else None
            if phase in (Phase.PENDING, Phase.LOADING) and runtime.state is not ModelState.SLEEPING:
                newcomers.add(runtime.model.id)
        self.warmer.newcomers(newcomers)

    def subscribe(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `listener(model, status)` on every status change; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for model in self.current:
            status = self.view.status(model)
            if self._statuses.get(model) != status:
                self._statuses[model] = status
                for listener in list(self._listeners):
                    try:
                        listener(model, status)
                    except Exception:
                        log.exception("status listener failed")

    def _spawn(self, coro: Awaitable[None], name: str, registry: dict[str, asyncio.Task[None]], key: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        registry[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm_timer(self) -> None:
        if self._closing:
            return
        deadline = self.scheduler.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            delay = max(deadline - self.clock(), 0.0) + 0.001
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.apply(self.scheduler.tick(self.clock()))

    # --- loads and evictions ---------------------------------------------------------------

    async def _load(self, runtime: EngineInstance) -> None:
        model = runtime.key
        started = self.clock()
        waking = runtime.state is ModelState.SLEEPING
        self._load_started[model] = started
        ok, reason, failure = True, "", None
        spec = self.scheduler.spec(model)
        try:
            if self.memory is not None and self.memory.enabled:
                short = await self.memory.wait_free(spec.devices, spec.footprint)
                if short:
                    log.warning(
                        "starting %s although memory is not free after %.0f s: %s",
                        model,
                        self.memory.settings.free_wait_s,
                        short,
                    )
            with self.warmer.loading() if self.warmer is not None else contextlib.nullcontext():
                await runtime.activate(
                    first_load=not self.history.loaded_before(runtime.model.id, runtime.model.revision)
                )
        except SwitchError as exc:
            ok, reason, failure = False, str(exc), exc.failure
            log.error("loading %s failed (%s): %s", model, failure.value, reason)
        except asyncio.CancelledError:
            if self._closing:
                raise
            ok, reason, failure = (
                False,
                f"loading {model} was cancelled: every waiting client left",
                LoadFailure.CANCELLED,
            )
            runtime.mark_stopped()
        except Exception as exc:  # a bug or an unexpected OS error must not wedge the scheduler
            ok, reason, failure = False, f"{model}: {type(exc).__name__}: {exc}", LoadFailure.INTERNAL
            runtime.record_failure(failure, reason)
            log.exception("loading %s failed", model)
        finally:
            self._loads.pop(model, None)
        elapsed = self.clock() - started
        name = runtime.model.id  # history and metrics: the model's own id, also for a retiring engine
        if self._metrics is not None:
            self._metrics.switch_done(name, failure.value if failure is not None else "ok", elapsed)
        if ok:
            self.history.record_load(name, runtime.load_seconds or elapsed, runtime.model.revision)
            self.history.record_asleep(name, None)
            await self._learn(runtime, asleep=False)
        if not self.scheduler.manages(model):  # a config reload retired and forgot it meanwhile
            return
        if ok:
            self.scheduler.set_reload_cost(model, self.history.get(name).median_load_s() or elapsed)
            spec = self.scheduler.spec(model)
            self.scheduler.set_spec(replace(spec, cancel_abandoned=runtime.model.cancel_abandoned))
        log.info("load of %s %s in %.2f s", model, "done" if ok else "FAILED", elapsed)
        if self.events is not None:
            self.events.publish(
                "switch",
                action="wake" if waking else "load",
                model=name,
                ok=ok,
                seconds=round(elapsed, 3),
                **({"failure": failure.value if failure is not None else None, "reason": reason} if not ok else {}),
            )
        self.apply(self.scheduler.load_done(model, ok, reason, self.clock()))

    async def _evict(self, runtime: EngineInstance, evict: Evict) -> None:
        """Sleep or stop the engine (`evict.stop`: the scheduler wants it stopped, e.g. requests cut at a drain bound
        may still run in it), then report to the scheduler."""
        model = runtime.key
        stop = evict.stop
        started = self.clock()
        log.info("evicting %s (%s): %s", model, evict.cause.value, evict.reason)
        runtime.last_eviction = {"cause": evict.cause.value, "reason": evict.reason, "at": round(time.time(), 3)}
        if self._metrics is not None:
            self._metrics.evictions.labels(runtime.model.id, evict.cause.value).inc()
        try:
            if self._before_evict is not None:
                await self._before_evict(runtime)
            if not stop and runtime.may_sleep and runtime.state is ModelState.READY and runtime.supervisor is not None:
                # Before the sleep request: a router that dies meanwhile adopts the engine as asleep at its next
                # start (runtime.inspect), which SGLang cannot tell itself.
                pids = await runtime.supervisor.pids()
                self.history.record_asleep(runtime.model.id, pids[0] if pids else None, runtime.fingerprint)
            await runtime.deactivate(stop=stop)
        except Exception as exc:
            log.exception("evicting %s failed", model)
            await self._until_gone(runtime, exc)
        finally:
            self._evictions.pop(model, None)
        slept = runtime.state is ModelState.SLEEPING
        if self.events is not None:
            self.events.publish(
                "switch",
                action="sleep" if slept else "stop",
                model=runtime.model.id,
                cause=evict.cause.value,
                reason=evict.reason,
                seconds=round(self.clock() - started, 3),
            )
        if not slept:
            self.history.record_asleep(runtime.model.id, None)
        if slept:
            await self._learn(runtime, asleep=True)
        if self.scheduler.manages(model):
            self.apply(self.scheduler.evict_done(model, slept, self.clock()))

    async def _until_gone(self, runtime: EngineInstance, error: Exception) -> None:
        """A sleep or stop that failed may leave the engine holding its memory: the eviction stays under way (its
        memory counted, the newcomer waiting) until the engine is gone, asked to stop again with backoff."""
        supervisor = runtime.supervisor
        delay = 0.05
        while supervisor is not None and await supervisor.is_running():
            runtime.last_error = f"could not be stopped: {error}"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await runtime.deactivate(stop=True)
            except Exception as exc:
                log.warning("stopping %s failed again: %s", runtime.model.id, exc)
                error = exc
        log.info("model %s is gone after a failed eviction", runtime.model.id)

    async def _learn(self, runtime: EngineInstance, asleep: bool) -> None:
        """Measure what the engine uses now and let the scheduler count with it from here on."""
        memory = self.memory
        model = runtime.model.id
        if memory is None or not memory.enabled or runtime.supervisor is None:
            return
        try:
            pids = await runtime.supervisor.pids()
            usage = await asyncio.to_thread(memory.measure, runtime.model, pids)
        except Exception as exc:
            log.warning("cannot measure the memory of %s: %s", model, exc)
            return
        if not usage or not any(usage.values()):
            return
        self.history.record_footprint(runtime.model.id, footprint_key(runtime.model), usage, asleep=asleep)
        measured = max(usage.values())
        capacities = [c for d, c in memory.capacities().items() if d in usage and c is not None]
        if capacities:  # more than a device holds (a reserve, a CUDA context): it needs the device to itself
            measured = min(measured, min(capacities))
        model = runtime.key
        if not self.scheduler.manages(model):
            return
        if runtime.model.memory is None and not asleep:
            self.scheduler.set_footprint(model, measured)
        elif asleep and runtime.model.sleep_memory is None:
            self.scheduler.set_footprint(model, self.scheduler.spec(model).footprint, measured)
        log.info(
            "%s uses %s%s (%s)",
            model,
            format_bytes(measured),
            " asleep" if asleep else "",
            ", ".join(f"{d}: {format_bytes(b)}" for d, b in sorted(usage.items())),
        )

    def _lost_handler(self, runtime: EngineInstance) -> Callable[[str, str], None]:
        """The runtime reports its model's id; the scheduler knows it by its instance key."""
        return lambda _model, how: self._engine_lost(runtime.key, how)

    def _engine_lost(self, model: str, how: str) -> None:
        log.warning("model %s lost its engine (%s); the next request loads it again", model, how)
        self.apply(self.scheduler.engine_lost(model, self.clock()))

    def mark_unreachable(self, runtime: EngineInstance) -> None:
        """The proxy could not connect to a supposedly ready engine: reload it on the next request."""
        model = runtime.key
        if (
            self.instances.get(model) is runtime
            and runtime.supervisor is not None
            and runtime.state is ModelState.READY
        ):
            runtime.state = ModelState.FAILED
            runtime.last_error = "engine refused connections"
            self.apply(self.scheduler.engine_lost(model, self.clock()))

    # --- config reload: the old engine of a changed or removed model keeps its key, drains and stops like any
    # eviction, and is forgotten; the new definition of a changed model is a new instance under a new key, in a
    # temporary exclusive group with the old one, so it cannot start (maybe the same systemd unit) before the old
    # one is gone.

    def _new_key(self, model: str) -> str:
        """The model's id, or `<id>#<reload>` once the id was used: a key is never reused, so a request still
        counted on an old instance (a remote API's stream) never counts on a new one (any id may contain "#")."""
        key, reload = model, self._reloads
        while key in self._keys_used:
            key, reload = f"{model}#{reload}", reload + 1
        self._keys_used.add(key)
        return key

    async def reconfigure(self, runtimes: dict[str, EngineInstance], changed: set[str], removed: set[str]) -> None:
        """Apply a reloaded config. `runtimes` are the new engines of added and changed models; unchanged models
        keep running and keep their requests. The old engines of changed and removed models drain, stop and are
        forgotten; requests waiting for a changed model wait for its new definition, those for a removed one fail."""
        self._reloads += 1
        now = self.clock()
        retiring = {model: self.current.pop(model) for model in sorted(changed | removed)}
        for model in removed:
            self._statuses.pop(model, None)
        for model, old in list(retiring.items()):
            if not self.scheduler.manages(old):  # a remote API: nothing to drain or stop (requests hold their instance)
                del retiring[model]
                self.instances.pop(old)
        for model, runtime in runtimes.items():
            runtime.key = self._new_key(model)
            runtime.on_lost = self._lost_handler(runtime)
            self.instances[runtime.key] = runtime
            self.current[model] = runtime.key
            if runtime.supervisor is not None:
                spec = self._spec(runtime)
                if model in retiring:  # not before the old engine (maybe the same systemd unit) is gone
                    group = f"~reload-{model}"
                    old = retiring[model]
                    # Retiring, the old engine is no longer pinned: it would make its successor "never fit".
                    self.scheduler.set_spec(replace(self.scheduler.spec(old), group=group, pinned=False))
                    spec = replace(spec, group=group)
                self.scheduler.add(spec)
            self._statuses[model] = self.view.status(model)
        for model, old in retiring.items():
            self._stopped[old] = asyncio.Event()
            log.info(
                "config reload: %s %s; its engine drains and stops", model, "changed" if model in changed else "removed"
            )
            successor = self.current.get(model)
            managed = successor is not None and self.scheduler.manages(successor)
            effects = self.scheduler.retire(old, self.clock(), successor if managed else None)
            if successor is not None and not managed:  # now a remote API: its waiters are served there at once
                moved = [e for e in effects if isinstance(e, Fail) and e.cause is FailCause.REMOVED]
                effects = [e for e in effects if e not in moved]
                effects += [g for e in moved for g in self.scheduler.request(e.request_id, successor, self.clock())]
            self.apply(effects)
        for model, old in retiring.items():
            try:
                await self._stopped[old].wait()
            finally:  # each retiring engine is forgotten, whatever happened to the others
                del self._stopped[old]
                self.scheduler.remove(old)
                retired = self.instances.pop(old, None)
                self._estimates.pop(old, None)
                if retired is not None:
                    await retired.close()
                successor = self.current.get(model)
                if successor is not None and self.scheduler.manages(successor):
                    self.scheduler.set_spec(self._spec(self.instances[successor]))
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

    # --- admin ---------------------------------------------------------------------------

    async def set_pinned(self, model: str, pinned: bool) -> None:
        """Pin (never evicted, no idle unload; loaded now if it is not resident) or unpin `model` until the router
        restarts; a config reload that changes the model keeps the choice."""
        self._pins[model] = pinned
        key = self.current[model]
        if not self.scheduler.manages(key):
            return
        self.scheduler.set_spec(replace(self.scheduler.spec(key), pinned=pinned))
        self.apply([])
        if pinned and self.scheduler.phase(key) not in (Phase.READY, Phase.DRAINING, Phase.LOADING):
            await self.load(model)

    async def load(self, model: str) -> None:
        """Make `model` resident as if a request came, without serving anything."""
        ticket = self.ticket(model)
        try:
            await ticket.wait()
        finally:
            ticket.release()

    async def unload(self, model: str) -> bool:
        """Evict `model` (after its requests finish); returns whether anything was unloaded."""
        model = self.current.get(model, model)
        if not self.scheduler.manages(model):
            return False
        before = self.scheduler.phase(model)
        if before not in (Phase.READY, Phase.SLEEPING):
            return False
        event = self._evicted.setdefault(model, asyncio.Event())
        event.clear()
        self.apply(self.scheduler.unload(model, self.clock()))
        await event.wait()
        return True

    # --- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt engines that already run (systemd units survive a router restart), then preload."""
        now = self.clock()
        for runtime in self.instances.values():
            if runtime.supervisor is None:
                continue
            model, key = runtime.model.id, runtime.key
            if not await runtime.supervisor.is_running():
                continue
            record = self.history.sleep_record(model)
            state = await runtime.inspect(record)
            if state is None:
                await runtime.supervisor.stop()
            elif self.scheduler.fits_now(key, asleep=state is ModelState.SLEEPING):
                runtime.take_over(state, record.fingerprint)
                self.scheduler.adopt(key, now, asleep=state is ModelState.SLEEPING)
                if state is ModelState.SLEEPING:
                    continue
            else:
                log.info("model %s is running but does not fit next to the adopted ones: stopping it", model)
                await runtime.supervisor.stop()
            self.history.record_asleep(model, None)
        for runtime in self.instances.values():
            if runtime.supervisor is not None and (runtime.model.preload or runtime.model.pinned):
                self._tasks.add(
                    asyncio.create_task(self._preload(runtime.model.id), name=f"preload-{runtime.model.id}")
                )
        self._arm_timer()

    async def _preload(self, model: str) -> None:
        try:
            await self.load(model)
            log.info("preloaded %s", model)
        except SwitchError as exc:
            log.error("preloading %s failed: %s", model, exc)

    async def shutdown(self, stop_engines: bool) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if stop_engines:
            await asyncio.gather(*(rt.shutdown() for rt in self.instances.values()))
        await asyncio.gather(*(rt.close() for rt in self.instances.values()))
