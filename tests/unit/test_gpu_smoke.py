"""scripts/gpu_smoke.py's pass/fail rules (`verdict`): each rule fails the engine it names, a good run passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.modules import load_script

ROOT = Path(__file__).resolve().parents[2]


smoke = load_script("gpu_smoke")

# A sleep/wake that did its job: same process, no integrity restart, wake a small share of the cold load.
GOOD = smoke.Measured(
    "sglang",
    first_load_s=61.0,
    load_s=40.0,
    tok_s=230.0,
    sleeps=True,
    state_asleep="sleeping",
    wake_s=1.6,
    pid_before=4242,
    pid_after=4242,
    restarts_before=0,
    restarts_after=0,
    answer_after_wake="12",
)


def test_a_good_sleep_and_wake_passes() -> None:
    assert smoke.verdict(GOOD) == []
    assert smoke.report(GOOD, []).startswith("PASS  sglang")


def test_an_engine_without_sleep_is_judged_by_its_sampled_request_only() -> None:
    llama = smoke.Measured("llamacpp", first_load_s=3.0, load_s=3.0, tok_s=300.0)
    assert smoke.verdict(llama) == []
    assert smoke.verdict(dataclasses.replace(llama, sampled_error="chat HTTP 500: ninja not found")) == [
        "sampled request (top_p/top_k) failed: chat HTTP 500: ninja not found"
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # The router's wake-integrity check restarted the engine cold: the wake "worked" only as a cold load.
        ({"restarts_after": 1}, "the wake restarted the engine cold (wake_integrity_restarts 0 -> 1)"),
        # systemd restarted the unit (or the router stopped and started it): a new process is no wake.
        ({"pid_after": 4343}, "engine PID changed across the sleep/wake (4242 -> 4343)"),
        ({"pid_after": None}, "engine PID unknown across the sleep/wake"),
        # As slow as a cold load: the engine reloaded everything.
        ({"wake_s": 21.0}, "wake 21.0s is more than 0.5 x the cold load 40.0s"),
        # The sleep itself failed and the router stopped the engine instead (runtime.deactivate's fallback).
        ({"state_asleep": "stopped"}, "after the sleep the model was 'stopped', not 'sleeping'"),
        ({"answer_after_wake": "7"}, "after the wake the answer to 7+5 was '7'"),
        ({"sampled_error": "chat HTTP 0: connection reset"}, "sampled request (top_p/top_k) failed"),
    ],
)
def test_each_rule_fails_the_engine(change: dict[str, object], reason: str) -> None:
    reasons = smoke.verdict(dataclasses.replace(GOOD, **change))
    assert len(reasons) == 1 and reasons[0].startswith(reason), reasons
    assert smoke.report(dataclasses.replace(GOOD, **change), reasons).startswith("FAIL  sglang")


def test_the_wake_ratio_boundary() -> None:
    """At most WAKE_MAX_RATIO (0.5) of the cold load passes; a hair more fails."""
    assert smoke.verdict(dataclasses.replace(GOOD, wake_s=20.0)) == []
    assert smoke.verdict(dataclasses.replace(GOOD, wake_s=20.1)) != []


def test_every_sleeping_engine_is_exercised() -> None:
    """SGLang, vLLM and both TabbyAPI checkouts sleep in the smoke (TabbyAPI: unload/load through its admin API)."""
    entries = {s.engine: s.entry for s in smoke.smoke_models(Path("/srv/llm-models/smoke"))}
    assert {e for e, entry in entries.items() if entry.get("evict") == "sleep"} == {
        "sglang",
        "vllm",
        "tabbyapi",
        "tabbyapi-exl2",
    }


def test_engine_pid_reads_the_supervisor_field() -> None:
    assert smoke.engine_pid({"supervisor": "pid 31337"}) == 31337
    assert smoke.engine_pid({"state": "stopped"}) is None
