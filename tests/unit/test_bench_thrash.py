"""The thrash benchmark's fairness (run order) and its verdict per mix (pooled seeds, the worst mix decides)."""

from __future__ import annotations

from tests.modules import ROOT, load_module

run_all = load_module(ROOT / "bench" / "run_all.py", "bench_run_all")
thrash = run_all.thrash


def test_each_system_runs_first_on_half_the_seeds_of_every_mix() -> None:
    mixes = ["ours", "demo"]  # an even number of mixes: a per-run toggle would give each mix one fixed order
    runs = thrash.schedule([1, 2, 3, 4], mixes)
    assert [(seed, mix) for seed, mix, _ in runs] == [(s, m) for s in (1, 2, 3, 4) for m in mixes]
    for mix in mixes:
        firsts = [systems[0] for _, name, systems in runs if name == mix]
        assert sorted(firsts) == sorted(["llm-router", "llama.cpp router"] * 2)
    assert all(sorted(systems) == sorted(thrash.SYSTEMS) for _, _, systems in runs)


def row(mix: str, system: str, seed: int, wall: float, latencies: list[float], loads: int = 5) -> dict:
    return {
        "mix": mix,
        "system": system,
        "seed": seed,
        "wall_s": wall,
        "latencies": latencies,
        "loads": loads,
        "failed": 0,
    }


def test_a_mix_pools_its_seeds_and_the_worst_mix_decides() -> None:
    ours, theirs = thrash.SYSTEMS
    data = {
        "mixes": ["ours", "demo"],
        "rows": [
            # ours: one seed slower (1.2x), one faster; pooled wall 2.0 / 2.0 = 1.0
            row("ours", ours, 1, 1.2, [0.1] * 19 + [0.2]),
            row("ours", theirs, 1, 1.0, [0.1] * 19 + [0.3]),
            row("ours", ours, 2, 0.8, [0.1] * 20),
            row("ours", theirs, 2, 1.0, [0.1] * 20),
            # demo: 1.1x wall, p95 over all 40 latencies: 0.4 against 0.2
            row("demo", ours, 1, 2.2, [0.1] * 18 + [0.4] * 2, loads=6),
            row("demo", theirs, 1, 2.0, [0.1] * 18 + [0.2] * 2, loads=4),
            row("demo", ours, 2, 2.2, [0.1] * 18 + [0.4] * 2, loads=6),
            row("demo", theirs, 2, 2.0, [0.1] * 18 + [0.2] * 2, loads=4),
        ],
    }
    per_mix = thrash.mix_ratios(data)
    assert per_mix["ours"]["wall"] == 1.0
    assert per_mix["demo"] == {"wall": 1.1, "p95": 2.0, "loads": 1.5, "failed": 0, "their_failed": 0}
    worst = thrash.ratios(data)
    assert (worst["wall"], worst["wall_mix"], worst["p95_mix"], worst["loads_mix"]) == (1.1, "demo", "demo", "demo")
