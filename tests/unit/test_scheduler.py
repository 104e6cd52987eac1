"""The pure switching policy, event by event."""

from __future__ import annotations

from router_app.scheduler import BeginSwitch, Drained, Fail, Grant, Scheduler


def make() -> Scheduler:
    return Scheduler({"a": "gpu0", "b": "gpu0", "c": "gpu0", "x": "gpu1"})


def test_first_request_starts_a_switch_and_joiners_share_it() -> None:
    s = make()
    assert s.request(1, "a") == [BeginSwitch("gpu0", "a", None, drain=False)]
    assert s.request(2, "a") == []
    assert s.switching("gpu0") == ("a", None)
    assert s.switch_done("gpu0", ok=True) == [Grant(1, "a"), Grant(2, "a")]
    assert s.resident("gpu0") == "a" and s.inflight("a") == 2


def test_resident_model_is_granted_at_once() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    assert s.request(2, "a") == [Grant(2, "a")]


def test_other_model_waits_for_inflight_requests_to_drain() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    assert s.request(2, "b") == [BeginSwitch("gpu0", "b", "a", drain=True)]
    assert s.release(1) == [Drained("gpu0", "a")]
    assert s.switch_done("gpu0", ok=True) == [Grant(2, "b")]


def test_requests_for_evicted_model_queue_behind_the_switch() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    s.request(2, "b")
    assert s.request(3, "a") == [], "the resident being evicted takes no new requests"
    s.release(1)
    effects = s.switch_done("gpu0", ok=True)
    assert effects == [Grant(2, "b"), BeginSwitch("gpu0", "a", "b", drain=True)]


def test_queue_is_fifo_and_batches_the_same_target() -> None:
    s = make()
    s.request(1, "a")
    s.request(2, "b")
    s.request(3, "c")
    s.request(4, "b")
    assert s.queued("gpu0") == [(2, "b"), (3, "c"), (4, "b")]
    effects = s.switch_done("gpu0", ok=True)
    assert effects == [Grant(1, "a"), BeginSwitch("gpu0", "b", "a", drain=True)]
    assert s.waiting(4) is not None and s.waiting(4).joined_switch
    assert s.waiting(3).queue_position == 1
    s.release(1)
    assert s.switch_done("gpu0", ok=True) == [Grant(2, "b"), Grant(4, "b"), BeginSwitch("gpu0", "c", "b", True)]


def test_switch_completion_grants_queued_requests_for_the_new_resident() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    s.request(2, "b")  # switch a -> b, draining 1
    s.request(3, "c")
    s.request(4, "b")  # joins
    s.release(1)
    assert s.switch_done("gpu0", ok=True) == [Grant(2, "b"), Grant(4, "b"), BeginSwitch("gpu0", "c", "b", True)]


def test_failed_switch_fails_its_joiners_and_moves_on() -> None:
    s = make()
    s.request(1, "a")
    s.request(2, "a")
    s.request(3, "b")
    effects = s.switch_done("gpu0", ok=False, reason="boom")
    assert effects == [Fail(1, "a", "boom"), Fail(2, "a", "boom"), BeginSwitch("gpu0", "b", None, drain=False)]
    assert s.inflight("a") == 0


def test_groups_are_independent_and_remote_models_always_pass() -> None:
    s = make()
    assert s.request(1, "a") == [BeginSwitch("gpu0", "a", None, False)]
    assert s.request(2, "x") == [BeginSwitch("gpu1", "x", None, False)]
    assert s.request(3, "remote") == [Grant(3, "remote")]
    assert s.release(3) == []


def test_cancel_removes_waiting_requests() -> None:
    s = make()
    s.request(1, "a")
    s.request(2, "b")
    s.cancel(1)
    s.cancel(2)
    assert s.switch_done("gpu0", ok=True) == []
    assert s.resident("gpu0") == "a" and s.inflight("a") == 0


def test_cancel_of_granted_request_releases_it() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    s.request(2, "b")
    assert s.cancel(1) == [Drained("gpu0", "a")]


def test_drain_timeout_lets_switch_proceed() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    s.request(2, "b")
    s.drain_timed_out("gpu0")
    assert s.release(1) == [], "no Drained after the owner gave up waiting"


def test_engine_lost_makes_next_request_reload() -> None:
    s = make()
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    s.release(1)
    s.engine_lost("a")
    assert s.request(2, "a") == [BeginSwitch("gpu0", "a", None, False)]


def test_unload_only_when_resident_and_idle_switching() -> None:
    s = make()
    assert s.unload("a") == []
    s.request(1, "a")
    s.switch_done("gpu0", ok=True)
    assert s.unload("a") == [BeginSwitch("gpu0", None, "a", drain=True)]
    s.release(1)
    assert s.switch_done("gpu0", ok=True) == []
    assert s.resident("gpu0") is None


def test_adopt_sets_resident() -> None:
    s = make()
    s.adopt("b")
    assert s.request(1, "b") == [Grant(1, "b")]
