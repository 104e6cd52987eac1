"""`make bench` publishes one full run of one commit, and the text that depends on results comes from them."""

from __future__ import annotations

import sys

import pytest

from tests.modules import ROOT, load_module

run_all = load_module(ROOT / "bench" / "run_all.py", "bench_run_all")
RESULTS = [
    ("+1.64 ms p50", False),
    ("1.21×", True),
    ("4.3 ms", True),
    ("70 MB", True),
    ("wall 1.11×", False),
    ("1.04×", False),
    ("0", True),
    ("1.16 s: 1.20× resident, 0.21× llama.cpp router", False),
    ("1.80 s with mmap: 0.89× floor", True),
    ("0.66 s: 1.15× page-cached", False),
]


def test_the_targets_table_and_the_missed_section_come_from_the_results() -> None:
    table = run_all.targets_table(RESULTS)
    assert "| 1 | added latency p50 ≤ 1 ms" in table and "| +1.64 ms p50 | **no** |" in table
    assert "| 2 | streaming relay" in table and "| 1.21× | yes |" in table
    missed = run_all.missed_section(RESULTS)
    assert "**Target 1**" in missed and "**Target 5**" in missed and "wall 1.11×" in missed
    assert "**Target 6**" in missed and "1.04×" in missed
    assert "**Target 8**" in missed and "0.21× llama.cpp router" in missed
    assert "**Target 10**" in missed and "1.15× page-cached" in missed
    assert "Target 2" not in missed and "Target 7" not in missed and "Target 9" not in missed
    assert "None in this run." in run_all.missed_section([(m, True) for m, _ in RESULTS])


@pytest.mark.parametrize(
    ("argv", "dirty", "why"), [([], " M router_app/app.py", "uncommitted"), (["--quick"], "", "smoke")]
)
def test_the_published_file_is_refused_for_a_dirty_tree_or_a_quick_run(monkeypatch, argv, dirty, why) -> None:
    monkeypatch.setattr(run_all, "dirty_tree", lambda: dirty)
    monkeypatch.setattr(sys, "argv", ["run_all.py", *argv])
    monkeypatch.setattr(run_all.latency, "run", lambda *_: pytest.fail("a benchmark ran"))
    with pytest.raises(SystemExit, match=f"refusing to write docs/benchmarks.md.*{why}"):
        run_all.main()
