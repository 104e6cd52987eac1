"""The scheduler's queries, its reconfiguration calls (config reload, learned footprints, adoption at start-up),
the exact texts of its refusals, and victim choice against a brute-force search."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from router_app.control.policy.placement import Candidate, choose_victims, format_bytes, victim_order
from router_app.control.policy.scheduler import (
    CancelLoad,
    Evict,
    EvictCause,
    Fail,
    FailCause,
    Grant,
    Load,
    ModelSpec,
    Phase,
    Scheduler,
    Waiting,
)

G = 1024**3
M = 1024**2


def loaded(s: Scheduler, model: str, rid: int, now: float = 0, release: bool = True) -> None:
    assert s.request(rid, model, now) == [Load(model)]
    assert s.load_done(model, True, "", now) == [Grant(rid, model)]
    if release:
        s.release(rid, now)


# --- queries -------------------------------------------------------------------------------------


def test_queries_follow_a_switch() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6), ModelSpec("c", ("x",))])
    assert s.devices == {"g": 10, "x": None}, "a model's device of unknown size is known from its spec"
    assert s.manages("a") and not s.manages("remote")
    assert s.inflight("a") == 0 and s.inflight("remote") == 0
    loaded(s, "a", 1, release=False)
    assert s.inflight("a") == 1 and s.resident() == ["a"] and s.used("g") == 6
    assert s.request(2, "b", 1) == [] and s.phase("b") is Phase.STOPPED
    assert s.waiting(2) == Waiting("b", Phase.STOPPED, 1, (), (), ("a",))
    assert s.waiting(99) is None
    assert s.tick(11) == [] and s.phase("a") is Phase.DRAINING  # the fairness bound (10 s) has passed
    assert s.waiting(2) == Waiting("b", Phase.PENDING, 1, (("a", 1),), (), ())
    assert s.release(1, 12) == [Evict("a", "making room for b")]
    assert s.waiting(2) == Waiting("b", Phase.PENDING, 1, (), ("a",), ())
    assert s.resident() == []
    assert s.evict_done("a", False, 13) == [Load("b")]
    assert s.resident() == ["b"] and s.last_used("a") == 12


def test_ttl_is_the_models_own_else_the_default_and_none_for_a_pinned_model() -> None:
    specs = [ModelSpec("own", ("g",), ttl_s=30), ModelSpec("default", ("g",)), ModelSpec("pin", ("g",), pinned=True)]
    s = Scheduler({}, specs, default_ttl_s=600)
    assert [s.ttl(m) for m in ("own", "default", "pin")] == [30, 600, None]
    assert Scheduler({}, specs).ttl("default") is None


def test_next_deadline_names_the_earliest_of_ttl_drain_and_fairness() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",), ttl_s=30), ModelSpec("b", ("g",))], fairness_s=5, drain_timeout_s=7)
    assert s.next_deadline() is None
    loaded(s, "a", 1, now=1)
    assert s.next_deadline() == 31  # idle since 1, ttl 30
    s.request(2, "a", 2)
    assert s.next_deadline() is None  # busy: no ttl
    s.request(3, "b", 4)
    assert s.next_deadline() == 9  # b waits since 4, fairness 5
    assert s.tick(9) == [] and s.phase("a") is Phase.DRAINING
    assert s.next_deadline() == 16  # drain started at 9, bound 7
    assert s.tick(12) == []
    assert s.tick(16) == [Evict("a", "1 request(s) still running after drain timeout", stop=True)]


def test_default_ttl_applies_to_models_without_their_own_and_never_to_pinned_ones() -> None:
    specs = [ModelSpec("a", ("g",)), ModelSpec("b", ("h",), ttl_s=50), ModelSpec("p", ("k",), pinned=True)]
    s = Scheduler({}, specs, default_ttl_s=20)
    for rid, model in enumerate(("a", "b", "p")):
        loaded(s, model, rid, now=5)
    assert s.tick(25) == [Evict("a", "idle for 20 s (ttl 20 s)")]
    assert s.tick(55) == [Evict("b", "idle for 50 s (ttl 50 s)")]
    assert s.tick(10_000) == [] and s.phase("p") is Phase.READY


def test_a_drained_model_is_evicted_with_the_reason_it_was_drained_for() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",))])
    loaded(s, "a", 1, release=False)
    assert s.unload("a", 1) == [] and s.phase("a") is Phase.DRAINING
    assert s.release(1, 2) == [Evict("a", "unloaded on request")]


def test_unload_puts_a_sleeper_out_and_ignores_models_that_are_not_resident() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",), sleeps=True)])
    assert s.unload("a", 0) == [] and s.unload("nope", 0) == []
    loaded(s, "a", 1)
    assert s.unload("a", 1) == [Evict("a", "unloaded on request")]
    assert s.evict_done("a", True, 2) == [] and s.phase("a") is Phase.SLEEPING
    [evict] = s.unload("a", 3, reason="by hand")
    assert evict == Evict("a", "by hand") and evict.cause is EvictCause.REQUEST


def test_an_engine_lost_frees_its_memory_and_its_waiters_load_it_again() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6)])
    assert s.engine_lost("a", 0) == [] and s.engine_lost("nope", 0) == []  # stopped or unknown: nothing to do
    loaded(s, "a", 1)
    assert s.engine_lost("a", 1) == [] and s.phase("a") is Phase.STOPPED and s.used("g") == 0
    assert s.request(2, "b", 2) == [Load("b")]


# --- reconfiguration -------------------------------------------------------------------------------


def test_adopted_engines_count_awake_or_asleep() -> None:
    specs = [ModelSpec("a", ("g",), 6, sleep_footprint=1, sleeps=True), ModelSpec("b", ("g",), 5)]
    s = Scheduler({"g": 10}, specs)
    assert s.fits_now("a") and s.fits_now("a", asleep=True)
    s.adopt("a", 5, asleep=True)
    assert s.phase("a") is Phase.SLEEPING and s.used("g") == 1 and s.last_used("a") == 5
    assert s.fits_now("b")
    s.adopt("b", 6)
    assert s.phase("b") is Phase.READY and s.used("g") == 6
    assert not s.fits_now("a") and s.fits_now("a", asleep=True)
    assert s.request(1, "b", 7) == [Grant(1, "b")]


def test_a_learned_footprint_replaces_the_estimate() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 30, estimated=True, sleep_footprint=2), ModelSpec("b", ("g",), 4)])
    s.set_footprint("a", 5)
    assert s.spec("a") == ModelSpec("a", ("g",), 5, estimated=False, sleep_footprint=2)
    s.set_footprint("a", 7, sleep_footprint=3)
    assert s.spec("a").footprint == 7 and s.spec("a").sleep_footprint == 3
    s.set_footprint("a", None)
    assert s.spec("a").footprint is None
    assert s.request(1, "a", 0) == [Load("a")] and s.used("g") == 10  # no footprint: the whole device


def test_capacity_reload_cost_and_spec_can_change() -> None:
    s = Scheduler({"g": 10}, [ModelSpec(m, ("g",), 5) for m in "abc"])
    loaded(s, "a", 1)
    loaded(s, "b", 2)
    s.set_reload_cost("a", 60)
    assert s.request(3, "c", 5) == [Evict("b", "making room for c")], "b is cheaper to bring back"
    s.set_capacity("g", 20)
    assert s.evict_done("b", False, 6) == [Load("c")]
    s.set_spec(ModelSpec("b", ("g",), 5, pinned=True))
    assert s.spec("b").pinned


def test_a_model_added_by_a_reload_starts_stopped_on_its_devices() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6)])
    s.add(ModelSpec("n", ("h",), 3))
    assert s.manages("n") and s.phase("n") is Phase.STOPPED and s.devices["h"] is None
    assert s.request(1, "n", 0) == [Load("n")]


def test_a_reloaded_models_new_instance_waits_beside_the_old_one_and_texts_name_the_model() -> None:
    """A reload adds the changed model's new engine under a new key beside the old one, which keeps its key, its
    requests and its place in others' waits; texts name the model, never the key."""
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6)], fairness_s=0)
    loaded(s, "a", 1, release=False)
    assert s.request(2, "b", 1) == [] and s.waiting(2).draining == (("a", 1),)
    s.add(ModelSpec("b#1", ("g",), 6, name="b", group="~reload-b"))
    s.set_spec(ModelSpec("b", ("g",), 6, group="~reload-b"))
    assert s.retire("b", 2, "b#1") == []
    assert s.waiting(2).model == "b#1" and s.phase("a") is Phase.DRAINING
    assert s.release(1, 3) == [Evict("a", "making room for b")], "the old instance's wait moved with its waiter"
    assert s.evict_done("a", False, 4) == [Load("b#1")]
    assert s.load_done("b#1", True, "", 5) == [Grant(2, "b#1")]
    s.add(ModelSpec("pinned", ("g",), 6, pinned=True))
    s.add(ModelSpec("big#1", ("g",), 6, name="big"))
    assert s.request(3, "big#1", 6)[0].reason.startswith("big needs")


def test_one_tick_evicts_for_idleness_and_for_the_drain_bound_together() -> None:
    specs = [ModelSpec("idle", ("g",), ttl_s=5), ModelSpec("busy", ("h",))]
    s = Scheduler({}, specs, drain_timeout_s=5)
    loaded(s, "idle", 1)
    loaded(s, "busy", 2, release=False)
    s.unload("busy", 0)
    assert s.tick(5) == [
        Evict("idle", "idle for 5 s (ttl 5 s)"),
        Evict("busy", "1 request(s) still running after drain timeout", stop=True),
    ]


def test_one_tick_evicts_every_model_idle_past_its_ttl() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",), ttl_s=5), ModelSpec("b", ("h",), ttl_s=5)])
    loaded(s, "a", 1)
    loaded(s, "b", 2)
    assert s.tick(5) == [Evict("a", "idle for 5 s (ttl 5 s)"), Evict("b", "idle for 5 s (ttl 5 s)")]


def test_a_newcomer_that_needs_two_idle_models_gone_evicts_both_at_once() -> None:
    specs = [ModelSpec("a", ("g",), 4), ModelSpec("b", ("g",), 4), ModelSpec("big", ("g",), 9)]
    s = Scheduler({"g": 10}, specs)
    loaded(s, "a", 1)
    loaded(s, "b", 2)
    evicted = s.request(3, "big", 1)
    assert sorted(e.model for e in evicted if isinstance(e, Evict)) == ["a", "b"] and len(evicted) == 2


def test_memory_freed_by_an_eviction_moves_a_waiter_that_a_busy_model_still_blocks() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 5), ModelSpec("c", ("g",), 5), ModelSpec("b", ("g",), 6)])
    loaded(s, "a", 1, release=False)
    loaded(s, "c", 2)
    assert s.request(3, "b", 1) == [] and s.waiting(3).blocked_by == ("a",)
    assert s.unload("c", 2) == [Evict("c", "unloaded on request")]
    assert s.evict_done("c", False, 3) == [] and s.waiting(3).blocked_by == ("a",)
    assert s.tick(11) == [] and s.phase("a") is Phase.DRAINING


def test_a_cancelled_load_that_ends_lets_a_blocked_waiter_be_placed() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 5), ModelSpec("c", ("g",), 5), ModelSpec("b", ("g",), 6)])
    loaded(s, "a", 1, release=False)
    s.request(2, "c", 1)
    assert s.request(3, "b", 1) == [] and s.cancel(2, 2) == [CancelLoad("c")]
    assert s.load_done("c", False, "cancelled", 3) == [] and s.waiting(3).blocked_by == ("a",)


def test_retiring_a_sleeper_with_waiters_fails_them_and_stops_it() -> None:
    specs = [ModelSpec("s", ("g",), 6, sleeps=True, sleep_footprint=1), ModelSpec("b", ("g",), 6)]
    s = Scheduler({"g": 10}, specs)
    loaded(s, "s", 1)
    assert s.request(2, "b", 1) == [Evict("s", "making room for b")]
    assert s.evict_done("s", True, 2) == [Load("b")]
    assert s.load_done("b", True, "", 3) == [Grant(2, "b")]
    assert s.request(3, "s", 4) == [] and s.waiting(3).blocked_by == ("b",)
    assert s.retire("s", 5, None) == [
        Fail(3, "s", "the model was removed from the configuration", FailCause.REMOVED),
        Evict("s", "configuration changed"),
    ]


def test_retire_moves_waiters_to_the_successor_or_fails_them() -> None:
    s = Scheduler({}, [ModelSpec("old", ("g",)), ModelSpec("new", ("h",)), ModelSpec("gone", ("k",))])
    assert s.request(1, "old", 0) == [Load("old")]
    s.request(2, "gone", 0)
    assert s.retire("old", 1, "new") == [CancelLoad("old"), Load("new")]
    assert s.load_done("new", True, "", 2) == [Grant(1, "new")]
    assert s.retire("gone", 3, None) == [
        Fail(2, "gone", "the model was removed from the configuration", FailCause.REMOVED),
        CancelLoad("gone"),
    ]


def test_retire_stops_a_pending_load_and_drains_a_busy_engine() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6)], fairness_s=0)
    loaded(s, "a", 1, release=False)
    assert s.request(2, "b", 1) == [] and s.phase("b") is Phase.PENDING
    assert s.retire("b", 2, "missing") == [
        Fail(2, "b", "the model was removed from the configuration", FailCause.REMOVED)
    ]
    assert s.phase("b") is Phase.STOPPED and s.waiting(2) is None
    assert s.phase("a") is Phase.DRAINING  # drained for b, which left: it is still evicted once its request ends
    assert s.retire("a", 3, None) == [] and s.phase("a") is Phase.DRAINING
    assert s.release(1, 4) == [Evict("a", "making room for b")]


def test_a_retired_load_that_finishes_is_unloaded() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",), sleeps=True)])
    s.request(1, "a", 0)
    s.cancel(1, 0)  # the load goes on: nobody waits
    assert s.retire("a", 1, None) == [CancelLoad("a")]
    [evict] = s.load_done("a", True, "", 2)  # it finished before the cancel
    assert evict == Evict("a", "configuration changed") and evict.cause is EvictCause.RECONFIGURED
    [evict] = s.evict_done("a", True, 3)  # it went to sleep: a retired engine is stopped
    assert evict == Evict("a", "configuration changed") and evict.cause is EvictCause.RECONFIGURED


def test_a_busy_sleeper_in_the_way_drains_and_then_stops() -> None:
    specs = [ModelSpec("s", ("g",), 6, sleep_footprint=3, sleeps=True), ModelSpec("b", ("g",), 9)]
    s = Scheduler({"g": 10}, specs, fairness_s=0)
    loaded(s, "s", 1, release=False)
    assert s.request(2, "b", 1) == [] and s.phase("s") is Phase.DRAINING
    [evict] = s.release(1, 2)
    assert evict == Evict("s", "making room for b", stop=True) and evict.cause is EvictCause.MEMORY
    assert s.evict_done("s", False, 3) == [Load("b")]


def test_remove_forgets_a_model_and_only_its_own_requests() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",)), ModelSpec("b", ("h",))])
    loaded(s, "a", 1, release=False)
    loaded(s, "b", 2, release=False)
    s.remove("a")
    assert not s.manages("a")
    assert s.release(1, 1) == []
    assert s.release(2, 1) == [] and s.inflight("b") == 0


def test_a_failed_load_fails_its_waiters_and_a_cancelled_one_restarts_for_late_comers() -> None:
    s = Scheduler({}, [ModelSpec("a", ("g",))])
    s.request(1, "a", 0)
    s.request(2, "a", 0)
    assert s.load_done("a", False, "boom", 1) == [Fail(1, "a", "boom"), Fail(2, "a", "boom")]
    assert s.load_done("a", True, "", 2) == [], "no load in progress: nothing to finish"
    s.request(3, "a", 3)
    assert s.cancel(3, 3) == [CancelLoad("a")]
    assert s.load_done("a", False, "cancelled", 4) == [] and s.phase("a") is Phase.STOPPED
    s.request(4, "a", 5)
    assert s.cancel(4, 5) == [CancelLoad("a")], "a second abandoned load is cancelled too"
    assert s.load_done("a", False, "cancelled", 5) == []
    s.request(4, "a", 5)
    assert s.load_done("a", True, "", 6) == [Grant(4, "a")]
    s.request(5, "a", 7)
    assert s.cancel(5, 7) == [] and s.inflight("a") == 1 and s.cancel(4, 8) == [] and s.inflight("a") == 0


# --- refusals, word for word -------------------------------------------------------------------------


def test_refusals_name_sizes_devices_and_pinned_models() -> None:
    specs = [
        ModelSpec("pin", ("g", "h"), 3 * G, pinned=True, group="x"),
        ModelSpec("big", ("g",), 8 * G),
        ModelSpec("mate", ("k",), G, group="x"),
        ModelSpec("cpu", ("h",), 512 * M),
        ModelSpec("whole", ("u",)),
        ModelSpec("pin-u", ("u",), pinned=True),
    ]
    s = Scheduler({"g": 10 * G, "h": None, "u": None}, specs)
    assert s.request(1, "big", 0) == [
        Fail(
            1,
            "big",
            "big needs 8.0 GiB on device g, which has 10.0 GiB (3.0 GiB of it held by pinned models); "
            "it can never be loaded there",
            FailCause.TOO_LARGE,
        )
    ]
    assert s.request(2, "mate", 0) == [
        Fail(2, "mate", "mate shares exclusive group x with pinned pin, which never leaves", FailCause.TOO_LARGE)
    ]
    assert s.request(3, "cpu", 0) == [
        Fail(3, "cpu", "cpu needs device h to itself, but pinned pin never leaves", FailCause.TOO_LARGE)
    ]
    assert s.request(4, "whole", 0)[0].reason == "whole needs device u to itself, but pinned pin-u never leaves"


def test_format_bytes() -> None:
    assert [format_bytes(v) for v in (None, 0, 1536 * 1024, G - 1, G, 3 * G // 2)] == [
        "unknown",
        "0 MiB",
        "2 MiB",
        "1024 MiB",
        "1.0 GiB",
        "1.5 GiB",
    ]


# --- victim choice against a brute-force search ----------------------------------------------------------

DEVICES = ("g", "h")
candidate = st.builds(
    Candidate,
    model=st.sampled_from("abcdefgh"),
    frees=st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 6), max_size=2),
    busy=st.booleans(),
    reload_cost_s=st.sampled_from([0.0, 1.0, 5.0]),
    last_used=st.sampled_from([0.0, 1.0, 2.0]),
)


def frees_enough(chosen: list[Candidate], needed: dict[str, int]) -> bool:
    return all(sum(c.frees.get(d, 0) for c in chosen) >= amount for d, amount in needed.items())


@settings(max_examples=3 * settings.default.max_examples, deadline=None)
@given(
    st.dictionaries(st.sampled_from(DEVICES), st.integers(-3, 10), max_size=2),
    st.lists(candidate, max_size=6, unique_by=lambda c: c.model),
)
def test_victims_free_enough_none_is_unneeded_and_none_means_impossible(needed, candidates) -> None:
    chosen = choose_victims(needed, candidates)
    short = {d: a for d, a in needed.items() if a > 0}
    if chosen is None:
        assert not frees_enough(candidates, short), "a set of victims exists"
        return
    assert frees_enough(chosen, short)
    assert chosen == sorted(chosen, key=victim_order)
    assert len({c.model for c in chosen}) == len(chosen)
    for victim in chosen:
        rest = [c for c in chosen if c is not victim]
        assert not frees_enough(rest, short), f"{victim.model} was not needed"
    if not short:
        assert chosen == []
    useless = [c for c in candidates if not any(c.frees.get(d, 0) > 0 for d in short)]
    assert not set(map(id, useless)) & set(map(id, chosen)), "a victim that frees nothing where room is short"
    smallest = min(
        (
            len(combo)
            for n in range(len(candidates) + 1)
            for combo in combinations(candidates, n)
            if frees_enough(list(combo), short)
        ),
    )
    assert len(chosen) >= smallest


def test_every_eviction_carries_its_typed_cause() -> None:
    def causes(effects: list) -> list[tuple[str, EvictCause]]:
        return [(e.model, e.cause) for e in effects if isinstance(e, Evict)]

    specs = [ModelSpec(m, ("g",), 6, ttl_s=30 if m == "t" else None) for m in ("a", "b", "t")]
    s = Scheduler({"g": 10}, specs, fairness_s=0, drain_timeout_s=5)
    loaded(s, "a", 1, release=False)
    s.request(2, "b", 1)  # a drains for b
    assert causes(s.release(1, 2)) == [("a", EvictCause.MEMORY)]
    s.evict_done("a", False, 2)
    s.load_done("b", True, "", 3)
    assert causes(s.unload("b", 4)) == [] and causes(s.tick(9)) == [("b", EvictCause.DRAIN_TIMEOUT)]
    s.evict_done("b", False, 9)
    loaded(s, "t", 3, now=10)
    assert causes(s.tick(40)) == [("t", EvictCause.TTL)]
    s.evict_done("t", False, 40)
    loaded(s, "a", 4, now=41)
    assert causes(s.unload("a", 42)) == [("a", EvictCause.REQUEST)]
    s.evict_done("a", False, 42)
    loaded(s, "a", 5, now=43)
    assert causes(s.retire("a", 44, None)) == [("a", EvictCause.RECONFIGURED)]


# --- an idle model others wait for lingers for its clients' follow-up requests ---------------------


def test_an_idle_model_lingers_a_tenth_of_its_reload_cost_for_follow_up_requests() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6)], fairness_s=10)
    loaded(s, "a", 1, now=0, release=False)
    s.set_reload_cost("a", 20.0)  # loading a again would take 20 s: it lingers 2 s after its last request
    assert s.request(2, "b", 1) == [] and s.waiting(2).blocked_by == ("a",)
    assert s.release(1, 3) == [], "a's follow-up request may come in the next moments"
    assert s.next_deadline() == 5.0
    assert s.request(3, "a", 4) == [Grant(3, "a")], "the follow-up is served without a reload"
    assert s.release(3, 4.5) == [] and s.next_deadline() == 6.5
    assert s.tick(6.4) == []
    assert s.tick(6.5) == [Evict("a", "making room for b")]


def test_lingering_ends_at_the_fairness_bound_and_is_nothing_without_a_known_reload_cost() -> None:
    s = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6)], fairness_s=1)
    loaded(s, "a", 1, now=0)
    s.set_reload_cost("a", 600.0)
    assert s.request(2, "b", 0.5) == [] and s.next_deadline() == 1.0, "bounded by fairness_s"
    assert s.tick(1.0) == [Evict("a", "making room for b")]
    fresh = Scheduler({"g": 10}, [ModelSpec("a", ("g",), 6), ModelSpec("b", ("g",), 6)], fairness_s=10)
    loaded(fresh, "a", 1, now=0)
    assert fresh.request(2, "b", 0) == [Evict("a", "making room for b")], "never loaded: no cost known"


def test_a_waiter_whose_model_is_evicted_leaves_no_deadline_due_for_ever() -> None:
    """a waits for the lingering b; c then takes the sleeping a as its victim: a's old wait must not keep a
    deadline that every tick leaves due (the owner's timer would fire every millisecond)."""
    specs = [
        ModelSpec("b", ("g",), footprint=60),
        ModelSpec("a", ("g",), footprint=60, sleeps=True, sleep_footprint=30),
        ModelSpec("c", ("g",), footprint=20),
    ]
    s = Scheduler({"g": 100}, specs, fairness_s=10)
    s.set_reload_cost("b", 10.0)  # lingers 1 s after its last request
    s.adopt("b", 0.0)
    s.adopt("a", 0.0, asleep=True)
    s.request(1, "b", 4.0)
    s.release(1, 5.0)
    assert s.request(2, "a", 5.1) == [] and s.waiting(2).blocked_by == ("b",) and s.next_deadline() == 6.0
    assert s.request(3, "c", 5.2) == [Evict("a", "making room for c")]
    for now in (6.5, 7.0, 8.0):
        s.tick(now)
        deadline = s.next_deadline()
        assert deadline is None or deadline > now, f"a deadline due at {now} stays due: {deadline}"


def test_a_waiter_still_has_its_wait_described_after_a_retired_victim_is_forgotten() -> None:
    s = Scheduler({"g": 100}, [ModelSpec("x", ("g",), 50), ModelSpec("y", ("g",), 50), ModelSpec("p", ("g",), 100)])
    s.fairness_s = 0
    s.adopt("x", 0)
    s.adopt("y", 0)
    s.request(1, "x", 1)  # x busy
    assert s.request(2, "p", 2) == [Evict("y", "making room for p")]  # x drains, y goes
    s.retire("y", 2.1, None)
    s.evict_done("y", False, 2.2)
    s.remove("y")  # a reload forgot y; p still waits for x
    assert s.waiting(2).draining == (("x", 1),)


def waking_sleeper() -> Scheduler:
    """s asleep (3 of 10), r ready and idle (5); a request for s (6 awake) makes r leave while s waits, asleep."""
    s = Scheduler({"g": 10}, [ModelSpec("r", ("g",), 5), ModelSpec("s", ("g",), 6, sleep_footprint=3, sleeps=True)])
    s.fairness_s = 0
    s.adopt("s", 0, asleep=True)
    s.adopt("r", 0)
    assert s.request(1, "s", 1) == [Evict("r", "making room for s")]
    return s


def test_a_sleeper_whose_wake_is_abandoned_or_retired_is_still_asleep() -> None:
    s = waking_sleeper()
    assert s.used("g") == 8  # r until it is gone, and s asleep
    s.cancel(1, 2)
    assert s.waiting(1) is None and s.used("g") == 8
    retired = waking_sleeper()
    effects = retired.retire("s", 2, None)
    assert Evict("s", "configuration changed", cause=EvictCause.RECONFIGURED) in effects


def test_a_sleeper_that_dies_while_waiting_to_wake_holds_nothing() -> None:
    s = waking_sleeper()
    s.engine_lost("s", 2)
    assert s.used("g") == 5  # r only
