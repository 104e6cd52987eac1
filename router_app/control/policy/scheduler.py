"""Pure scheduling decisions: which models are resident, which load, which are evicted, who waits.

No I/O, no clock and no asyncio here: the owner (`router_app.control.switcher`) feeds events in with the
current time and carries out the effects that come back. Policy:

- Memory is counted per device (`router_app.control.policy.placement`). A model loads as soon as it fits next to
  what is resident; otherwise victims are chosen (idle before busy, cheapest to reload, least
  recently used; never pinned, never loading) and evicted first.
- A model with requests in flight is never evicted: it drains first (up to the owner's drain bound).
- New requests for a resident model keep being served while others wait for it to leave, until the
  oldest waiter has waited `fairness_s` (counted from when that resident became ready, so a model
  just loaded serves at least that long); then it drains and the switch happens, and everything
  queued for the newcomer is granted at once.
- A model that can never fit (bigger than its device, pinned models counted) fails at once.
- Idle models are evicted after their TTL; a load nobody waits for any more is cancelled where the
  model says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from router_app.control.policy.placement import Candidate, choose_victims, format_bytes, units
from router_app.control.policy.vocabulary import (
    CancelLoad,
    Effect,
    Evict,
    EvictCause,
    Fail,
    FailCause,
    Grant,
    Load,
    ModelSpec,
    Phase,
    Waiting,
)

__all__ = [
    "CancelLoad",
    "Effect",
    "Evict",
    "EvictCause",
    "Fail",
    "FailCause",
    "Grant",
    "Load",
    "ModelSpec",
    "Phase",
    "Scheduler",
    "Waiting",
]


@dataclass
class _Model:
    spec: ModelSpec
    phase: Phase = Phase.STOPPED
    inflight: int = 0
    waiters: dict[int, float] = field(default_factory=dict)  # request id -> arrival, oldest first
    last_used: float = 0.0
    ready_since: float = 0.0
    draining_since: float = 0.0
    reload_cost_s: float = 0.0
    victims: tuple[str, ...] = ()  # while PENDING
    waking: bool = False  # PENDING from SLEEPING: its engine holds its sleep footprint until the load starts
    blocked_by: tuple[str, ...] = ()
    cancelling: bool = False  # its load was cancelled; requests that came since wait for a fresh one
    retiring: bool = False  # removed or replaced by a config reload: evicted as soon as it can be
    leaving: Evict | None = None  # the eviction decided last: read while it drains or is evicted

    @property
    def stopping(self) -> bool:
        """Evicted (or draining) to stop, not to sleep."""
        return self.leaving is not None and self.leaving.stop


# An idle model that others wait for stays this share of its reload cost (see _lingers_until).
LINGER_SHARE = 0.1

_FULL = (Phase.PENDING, Phase.LOADING, Phase.READY)
_LEAVING = (Phase.DRAINING, Phase.EVICTING)


class Scheduler:
    """All scheduling state. `devices` maps device name to capacity in bytes (None: unknown, holds one model)."""

    def __init__(
        self,
        devices: dict[str, int | None],
        models: Iterable[ModelSpec],
        fairness_s: float = 10.0,
        drain_timeout_s: float | None = None,
        default_ttl_s: float | None = None,
    ) -> None:
        self.devices = dict(devices)
        self._models = {spec.id: _Model(spec) for spec in models}
        for spec in self._models.values():
            for device in spec.spec.devices:
                self.devices.setdefault(device, None)
        self.fairness_s = fairness_s
        self.drain_timeout_s = drain_timeout_s
        self.default_ttl_s = default_ttl_s
        self._granted: dict[int, str] = {}

    # --- queries -------------------------------------------------------------------------

    def phase(self, model: str) -> Phase:
        return self._models[model].phase

    def inflight(self, model: str) -> int:
        return self._models[model].inflight if model in self._models else 0

    def spec(self, model: str) -> ModelSpec:
        return self._models[model].spec

    def manages(self, model: str) -> bool:
        return model in self._models

    def resident(self) -> list[str]:
        """Models that serve or are about to (ready, draining, loading)."""
        return [m for m, s in self._models.items() if s.phase in (Phase.READY, Phase.DRAINING, Phase.LOADING)]

    def last_used(self, model: str) -> float:
        return self._models[model].last_used

    def ttl(self, model: str) -> float | None:
        """How long `model` may stay idle before it is unloaded (None: never; pinned models never)."""
        return self._ttl(self._models[model])

    def waiting(self, request_id: int) -> Waiting | None:
        for state in self._models.values():
            since = state.waiters.get(request_id)
            if since is None:
                continue
            draining = tuple(
                (v, self._models[v].inflight) for v in state.victims if self._models[v].phase is Phase.DRAINING
            )
            evicting = tuple(v for v in state.victims if self._models[v].phase is Phase.EVICTING)
            return Waiting(state.spec.id, state.phase, since, draining, evicting, state.blocked_by)
        return None

    def used(self, device: str) -> int:
        """Memory (units of the device) held right now by models on it."""
        return sum(self._held(state, device) for state in self._models.values())

    def next_deadline(self) -> float | None:
        """When `tick` may have something to do (TTL, fairness or drain bound), or None."""
        times: list[float] = []
        for state in self._models.values():
            ttl = self._ttl(state)
            if state.phase is Phase.READY and state.inflight == 0 and ttl is not None:
                times.append(state.last_used + ttl)
            if state.phase is Phase.DRAINING and self.drain_timeout_s is not None:
                times.append(state.draining_since + self.drain_timeout_s)
            # Only a model that `_plan` advances (stopped or asleep) may wait on its blockers: one being evicted
            # keeps its old `blocked_by`, whose deadline would stay due (a timer spinning).
            if state.blocked_by and state.waiters and state.phase in (Phase.STOPPED, Phase.SLEEPING):
                blockers = [self._models[b] for b in state.blocked_by if b in self._models]
                start = max([next(iter(state.waiters.values()))] + [b.ready_since for b in blockers])
                times.append(start + self.fairness_s)
                times += [self._lingers_until(b) for b in blockers if b.phase is Phase.READY and not b.inflight]
        return min(times) if times else None

    # --- events --------------------------------------------------------------------------

    def request(self, request_id: int, model: str, now: float) -> list[Effect]:
        """A request for `model` arrived."""
        state = self._models.get(model)
        if state is None or state.phase is Phase.READY:
            return [self._grant(request_id, model)]
        state.waiters[request_id] = now
        return self._plan(now)

    def release(self, request_id: int, now: float) -> list[Effect]:
        """A granted request finished (or its client went away)."""
        model = self._granted.pop(request_id, None)
        state = self._models.get(model or "")
        if state is None:
            return []
        state.inflight -= 1
        if state.inflight:
            return []
        state.last_used = now
        effects: list[Effect] = []
        if state.phase is Phase.DRAINING:
            leaving = state.leaving
            assert leaving is not None, "a draining model knows why it leaves"
            effects += self._evict(state, leaving.reason, leaving.cause, leaving.stop)
        return effects + self._plan(now)

    def cancel(self, request_id: int, now: float) -> list[Effect]:
        """A request's client went away: release it if granted, else stop waiting."""
        if request_id in self._granted:
            return self.release(request_id, now)
        for state in self._models.values():
            if state.waiters.pop(request_id, None) is None:
                continue
            if state.waiters:
                return []
            if state.phase is Phase.LOADING and state.spec.cancel_abandoned and not state.cancelling:
                state.cancelling = True
                return [CancelLoad(state.spec.id)]
            if state.phase is Phase.PENDING:  # back to what it was: stopped, or asleep
                state.phase, state.victims = (Phase.SLEEPING if state.waking else Phase.STOPPED), ()
                state.waking = False
                return self._plan(now)
            state.blocked_by = ()
            return []
        return []

    def load_done(self, model: str, ok: bool, reason: str, now: float) -> list[Effect]:
        """The load of `model` finished: everything waiting for it is granted (or failed) at once."""
        state = self._models[model]
        if state.phase is not Phase.LOADING:
            return []
        cancelled, state.cancelling = state.cancelling, False
        if not ok and cancelled:  # requests that came after the cancel get a fresh load, not this failure
            state.phase = Phase.STOPPED
            return self._plan(now)
        waiters = list(state.waiters)
        state.waiters.clear()
        if ok:
            state.phase, state.ready_since, state.last_used = Phase.READY, now, now
            effects: list[Effect] = [self._grant(rid, model) for rid in waiters]
            if state.retiring:  # its load finished after a config reload retired it
                effects += self.unload(model, now, "configuration changed", EvictCause.RECONFIGURED)
        else:
            state.phase = Phase.STOPPED
            effects = [Fail(rid, model, reason) for rid in waiters]
        return effects + self._plan(now)

    def evict_done(self, model: str, slept: bool, now: float) -> list[Effect]:
        """`model` is stopped (or asleep, holding only its sleep footprint)."""
        state = self._models[model]
        state.phase = Phase.SLEEPING if slept else Phase.STOPPED
        if slept and state.retiring:  # a retired engine must stop, not sleep: evict again (a sleeper is stopped)
            return self._evict(state, "configuration changed", EvictCause.RECONFIGURED)
        return self._plan(now)

    def engine_lost(self, model: str, now: float) -> list[Effect]:
        """The engine died on its own: its memory is free; the next request loads it again."""
        state = self._models.get(model)
        if state is not None and state.phase is Phase.PENDING and state.waking:  # a sleeper waiting to wake
            state.waking = False
            return self._plan(now)
        if state is None or state.phase not in (Phase.READY, Phase.DRAINING, Phase.SLEEPING):
            return []
        state.phase = Phase.STOPPED
        return self._plan(now)

    def adopt(self, model: str, now: float, asleep: bool = False) -> None:
        """At start-up: `model` is found running, ready or asleep."""
        state = self._models[model]
        state.phase, state.ready_since, state.last_used = (Phase.SLEEPING if asleep else Phase.READY), now, now

    def unload(
        self, model: str, now: float, reason: str = "unloaded on request", cause: EvictCause = EvictCause.REQUEST
    ) -> list[Effect]:
        """Evict `model` without loading another (drains first). No-op unless it is ready or asleep."""
        state = self._models.get(model)
        if state is None:
            return []
        if state.phase is Phase.SLEEPING:
            return self._evict(state, reason, cause)
        if state.phase is not Phase.READY:
            return []
        if state.inflight:
            self._drain(state, now, reason, cause)
            return []
        return self._evict(state, reason, cause)

    def tick(self, now: float) -> list[Effect]:
        """Time passed: idle TTLs, drain bounds and fairness bounds."""
        effects: list[Effect] = []
        for state in self._models.values():
            ttl = self._ttl(state)
            if state.phase is Phase.READY and state.inflight == 0 and ttl is not None and now - state.last_used >= ttl:
                reason = f"idle for {now - state.last_used:.0f} s (ttl {ttl:.0f} s)"
                effects += self._evict(state, reason, EvictCause.TTL)
            elif (
                state.phase is Phase.DRAINING
                and self.drain_timeout_s is not None
                and now - state.draining_since >= self.drain_timeout_s
            ):
                # Requests cut at the bound may still run in the engine: a sleep would release memory under them
                # (SGLang 0.5.23 asserts an idle scheduler, weight_updater.py:339-341), so it stops.
                reason = f"{state.inflight} request(s) still running after drain timeout"
                effects += self._evict(state, reason, EvictCause.DRAIN_TIMEOUT, stop=True)
        return effects + self._plan(now)

    def set_footprint(self, model: str, footprint: int | None, sleep_footprint: int | None = None) -> None:
        """A learned footprint replaces the estimate (the owner measured it)."""
        state = self._models[model]
        spec = state.spec
        state.spec = ModelSpec(
            **{
                **spec.__dict__,
                "footprint": footprint,
                "estimated": False,
                "sleep_footprint": spec.sleep_footprint if sleep_footprint is None else sleep_footprint,
            }
        )

    def fits_now(self, model: str, asleep: bool = False) -> bool:
        """Whether `model` (awake, or asleep) fits next to what holds memory now (adopting engines at start)."""
        state = self._models[model]
        return all(
            sum(self._held(o, d) for o in self._models.values() if o is not state) + self._units(state, d, not asleep)
            <= self._capacity(d)
            for d in state.spec.devices
        )

    # --- reconfiguration (config reload) ------------------------------------------------------

    def add(self, spec: ModelSpec) -> None:
        """A model new to the config (stopped)."""
        self._models[spec.id] = _Model(spec)
        for device in spec.devices:
            self.devices.setdefault(device, None)

    def retire(self, model: str, now: float, successor: str | None) -> list[Effect]:
        """Stop `model` for good: its waiters move to `successor` (or fail), a load in progress is cancelled,
        a resident engine drains and is evicted. `remove` it once it is stopped."""
        state = self._models[model]
        state.retiring = True
        effects: list[Effect] = []
        waiters = dict(state.waiters)
        state.waiters.clear()
        if successor is not None and successor in self._models:
            self._models[successor].waiters.update(waiters)
        else:
            effects += [
                Fail(rid, model, "the model was removed from the configuration", FailCause.REMOVED) for rid in waiters
            ]
        if state.phase is Phase.PENDING:  # back to what it was; asleep, it is evicted below
            state.phase, state.victims = (Phase.SLEEPING if state.waking else Phase.STOPPED), ()
            state.waking = False
        if state.phase is Phase.LOADING:
            effects.append(CancelLoad(model))
        elif state.phase in (Phase.READY, Phase.SLEEPING):
            effects += self.unload(model, now, "configuration changed", EvictCause.RECONFIGURED)
        return effects + self._plan(now)

    def remove(self, model: str) -> None:
        """Forget a stopped model. Requests still counted on it (a drain that timed out, an engine that died)
        end without effect: their engine is gone."""
        self._models.pop(model)
        for rid in [rid for rid, granted in self._granted.items() if granted == model]:
            del self._granted[rid]
        for other in self._models.values():  # what others wait on names it no more
            other.victims = tuple(v for v in other.victims if v != model)
            other.blocked_by = tuple(b for b in other.blocked_by if b != model)

    def set_spec(self, spec: ModelSpec) -> None:
        self._models[spec.id].spec = spec

    def set_capacity(self, device: str, capacity: int | None) -> None:
        self.devices[device] = capacity

    def set_reload_cost(self, model: str, seconds: float) -> None:
        self._models[model].reload_cost_s = seconds

    # --- internals -----------------------------------------------------------------------

    def _ttl(self, state: _Model) -> float | None:
        if state.spec.pinned:
            return None
        return state.spec.ttl_s if state.spec.ttl_s is not None else self.default_ttl_s

    def _lingers_until(self, state: _Model) -> float:
        """An idle model others wait for is kept a moment for its clients' follow-up requests (a chat UI asks for a
        title right after an answer): LINGER_SHARE of what loading it again would cost, at most `fairness_s`."""
        return state.last_used + min(LINGER_SHARE * state.reload_cost_s, self.fairness_s)

    def _grant(self, request_id: int, model: str) -> Grant:
        self._granted[request_id] = model
        state = self._models.get(model)
        if state is not None:
            state.inflight += 1
        return Grant(request_id, model)

    def _evict(self, state: _Model, reason: str, cause: EvictCause, stop: bool = False) -> list[Effect]:
        state.phase, state.leaving = Phase.EVICTING, Evict(state.spec.id, reason, stop, cause)
        return [state.leaving]

    def _drain(self, state: _Model, now: float, reason: str, cause: EvictCause, stop: bool = False) -> None:
        """Evict `state` once its requests in flight end (or the drain bound passes)."""
        state.phase, state.draining_since = Phase.DRAINING, now
        state.leaving = Evict(state.spec.id, reason, stop, cause)

    def _units(self, state: _Model, device: str, resident: bool) -> int:
        capacity = self.devices.get(device)
        if not resident:
            return 0 if capacity is None else min(state.spec.sleep_footprint, capacity)
        footprint = units(capacity, state.spec.footprint)[1]
        if state.spec.estimated and capacity is not None:  # a guess: at most what the pinned models leave
            return max(min(footprint, capacity - self._pinned_reserve(device, state)), 1)
        return footprint

    def _pinned_reserve(self, device: str, exclude: _Model) -> int:
        capacity = self.devices.get(device)
        if capacity is None:
            return 0
        return sum(
            min(units(capacity, o.spec.footprint)[1], capacity)
            for o in self._models.values()
            if o is not exclude and o.spec.pinned and device in o.spec.devices
        )

    def _held(self, state: _Model, device: str) -> int:
        """What `state` holds on `device` right now."""
        if device not in state.spec.devices:
            return 0
        if state.phase in (Phase.LOADING, Phase.READY, Phase.DRAINING, Phase.EVICTING):
            return self._units(state, device, True)
        if state.phase is Phase.SLEEPING or (state.phase is Phase.PENDING and state.waking):
            return self._units(state, device, False)
        return 0

    def _projected(self, state: _Model, device: str) -> int:
        """What `state` will hold on `device` once the moves under way are done."""
        if device not in state.spec.devices:
            return 0
        if state.phase in _FULL:
            return self._units(state, device, True)
        if state.phase is Phase.SLEEPING or (state.phase in _LEAVING and state.spec.sleeps and not state.stopping):
            return self._units(state, device, False)
        return 0

    def _after_evict(self, state: _Model, device: str, stop: bool = False) -> int:
        return self._units(state, device, False) if state.spec.sleeps and not stop else 0

    def _capacity(self, device: str) -> int:
        return units(self.devices.get(device), None)[0]

    def _never_fits(self, state: _Model) -> str | None:
        group = state.spec.group
        if group is not None:
            for other in self._models.values():
                if other is not state and other.spec.pinned and other.spec.group == group:
                    pinned = other.spec.name
                    return f"{state.spec.name} shares exclusive group {group} with pinned {pinned}, which never leaves"
        for device in state.spec.devices:
            capacity = self.devices.get(device)
            pinned = [
                other
                for other in self._models.values()
                if other is not state and other.spec.pinned and device in other.spec.devices
            ]
            if capacity is None:
                if pinned:
                    names = ", ".join(o.spec.name for o in pinned)
                    return f"{state.spec.name} needs device {device} to itself, but pinned {names} never leaves"
                continue
            need = self._units(state, device, True)
            reserved = self._pinned_reserve(device, state)
            if need + reserved > capacity:
                extra = f" ({format_bytes(reserved)} of it held by pinned models)" if reserved else ""
                return (
                    f"{state.spec.name} needs {format_bytes(need)} on device {device}, which has "
                    f"{format_bytes(capacity)}{extra}; it can never be loaded there"
                )
        return None

    def _plan(self, now: float) -> list[Effect]:
        """Move every waiting model as far as it can go, oldest waiter first."""
        effects: list[Effect] = []
        waiting = [s for s in self._models.values() if s.waiters and s.phase in (Phase.STOPPED, Phase.SLEEPING)]
        waiting += [s for s in self._models.values() if s.phase is Phase.PENDING]
        for state in sorted(waiting, key=lambda s: min(s.waiters.values(), default=now)):
            effects += self._advance(state, now)
        return effects

    def _advance(self, state: _Model, now: float) -> list[Effect]:
        if state.phase is Phase.PENDING:
            return self._start_if_free(state)
        reason = self._never_fits(state)
        if reason is not None:
            failed = [Fail(rid, state.spec.id, reason, FailCause.TOO_LARGE) for rid in state.waiters]
            state.waiters.clear()
            return list(failed)
        same_group = [
            o
            for o in self._models.values()
            if o is not state and state.spec.group is not None and o.spec.group == state.spec.group
        ]
        if any(o.phase in (Phase.PENDING, Phase.LOADING) for o in same_group):
            state.blocked_by = ()
            return []
        forced = [o for o in same_group if o.phase is Phase.READY and not o.spec.pinned]
        evictable = [
            o
            for o in self._models.values()
            if o is not state and o not in forced and not o.spec.pinned and o.phase in (Phase.READY, Phase.SLEEPING)
        ]
        stop = False
        chosen = self._victims(state, forced, evictable, stop)
        if chosen is None:  # a sleeper's sleep footprint is in the way: stopping instead of sleeping may do
            stop = True
            chosen = self._victims(state, forced, evictable, stop)
        if chosen is None:
            state.blocked_by = ()
            moving = (Phase.PENDING, Phase.LOADING, Phase.DRAINING, Phase.EVICTING)
            if any(
                o is not state and o.phase in moving and set(o.spec.devices) & set(state.spec.devices)
                for o in self._models.values()
            ):
                return []  # memory is on its way back (or being taken): wait for the next event
            reason = f"{state.spec.name} does not fit next to the models that cannot be evicted on its devices"
            failed = [Fail(rid, state.spec.id, reason, FailCause.TOO_LARGE) for rid in state.waiters]
            state.waiters.clear()
            return list(failed)
        victims = [self._models[c.model] for c in chosen] + forced
        busy = [v for v in victims if v.phase is Phase.READY and (v.inflight > 0 or now < self._lingers_until(v))]
        if busy:
            start = max([min(state.waiters.values())] + [v.ready_since for v in busy])
            if now - start < self.fairness_s:
                state.blocked_by = tuple(v.spec.id for v in busy)
                return []
        state.blocked_by = ()
        effects: list[Effect] = []
        reason = f"making room for {state.spec.name}"
        for victim in victims:
            if victim.phase is Phase.READY and victim.inflight:
                self._drain(victim, now, reason, EvictCause.MEMORY, stop)
            else:
                effects += self._evict(victim, reason, EvictCause.MEMORY, stop and victim.phase is Phase.READY)
        state.waking = state.phase is Phase.SLEEPING
        state.phase, state.victims = Phase.PENDING, tuple(v.spec.id for v in victims)
        return effects + self._start_if_free(state)

    def _victims(
        self, state: _Model, forced: list[_Model], evictable: list[_Model], stop: bool
    ) -> list[Candidate] | None:
        """The models to evict besides `forced` so that `state` fits, or None (`stop`: sleepers are stopped)."""
        needed: dict[str, int] = {}
        for device in state.spec.devices:
            projected = sum(self._projected(o, device) for o in self._models.values() if o is not state)
            projected -= sum(self._projected(o, device) - self._after_evict(o, device, stop) for o in forced)
            needed[device] = self._units(state, device, True) - (self._capacity(device) - projected)
        return choose_victims(needed, self._candidates(evictable, stop))

    def _candidates(self, evictable: list[_Model], stop: bool) -> list[Candidate]:
        """What evicting each model would free per device: a ready sleeper keeps its sleep footprint unless it
        is stopped; a sleeping one frees it."""
        return [
            Candidate(
                model=o.spec.id,
                frees={d: self._projected(o, d) - self._after_evict(o, d, stop) for d in o.spec.devices}
                if o.phase is Phase.READY
                else {d: self._projected(o, d) for d in o.spec.devices},
                busy=o.inflight > 0,
                reload_cost_s=o.reload_cost_s,
                last_used=o.last_used,
            )
            for o in evictable
        ]

    def _start_if_free(self, state: _Model) -> list[Effect]:
        group = state.spec.group
        if group is not None and any(
            o is not state and o.spec.group == group and o.phase not in (Phase.STOPPED, Phase.SLEEPING, Phase.PENDING)
            for o in self._models.values()
        ):
            return []
        for device in state.spec.devices:
            # Now and once the moves under way end: a sleeper being evicted may hold more asleep than awake.
            others = sum(
                max(self._held(o, device), self._projected(o, device)) for o in self._models.values() if o is not state
            )
            if others + self._units(state, device, True) > self._capacity(device):
                return []
        state.phase, state.victims, state.waking = Phase.LOADING, (), False
        return [Load(state.spec.id)]
