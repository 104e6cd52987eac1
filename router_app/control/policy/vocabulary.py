"""The scheduler's vocabulary: model phases, what it knows of a model, the effects it asks for, and where a
waiting request stands. Shared by the scheduler (pure decisions) and its owner (the switcher)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    STOPPED = "stopped"
    PENDING = "pending"  # committed to load; waiting for its victims' memory
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # chosen as a victim; no new requests; evicted when the last one ends
    EVICTING = "evicting"
    SLEEPING = "sleeping"


@dataclass(frozen=True)
class ModelSpec:
    """What the scheduler knows of one engine instance of a local model. `id` is the instance's key (effects and
    queries use it); `name` the model's name clients use, in texts (the key when not given)."""

    id: str
    devices: tuple[str, ...]
    footprint: int | None = None  # bytes per device while resident; None: needs whole devices
    estimated: bool = False  # footprint is a guess before the first load: never "can never fit", at most a device
    sleep_footprint: int = 0  # bytes per device kept while asleep
    sleeps: bool = False  # evicted by sleeping (process kept) rather than stopping
    group: str | None = None  # exclusive group: at most one member resident
    pinned: bool = False
    ttl_s: float | None = None
    cancel_abandoned: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.id)


@dataclass(frozen=True)
class Grant:
    request_id: int
    model: str


class FailCause(StrEnum):
    """Why a request's model could not be made resident: the OpenAI error `code` the client gets."""

    LOAD_FAILED = "model_load_failed"  # its load failed (the engine's own reason is in /health)
    TOO_LARGE = "model_too_large"  # it can never fit on its devices
    REMOVED = "model_removed"  # a config reload removed it while the request waited


@dataclass(frozen=True)
class Fail:
    request_id: int
    model: str
    reason: str
    cause: FailCause = FailCause.LOAD_FAILED


@dataclass(frozen=True)
class Load:
    """Start or wake `model`; report `load_done`."""

    model: str


class EvictCause(StrEnum):
    """Why a model is evicted: the `reason` label of llm_router_evictions_total and `last_eviction` in /health."""

    MEMORY = "memory"  # making room for another model
    TTL = "ttl"  # idle past its TTL
    REQUEST = "request"  # unloaded on request (API, admin)
    DRAIN_TIMEOUT = "drain_timeout"  # requests still running when the drain bound passed
    RECONFIGURED = "reconfigured"  # a config reload changed or removed it


@dataclass(frozen=True)
class Evict:
    """Stop or sleep `model` (it has no requests in flight, unless a drain timed out); report `evict_done`.
    `stop`: stop it even if it could sleep (its sleep footprint is in the way, or requests may still run in it).
    `reason` says it in words for logs and progress; `cause` is the same, typed."""

    model: str
    reason: str
    stop: bool = False
    cause: EvictCause = field(default=EvictCause.REQUEST, compare=False)


@dataclass(frozen=True)
class CancelLoad:
    """Nobody waits for `model` any more: abort its load; report `load_done(ok=False)`."""

    model: str


Effect = Grant | Fail | Load | Evict | CancelLoad


@dataclass(frozen=True)
class Waiting:
    """Where a waiting request stands, for progress messages."""

    model: str
    phase: Phase
    since: float
    draining: tuple[tuple[str, int], ...]  # victims still serving: (model, requests in flight)
    evicting: tuple[str, ...]
    blocked_by: tuple[str, ...]  # busy residents it waits for (fairness not yet expired)
