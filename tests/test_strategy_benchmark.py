"""The strategy benchmark runs at a small --scale in seconds and checks the references' picks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_strategy_benchmark_at_small_scale_writes_a_table_with_identical_reference_picks(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "strategies.py"), "--scale", "0.0005", "--picks", "12",
         "--ref-picks", "6", "--coverage", "--data-dir", str(tmp_path / "data"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for task in ("proxy_margin", "margin", "coreset", "badge", "activeft", "coreset_ref", "badge_ref"):
        assert f"| {task} |" in text
    assert text.count("first 6 picks identical") == 2
    assert text.count("k-means cost") == 3  # badge, badge_seed2, badge_approx, each next to uniform random picks
    assert list((tmp_path / "data").glob("*.features.npy"))  # the pool is kept for the next run

    # ActiveFT timed on fewer iterations is rerun (not taken from the results file) and extrapolated.
    again = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "strategies.py"), "--scale", "0.0005", "--picks", "12",
         "--tasks", "activeft", "--activeft-iterations", "2", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    row = next(line for line in again.stdout.splitlines() if line.startswith("| activeft |"))
    assert "2 of 100 iterations, then the matching" in row and "extrapolated:" in row

    # A reference is compared with the fast run of any size: here the fast runs were made with --picks 12 only.
    other_size = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "strategies.py"), "--scale", "0.0005", "--picks", "20",
         "--ref-picks", "6", "--tasks", "coreset_ref", "badge_ref", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300,
    )
    assert other_size.returncode == 0, other_size.stderr[-3000:]
    assert other_size.stdout.count("first 6 picks identical") == 2
