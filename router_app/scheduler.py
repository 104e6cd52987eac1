"""Pure switching decisions: who runs, who is evicted, who waits.

No I/O and no asyncio here. The switch owner (`router_app.switcher`) feeds events in and
carries out the effects that come back. Policy: each GPU group holds one resident model
(exclusive). Requests for the resident model go straight through; a request for another
model starts one switch, later requests for the same target join it, and requests for yet
another model queue FIFO behind it. A model is never evicted while it has requests in
flight: the switch waits for them to drain (the owner bounds that wait).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Grant:
    """The request may go to its model now."""

    request_id: int
    model: str


@dataclass(frozen=True)
class Fail:
    """The request cannot be served: its switch failed."""

    request_id: int
    model: str
    reason: str


@dataclass(frozen=True)
class BeginSwitch:
    """Stop (or sleep) `evict`, then make `target` resident. `target` None means unload only.

    When `drain` is true, `evict` still has requests in flight: wait for `Drained` first.
    """

    group: str
    target: str | None
    evict: str | None
    drain: bool


@dataclass(frozen=True)
class Drained:
    """The model being evicted in `group` has no requests in flight any more."""

    group: str
    model: str


Effect = Grant | Fail | BeginSwitch | Drained


@dataclass
class _Switch:
    target: str | None
    evict: str | None
    joiners: list[int] = field(default_factory=list)
    draining: bool = False


@dataclass
class _Group:
    resident: str | None = None
    switch: _Switch | None = None
    queue: deque[tuple[int, str]] = field(default_factory=deque)


@dataclass(frozen=True)
class Waiting:
    """Where a waiting request stands, for progress messages."""

    model: str
    joined_switch: bool
    queue_position: int
    switch_target: str | None
    switch_evict: str | None
    draining: bool


class Scheduler:
    """Switching state for all groups. `groups` maps each local model id to its GPU group;
    models not in the map (remote endpoints) are always granted."""

    def __init__(self, groups: dict[str, str]) -> None:
        self._group_of = dict(groups)
        self._groups: dict[str, _Group] = {name: _Group() for name in set(groups.values())}
        self._inflight: dict[str, int] = {}
        self._granted: dict[int, str] = {}

    # --- queries -------------------------------------------------------------------------

    def resident(self, group: str) -> str | None:
        return self._groups[group].resident

    def residents(self) -> dict[str, str | None]:
        return {name: g.resident for name, g in self._groups.items()}

    def switching(self, group: str) -> tuple[str | None, str | None] | None:
        """(target, evict) of the switch in progress, or None."""
        switch = self._groups[group].switch
        return None if switch is None else (switch.target, switch.evict)

    def inflight(self, model: str) -> int:
        return self._inflight.get(model, 0)

    def queued(self, group: str) -> list[tuple[int, str]]:
        return list(self._groups[group].queue)

    def waiting(self, request_id: int) -> Waiting | None:
        """Where a not-yet-granted request stands, or None if it is not waiting."""
        for group in self._groups.values():
            switch = group.switch
            if switch is None:
                continue
            if request_id in switch.joiners:
                return Waiting(switch.target or "", True, 0, switch.target, switch.evict, switch.draining)
            for position, (rid, model) in enumerate(group.queue, start=1):
                if rid == request_id:
                    return Waiting(model, False, position, switch.target, switch.evict, switch.draining)
        return None

    # --- events --------------------------------------------------------------------------

    def request(self, request_id: int, model: str) -> list[Effect]:
        """A request for `model` arrived."""
        group_name = self._group_of.get(model)
        if group_name is None:
            return [self._grant(request_id, model)]
        group = self._groups[group_name]
        switch = group.switch
        if switch is None:
            if group.resident == model:
                return [self._grant(request_id, model)]
            return self._begin(group_name, model, [request_id])
        if switch.target == model:
            switch.joiners.append(request_id)
        else:
            group.queue.append((request_id, model))
        return []

    def release(self, request_id: int) -> list[Effect]:
        """A granted request finished (or its client went away)."""
        model = self._granted.pop(request_id, None)
        if model is None:
            return []
        self._inflight[model] -= 1
        if self._inflight[model]:
            return []
        group_name = self._group_of.get(model)
        if group_name is None:
            return []
        switch = self._groups[group_name].switch
        if switch is not None and switch.draining and switch.evict == model:
            switch.draining = False
            return [Drained(group_name, model)]
        return []

    def cancel(self, request_id: int) -> list[Effect]:
        """A waiting request's client went away; a granted one is released instead."""
        if request_id in self._granted:
            return self.release(request_id)
        for group in self._groups.values():
            if group.switch is not None and request_id in group.switch.joiners:
                group.switch.joiners.remove(request_id)
                return []
            for entry in group.queue:
                if entry[0] == request_id:
                    group.queue.remove(entry)
                    return []
        return []

    def drain_timed_out(self, group_name: str) -> None:
        """The owner gave up waiting for in-flight requests and proceeds with the eviction."""
        switch = self._groups[group_name].switch
        if switch is not None:
            switch.draining = False

    def switch_done(self, group_name: str, ok: bool, reason: str = "") -> list[Effect]:
        """The switch of `group_name` finished: target resident if ok, nothing resident if not."""
        group = self._groups[group_name]
        switch = group.switch
        assert switch is not None, f"no switch in progress in group {group_name}"
        group.switch = None
        effects: list[Effect] = []
        if ok:
            group.resident = switch.target
            effects += [self._grant(rid, switch.target) for rid in switch.joiners if switch.target]
            # Batch: everything already queued for the new resident goes now, not after another round trip.
            for entry in [e for e in group.queue if e[1] == switch.target]:
                group.queue.remove(entry)
                effects.append(self._grant(entry[0], entry[1]))
        else:
            group.resident = None
            effects += [Fail(rid, switch.target or "", reason) for rid in switch.joiners]
        if group.queue:
            head_model = group.queue[0][1]
            joiners = [rid for rid, model in group.queue if model == head_model]
            group.queue = deque(e for e in group.queue if e[1] != head_model)
            effects += self._begin(group_name, head_model, joiners)
        return effects

    def engine_lost(self, model: str) -> None:
        """The resident engine died on its own: the next request for it loads it again."""
        group_name = self._group_of.get(model)
        if group_name is not None and self._groups[group_name].resident == model:
            self._groups[group_name].resident = None

    def adopt(self, model: str) -> None:
        """At start-up: `model` is found already running and becomes its group's resident."""
        group = self._groups[self._group_of[model]]
        if group.switch is None and group.resident is None:
            group.resident = model

    def unload(self, model: str) -> list[Effect]:
        """Evict `model` without loading another. No-op unless it is resident and no switch runs."""
        group_name = self._group_of.get(model)
        if group_name is None:
            return []
        group = self._groups[group_name]
        if group.switch is not None or group.resident != model:
            return []
        return self._begin(group_name, None, [])

    # --- internals -----------------------------------------------------------------------

    def _grant(self, request_id: int, model: str) -> Grant:
        self._granted[request_id] = model
        self._inflight[model] = self._inflight.get(model, 0) + 1
        return Grant(request_id, model)

    def _begin(self, group_name: str, target: str | None, joiners: list[int]) -> list[Effect]:
        group = self._groups[group_name]
        evict = group.resident
        drain = evict is not None and self.inflight(evict) > 0
        group.switch = _Switch(target=target, evict=evict, joiners=joiners, draining=drain)
        group.resident = None
        return [BeginSwitch(group_name, target, evict, drain)]
