"""The mutation score of `make mutation`, from mutmut's CI stats; fails below --min percent.

Score = killed / (total - skipped): a mutant no test reaches ("no tests"), a survivor, a timeout or a
suspicious result all count against it. Lists the mutants that were not killed (`mutmut show NAME` for a diff).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STATS = Path("mutants/mutmut-cicd-stats.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=90.0, help="lowest acceptable score, percent")
    args = parser.parse_args()
    stats = json.loads(STATS.read_text())
    counted = stats["total"] - stats["skipped"]
    score = 100.0 * stats["killed"] / counted if counted else 0.0
    mutmut = Path(sys.executable).with_name("mutmut")
    results = subprocess.run([str(mutmut), "results"], capture_output=True, text=True, check=True).stdout
    left = [line.strip() for line in results.splitlines() if line.strip()]
    for line in left:
        print(f"not killed: {line}")
    summary = ", ".join(f"{key} {stats[key]}" for key in ("killed", "survived", "no_tests", "timeout", "suspicious"))
    print(f"mutation score {score:.1f} % ({stats['killed']} of {counted} mutants killed; {summary})")
    if score < args.min:
        print(f"below the bar of {args.min:.0f} %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
