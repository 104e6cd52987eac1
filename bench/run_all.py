"""Run the benchmarks, print their ratios and write docs/benchmarks.md (`make bench`).

python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coldload
import fleet
import footprint
import latency
import stream_relay
import swapback
import switch
import thrash
from common import ROOT, llama_server, machine

DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"

TARGETS = [
    "added latency p50 ≤ 1 ms, p99 ≤ 5 ms; ≥ 3× lower than LiteLLM",
    "streaming relay ≥ 0.95× direct aggregate tokens/s",
    "switch overhead ≤ 100 ms",
    "RSS ≤ 80 MB idle, ≤ 1.5 s to ready",
    "thrash, 16 clients, 2 models: wall, p95 ≤ 1.0× llama.cpp router mode on every mix (worst mix), none failed",
    "thrash: engine loads ≤ llama.cpp router mode's on every mix (worst mix)",
    "co-residency: two of three fit, alternating reloads nothing, the third evicts exactly one",
    "swap-back (KV continuity), 8k+ tokens: TTFT ≤ 1.5× resident, ≤ 0.2× llama.cpp router mode",
    "cold load of a 3.8 GB model: load-to-first-token ≤ 1.3× the read floor (best load mode)",
    "switch while the victim drains, page-cache warming on: newcomer ≤ 1.1× its page-cached load-to-first-token",
]


def targets_table(results: list[tuple[str, bool]]) -> str:
    rows = ["| # | target | measured | met |", "|---|---|---|---|"]
    for number, (target, (measured, ok)) in enumerate(zip(TARGETS, results, strict=True), start=1):
        rows.append(f"| {number} | {target} | {measured} | {'yes' if ok else '**no**'} |")
    return "\n".join(rows) + "\n"


def missed_section(results: list[tuple[str, bool]]) -> str:
    """The narrative that depends on this run's results: which targets it missed, by how much."""
    missed = [(n, t, m) for n, (t, (m, ok)) in enumerate(zip(TARGETS, results, strict=True), start=1) if not ok]
    if not missed:
        return "## Targets missed\n\nNone in this run.\n"
    lines = ["## Targets missed", ""]
    lines += [f"- **Target {n}** ({target}): measured {measured}." for n, target, measured in missed]
    lines += ["", "Causes found so far and the next steps: [benchmark-history.md](benchmark-history.md).", ""]
    return "\n".join(lines)


def dirty_tree() -> str:
    """`git status --porcelain` of the checkout: empty when the run measures exactly one commit."""
    return subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    quick = args.quick
    if args.output.resolve() == DEFAULT_OUTPUT and (quick or dirty_tree()):
        why = "--quick is a smoke run" if quick else "the tree has uncommitted changes:\n" + dirty_tree()
        sys.exit(
            f"refusing to write {DEFAULT_OUTPUT.relative_to(ROOT)}: it publishes one full run of one commit, and "
            f"{why}\nCommit first, or write elsewhere with --output."
        )
    commit = subprocess.run(  # at the start: the commit measured (a file edited meanwhile changes nothing run)
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print("1/8 latency …", flush=True)
    lat = latency.run(100 if quick else 500)
    print(latency.report(lat), flush=True)
    print("2/8 streaming relay …", flush=True)
    relay = stream_relay.run(64, 500 if quick else 2000)
    print(stream_relay.report(relay), flush=True)
    print("3/8 switch overhead …", flush=True)
    sw = switch.run(4 if quick else 12)
    print(switch.report(sw), flush=True)
    print("4/8 footprint …", flush=True)
    fp = footprint.run(3 if quick else 5)
    print(footprint.report(fp), flush=True)
    print("5/8 thrash beside llama.cpp router mode, co-residency …", flush=True)
    th = thrash.run([1] if quick else [1, 2, 3], 16, 100 if quick else 200)
    print(thrash.report(th), flush=True)
    worst = thrash.ratios(th)
    co = th["co_residency"]
    print("6/8 fleet: one endpoint beside one connection per host …", flush=True)
    fl = fleet.run([1] if quick else [1, 2, 3], 16, 100 if quick else 400, 50 if quick else 200)
    print(fleet.report(fl), flush=True)
    print("7/8 swap-back: a long conversation after its model was swapped out …", flush=True)
    sb = swapback.run(1 if quick else 3, 2048 if quick else 8192)
    print(swapback.report(sb), flush=True)
    print("8/8 cold loads: load modes against the read floor, page-cache warming …", flush=True)
    cl = coldload.run(1 if quick else 3)
    print(coldload.report(cl), flush=True)
    cold = coldload.summary(cl)
    ttft = sb["ttft_s"]
    resident_x = ttft["llm-router, KV continuity"] / ttft["resident"]
    peer_x = ttft["llm-router, KV continuity"] / ttft["llama.cpp router"]

    router_lat = lat["llm-router"]
    litellm_ratio = lat.get("litellm_vs_router_added_p50")
    results = [
        (
            f"+{router_lat['added_p50_ms']:.2f} ms p50, +{router_lat['added_p99_ms']:.2f} ms p99"
            + (f", LiteLLM adds {litellm_ratio:.1f}×" if litellm_ratio else ""),
            router_lat["added_p50_ms"] <= 1
            and router_lat["added_p99_ms"] <= 5
            and (litellm_ratio is None or litellm_ratio >= 3),
        ),
        (f"{relay['ratio']:.2f}×", relay["ratio"] >= 0.95),
        (f"{sw['overhead_ms']:.1f} ms", sw["overhead_ms"] <= 100),
        (
            f"{fp['rss_idle_mb']:.0f} MB idle, {fp['startup_s_median']:.2f} s",
            fp["rss_idle_mb"] <= 80 and fp["startup_s_median"] <= 1.5,
        ),
        (
            f"wall {worst['wall']:.2f}× ({worst['wall_mix']}), p95 {worst['p95']:.2f}× ({worst['p95_mix']}), "
            f"{worst['failed']} failed",
            worst["wall"] <= 1.0 and worst["p95"] <= 1.0 and not worst["failed"],
        ),
        (f"{worst['loads']:.2f}× ({worst['loads_mix']})", worst["loads"] <= 1.0),
        (
            f"{co['reloads_after_warmup']} reloads, {co['evictions_for_third']} eviction(s)",
            co["reloads_after_warmup"] == 0 and co["evictions_for_third"] == 1,
        ),
        (
            f"{ttft['llm-router, KV continuity']:.2f} s: {resident_x:.2f}× resident, {peer_x:.2f}× llama.cpp router",
            resident_x <= 1.5 and peer_x <= 0.2,
        ),
        (
            f"{cold['best_cold_s']:.2f} s with {cold['best_mode']}: {cold['best_x_floor']:.2f}× floor",
            cold["best_x_floor"] <= 1.3,  # type: ignore[operator]
        ),
        (
            f"{cold['warming_s']:.2f} s: {cold['warming_x_warm']:.2f}× page-cached ({cold['warm_s']:.2f} s; "
            f"warming off {cold['cold_s']:.2f} s)",
            cold["warming_x_warm"] <= 1.1,  # type: ignore[operator]
        ),
    ]
    targets = targets_table(results)
    print(targets)
    version = subprocess.run([llama_server(), "--version"], capture_output=True, text=True).stderr.strip()
    template = (ROOT / "bench" / "benchmarks.md.in").read_text()
    args.output.write_text(
        template.format(
            date=datetime.date.today().isoformat(),
            machine=machine(),
            commit=commit or "?",
            llama=version.splitlines()[0] if version else "?",
            quick=" (--quick)" if quick else "",
            targets=targets,
            missed=missed_section(results),
            latency=latency.report(lat),
            relay=stream_relay.report(relay),
            switch=switch.report(sw),
            footprint=footprint.report(fp),
            thrash=thrash.report(th),
            fleet=fleet.report(fl),
            swapback=swapback.report(sb),
            coldload=coldload.report(cl),
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
