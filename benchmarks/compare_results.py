"""Compare two results trees of the same experiments: are the selections, labels, decisions and
metrics identical?

A change that must not change behaviour (a restructure) is checked by running the same configs
on the same machine before and after it, into two results folders, and comparing them:

    python benchmarks/compare_results.py BEFORE_RESULTS AFTER_RESULTS

Every selected.csv and labelled.csv must be byte-identical; every decision.json and
metrics.json identical once the keys that depend on the clock or on which of two equal jobs ran
first are dropped (TIMING_KEYS). Files present on one side only are listed. Exit status 0 when
everything compared is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMPARED = ("selected.csv", "labelled.csv", "decision.json", "metrics.json")
# Wall-clock seconds, and whether a fine-tune was trained by this job or found in the cache
# (which of two jobs with the same fine-tune key runs first is up to the scheduler).
TIMING_KEYS = {"train_seconds", "test_seconds", "reused"}


def comparable(path: Path) -> object:
    if path.suffix == ".json":
        record = json.loads(path.read_text())
        return {key: value for key, value in record.items() if key not in TIMING_KEYS}
    return path.read_bytes()


def compare(before: Path, after: Path) -> tuple[int, list[str]]:
    """(files compared, differences as lines)."""
    names = {p.relative_to(before) for name in COMPARED for p in before.rglob(name)}
    names |= {p.relative_to(after) for name in COMPARED for p in after.rglob(name)}
    problems = []
    compared = 0
    for name in sorted(names):
        one, other = before / name, after / name
        if not one.exists() or not other.exists():
            problems.append(f"only in {'after' if not one.exists() else 'before'}: {name}")
            continue
        compared += 1
        if comparable(one) != comparable(other):
            problems.append(f"differs: {name}")
    return compared, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    compared, problems = compare(args.before, args.after)
    for line in problems:
        print(line)
    print(f"{compared} files compared ({', '.join(COMPARED)}; json without {', '.join(sorted(TIMING_KEYS))}): "
          f"{'identical' if not problems else f'{len(problems)} differences'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
