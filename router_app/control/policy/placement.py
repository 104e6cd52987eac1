"""Pure placement arithmetic: what fits where, and which residents to evict to make room.

Memory is counted per device (a GPU, or a declared CPU budget). A device whose capacity is not
known holds one model at a time; a model whose footprint is not known needs a whole device. Both
rules are expressed by `units`: with an unknown capacity every model counts 1 of 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GiB = 1024**3


def units(capacity: int | None, footprint: int | None) -> tuple[int, int]:
    """(capacity, footprint) in comparable units for one device."""
    if capacity is None:
        return 1, 1
    if footprint is None:
        return capacity, capacity
    return capacity, footprint


@dataclass(frozen=True)
class Candidate:
    """A resident model that could be evicted, and what evicting it would free per device."""

    model: str
    frees: Mapping[str, int]
    busy: bool
    reload_cost_s: float
    last_used: float


def victim_order(candidate: Candidate) -> tuple[bool, float, float]:
    """Idle before busy, then the cheapest to bring back (measured load time), then least recently used."""
    return (candidate.busy, candidate.reload_cost_s, candidate.last_used)


def choose_victims(needed: Mapping[str, int], candidates: Iterable[Candidate]) -> list[Candidate] | None:
    """The residents to evict so that `needed` more units become free on each device, or None if even
    evicting every candidate is not enough. Greedy in `victim_order`, then victims that turned out not to
    be needed (a later, bigger one freed enough) are given back, most expensive first."""
    short = {device: amount for device, amount in needed.items() if amount > 0}
    if not short:
        return []
    useful = [c for c in candidates if any(c.frees.get(d, 0) > 0 for d in short)]
    chosen: list[Candidate] = []
    remaining = dict(short)
    for candidate in sorted(useful, key=victim_order):
        if all(amount <= 0 for amount in remaining.values()):
            break
        if not any(candidate.frees.get(d, 0) > 0 and remaining[d] > 0 for d in remaining):
            continue
        chosen.append(candidate)
        for device in remaining:
            remaining[device] -= candidate.frees.get(device, 0)
    if any(amount > 0 for amount in remaining.values()):
        return None
    for candidate in sorted(chosen, key=victim_order, reverse=True):
        rest = [c for c in chosen if c is not candidate]
        if all(sum(c.frees.get(d, 0) for c in rest) >= amount for d, amount in short.items()):
            chosen = rest
    return sorted(chosen, key=victim_order)


def format_bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    if value >= GiB:
        return f"{value / GiB:.1f} GiB"
    return f"{value / 1024**2:.0f} MiB"
