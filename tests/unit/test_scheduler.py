"""The pure scheduling policy, event by event (its invariants: test_scheduler_properties.py)."""

from __future__ import annotations

from router_app.control.policy.placement import Candidate, choose_victims
from router_app.control.policy.scheduler import (
    CancelLoad,
    Evict,
    Fail,
    FailCause,
    Grant,
    Load,
    ModelSpec,
    Phase,
    Scheduler,
)

G = 1024**3


def slots(*names: str, fairness_s: float = 10.0) -> Scheduler:
    """The old exclusive policy: one device of unknown capacity, one model at a time."""
    return Scheduler({}, [ModelSpec(n, ("gpu0",)) for n in names], fairness_s=fairness_s)


def memory(capacity: int, sizes: dict[str, int], **kwargs) -> Scheduler:
    specs = [ModelSpec(n, ("gpu0",), footprint=size) for n, size in sizes.items()]
    return Scheduler({"gpu0": capacity}, specs, **kwargs)


def test_first_request_loads_and_every_waiter_is_granted_at_once() -> None:
    s = slots("a", "b")
    assert s.request(1, "a", 0.0) == [Load("a")]
    assert s.request(2, "a", 0.1) == []
    assert s.load_done("a", True, "", 1.0) == [Grant(1, "a"), Grant(2, "a")]
    assert s.request(3, "a", 1.1) == [Grant(3, "a")]


def test_idle_resident_is_evicted_at_once_and_the_newcomer_loads_after() -> None:
    s = slots("a", "b")
    s.request(1, "a", 0)
    s.load_done("a", True, "", 1)
    s.release(1, 2)
    assert s.request(2, "b", 3) == [Evict("a", "making room for b")]
    assert s.phase("b") is Phase.PENDING
    assert s.evict_done("a", False, 3.1) == [Load("b")]
    assert s.load_done("b", True, "", 4) == [Grant(2, "b")]


def test_busy_resident_keeps_serving_until_the_fairness_bound_then_drains() -> None:
    s = slots("a", "b", fairness_s=5)
    s.request(1, "a", 0)
    s.load_done("a", True, "", 0)
    assert s.request(2, "b", 1) == []  # a is busy: b waits
    assert s.request(3, "a", 2) == [Grant(3, "a")]  # ...and a keeps serving new requests
    assert s.waiting(2).blocked_by == ("a",)
    assert s.next_deadline() == 6  # the oldest waiter arrived at 1
    assert s.tick(6) == []  # bound reached: a drains (requests in flight finish first)
    assert s.phase("a") is Phase.DRAINING
    assert s.request(4, "a", 6.5) == []  # no new requests for a draining model
    assert s.release(1, 7) == []
    assert s.release(3, 8) == [Evict("a", "making room for b")]  # the reason survives the drain (metrics)
    assert s.evict_done("a", False, 8.1) == [Load("b")]


def test_a_model_just_loaded_serves_for_the_fairness_bound_before_it_can_be_drained() -> None:
    s = slots("a", "b", fairness_s=5)
    s.request(1, "a", 0)
    s.request(2, "b", 0.5)  # waits through a's whole load
    s.load_done("a", True, "", 20)
    assert s.waiting(2).blocked_by == ("a",)
    assert s.next_deadline() == 25  # counted from when a became ready, not from 0.5
    assert s.tick(24) == [] and s.phase("a") is Phase.READY


def test_models_that_fit_together_stay_resident_together() -> None:
    s = memory(10 * G, {"a": 4 * G, "b": 4 * G, "c": 4 * G})
    for rid, model in enumerate(("a", "b"), start=1):
        assert s.request(rid, model, rid) == [Load(model)]
        s.load_done(model, True, "", rid)
        s.release(rid, rid + 0.5)
    for rid in range(10, 20):  # alternating between the two: no eviction
        model = "ab"[rid % 2]
        assert s.request(rid, model, rid) == [Grant(rid, model)]
        s.release(rid, rid + 0.1)
    effects = s.request(30, "c", 30)
    assert effects == [Evict("a", "making room for c")]  # exactly one, the least recently used


def test_victims_idle_before_busy_then_cheapest_reload_then_least_recently_used() -> None:
    cands = [
        Candidate("busy-cheap", {"g": 5}, busy=True, reload_cost_s=1, last_used=0),
        Candidate("idle-costly", {"g": 5}, busy=False, reload_cost_s=60, last_used=0),
        Candidate("idle-cheap-recent", {"g": 5}, busy=False, reload_cost_s=5, last_used=9),
        Candidate("idle-cheap-old", {"g": 5}, busy=False, reload_cost_s=5, last_used=1),
    ]
    assert [c.model for c in choose_victims({"g": 5}, cands)] == ["idle-cheap-old"]
    assert [c.model for c in choose_victims({"g": 12}, cands)] == [
        "idle-cheap-old",
        "idle-cheap-recent",
        "idle-costly",
    ]
    assert choose_victims({"g": 25}, cands) is None
    # A bigger victim that alone suffices makes a smaller one taken earlier unnecessary.
    mixed = [Candidate("small", {"g": 2}, False, 1, 0), Candidate("big", {"g": 8}, False, 2, 0)]
    assert [c.model for c in choose_victims({"g": 7}, mixed)] == ["big"]


def test_a_model_that_can_never_fit_fails_at_once_with_sizes() -> None:
    s = memory(10 * G, {"huge": 12 * G, "a": 2 * G})
    [fail] = s.request(1, "huge", 0)
    assert isinstance(fail, Fail) and fail.cause is FailCause.TOO_LARGE
    assert "12.0 GiB" in fail.reason and "10.0 GiB" in fail.reason


def test_pinned_models_are_never_victims_and_count_against_never_fits() -> None:
    specs = [
        ModelSpec("pin", ("g",), footprint=6 * G, pinned=True),
        ModelSpec("a", ("g",), footprint=3 * G),
        ModelSpec("b", ("g",), footprint=5 * G),
    ]
    s = Scheduler({"g": 10 * G}, specs)
    s.request(1, "pin", 0)
    s.load_done("pin", True, "", 0)
    s.release(1, 0)
    [fail] = s.request(2, "b", 1)
    assert isinstance(fail, Fail) and "pinned" in fail.reason
    assert s.request(3, "a", 2) == [Load("a")]


def test_idle_ttl_counts_from_the_end_of_the_last_request() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",), ttl_s=30)])
    s.request(1, "a", 0)
    s.load_done("a", True, "", 1)
    assert s.next_deadline() is None  # busy: no TTL running
    s.release(1, 10)
    assert s.next_deadline() == 40
    assert s.tick(39) == []
    [evict] = s.tick(40)
    assert isinstance(evict, Evict) and "ttl" in evict.reason


def test_a_load_nobody_waits_for_is_cancelled_unless_the_model_finishes_abandoned_loads() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",)), ModelSpec("b", ("h",), cancel_abandoned=False)])
    s.request(1, "a", 0)
    s.request(2, "a", 0)
    assert s.cancel(1, 1) == []
    assert s.cancel(2, 1) == [CancelLoad("a")]
    assert s.load_done("a", False, "cancelled", 2) == []
    assert s.phase("a") is Phase.STOPPED
    s.request(3, "b", 0)
    assert s.cancel(3, 1) == []


def test_failed_load_fails_only_its_waiters_and_the_device_stays_usable() -> None:
    s = slots("a", "b")
    s.request(1, "a", 0)
    assert s.load_done("a", False, "boom", 1) == [Fail(1, "a", "boom")]
    assert s.request(2, "b", 2) == [Load("b")]


def test_sleeping_model_keeps_its_sleep_footprint() -> None:
    specs = [ModelSpec("a", ("g",), 6 * G, sleep_footprint=1 * G, sleeps=True), ModelSpec("b", ("g",), 4 * G)]
    s = Scheduler({"g": 10 * G}, specs)
    s.request(1, "a", 0)
    s.load_done("a", True, "", 0)
    s.release(1, 0)
    assert s.unload("a", 1) == [Evict("a", "unloaded on request")]
    s.evict_done("a", True, 2)
    assert s.phase("a") is Phase.SLEEPING and s.used("g") == 1 * G
    assert s.request(2, "b", 3) == [Load("b")]  # 1 + 4 <= 10


def test_exclusive_group_allows_one_member_even_when_memory_would_hold_both() -> None:
    specs = [ModelSpec("a", ("g",), G, group="x"), ModelSpec("b", ("g",), G, group="x"), ModelSpec("c", ("g",), G)]
    s = Scheduler({"g": 10 * G}, specs)
    s.request(1, "a", 0)
    s.load_done("a", True, "", 0)
    s.release(1, 0)
    assert s.request(2, "c", 1) == [Load("c")]
    assert s.request(3, "b", 1) == [Evict("a", "making room for b")]


def test_remote_models_are_always_granted() -> None:
    s = slots("a")
    assert s.request(1, "remote", 0) == [Grant(1, "remote")]
    assert s.release(1, 1) == []


def test_an_estimate_next_to_a_pinned_model_is_clamped_to_what_is_left() -> None:
    specs = [
        ModelSpec("pin", ("g",), 4 * G, pinned=True),
        ModelSpec("big", ("g",), int(21.6 * G), estimated=True),  # e.g. vLLM's 0.9 of a 24 GiB GPU, a guess
    ]
    s = Scheduler({"g": 24 * G}, specs)
    s.request(1, "pin", 0)
    s.load_done("pin", True, "", 0)
    s.release(1, 0)
    assert s.request(2, "big", 1) == [Load("big")]  # tried on the 20 GiB the pinned model leaves


def test_nothing_to_evict_and_nothing_moving_fails_instead_of_waiting_forever() -> None:
    specs = [ModelSpec("pin", ("g",), 6 * G, pinned=True), ModelSpec("m", ("g",), 5 * G)]
    s = Scheduler({"g": 10 * G}, specs)
    s.request(1, "pin", 0)
    s.load_done("pin", True, "", 0)
    [fail] = s.request(2, "m", 1)
    assert isinstance(fail, Fail) and fail.cause is FailCause.TOO_LARGE


def test_a_pinned_model_is_never_forced_out_of_its_exclusive_group() -> None:
    specs = [ModelSpec("p", ("g",), G, group="x", pinned=True), ModelSpec("q", ("g",), G, group="x")]
    s = Scheduler({"g": 10 * G}, specs)
    s.request(1, "p", 0)
    s.load_done("p", True, "", 0)
    s.release(1, 0)
    [fail] = s.request(2, "q", 1)
    assert isinstance(fail, Fail) and "pinned p" in fail.reason


def test_a_request_during_a_cancelled_load_gets_a_fresh_load_not_the_cancellation() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",))])
    s.request(1, "a", 0)
    assert s.cancel(1, 1) == [CancelLoad("a")]
    assert s.request(2, "a", 2) == []  # the retry arrives while the engine is being stopped
    assert s.load_done("a", False, "cancelled", 3) == [Load("a")]
    assert s.load_done("a", True, "", 4) == [Grant(2, "a")]


def test_removing_a_retiring_model_with_requests_still_counted_is_safe() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",))], drain_timeout_s=1)
    s.request(1, "a", 0)
    s.load_done("a", True, "", 0)
    s.unload("a", 1)
    assert isinstance(s.tick(3)[0], Evict)  # the drain timed out with request 1 still running
    s.evict_done("a", False, 4)
    s.remove("a")
    assert s.release(1, 5) == []


def test_a_retired_model_that_sleeps_is_stopped_not_left_asleep() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",), sleeps=True)])
    s.request(1, "a", 0)
    s.load_done("a", True, "", 0)
    s.release(1, 0)
    assert s.retire("a", 1, None) == [Evict("a", "configuration changed")]
    assert s.evict_done("a", True, 2) == [Evict("a", "configuration changed")]  # it went to sleep: stop it
    assert s.evict_done("a", False, 3) == [] and s.phase("a") is Phase.STOPPED
