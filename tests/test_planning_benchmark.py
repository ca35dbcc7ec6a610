"""The planning benchmark (dry-run time of an R-round plan) runs at a few rounds in seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_planning_benchmark_counts_the_jobs_of_a_small_plan(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "planning.py"), "--rounds", "5", "--floor", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| 20") and "| 5 |" in line)
    # 5 rounds of random, svpp and asvp, evaluated at the last round only: a round is one job for
    # random and svpp, two for asvp (selection with its decision, refresh), plus round 0's decide,
    # 3 evaluations, 3 deliveries (final/) and 6 shared jobs (pool, config, extraction, summary,
    # report, all).
    cells = [cell.strip() for cell in row.split("|")]
    assert int(cells[4]) == 5 * 4 + 1 + 3 + 3 + 6
    # --floor: the minimal workflow of as many jobs was planned (main checks its job count) and timed.
    floor_seconds, ratio = float(cells[11]), float(cells[12])
    assert floor_seconds > 0 and ratio > 0
