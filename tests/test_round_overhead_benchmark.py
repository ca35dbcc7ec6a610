"""The round-overhead benchmark runs (3 rounds of svpp) and splits each round's wall time."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import round_overhead  # noqa: E402


def test_a_round_splits_into_steps_and_what_lies_outside_them(tmp_path: Path, real_fashion_mnist: Path) -> None:
    splits = round_overhead.measure("svpp", 3, 10, 300, tmp_path)
    assert [s.round for s in splits] == [2]
    split = splits[0]
    assert (split.jobs, split.steps) == (1, 3)  # one job: train-proxy, select, label
    assert split.step > 0 and split.import_torch > 0  # train-proxy imports torch; select and label do not
    assert split.outside > 0  # every step pays an interpreter start, every job its scheduling
    assert abs(split.step + split.import_torch + split.outside - split.wall) < 1e-9
