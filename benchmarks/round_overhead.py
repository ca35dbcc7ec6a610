"""Round overhead benchmark: where a selection round's wall time goes.

A round of a proxy method is one job of several steps (svpp: train-proxy, select, label in
select_proxy; asvp adds decide in select_proxy_decide, then its own refresh_features job), each
step an `asvp` process. This runs that chain for real on Fashion-MNIST (the embedded default
data), one method at a time on one core so that nothing overlaps, and splits each round's wall
time (from one round's labelled.csv to the next one's) into

  * in the steps: the library's own work, from the CLI's `asvp <cmd>: X s in the step` log lines
    (`import torch` is counted apart: it is paid by every step that uses torch);
  * outside the steps: the round's wall time minus its steps: every step's interpreter start-up
    and import of the CLI, the shell, and Snakemake noticing a job ended, updating the DAG and
    starting the next job.

    python benchmarks/round_overhead.py                       # 8 rounds of svpp and asvp, prints the table
    python benchmarks/round_overhead.py --rounds 12 --out BENCHMARKS.md

Timings are wall times and grow with other load on the machine; the load is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
# The selection job's step that runs after its labelled.csv is written: it belongs to the next
# round's interval (as does that round's refresh_features job, read from its own log).
AFTER_LABELS = ("decide",)
STEP_LINE = re.compile(r"^asvp (\S+): ([0-9.]+) s in the step, ([0-9.]+) s of it importing torch$", re.M)


@dataclass
class RoundSplit:
    method: str
    round: int
    wall: float  # from the previous round's labelled.csv to this round's
    jobs: int
    steps: int  # asvp processes
    step: float  # sum of in-step seconds, import torch excluded
    import_torch: float

    @property
    def outside(self) -> float:
        return self.wall - self.step - self.import_torch


def write_config(folder: Path, method: str, rounds: int, budget: int, pool: int) -> Path:
    text = (
        f"experiment: overhead_{method}\n"
        f"results_dir: {folder / 'results'}\n"
        "seeds: [0]\n"
        f"methods: [{method}]\n"
        "strategies: [margin]\n"
        "device: cpu\n"
        f"data: {{dataset: fashion_mnist, pool_subset: {pool}, test_subset: 100, resolution: 32}}\n"
        f"schedule: {{budgets: [{', '.join([str(budget)] * rounds)}]}}\n"
        f"evaluation: {{at: [{budget * rounds}]}}\n"
        # A threshold far above any score: ASVP refreshes whenever its rule may (decision.json
        # says when), so the chain includes real refreshes, not only pass-throughs.
        "decision: {threshold: 1000000.0}\n"
        "finetune: {epochs: 3, milestones: [], min_steps: 0}\nlpft: {lp_epochs: 1}\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{method}.yaml"
    path.write_text(text)
    return path


def step_seconds(log: Path) -> list[tuple[str, float, float]]:
    """(command, in-step seconds without import torch, import torch seconds) of every step in a
    job's log, in order."""
    steps = [(m.group(1), float(m.group(2)) - float(m.group(3)), float(m.group(3)))
             for m in STEP_LINE.finditer(log.read_text())]
    if not steps:
        raise RuntimeError(f"{log}: no 'in the step' line (a step that failed?)")
    return steps


def measure(method: str, rounds: int, budget: int, pool: int, folder: Path) -> list[RoundSplit]:
    config = write_config(folder, method, rounds, budget, pool)
    run = folder / "results" / f"overhead_{method}" / method / "margin" / "seed0"
    target = run / f"round{rounds - 1:03d}" / "labelled.csv"
    command = [sys.executable, "-m", "snakemake", "-s", str(CHECKOUT / "Snakefile"), "-d", str(folder / "wd"),
               "--configfile", str(config), "--cores", "1", "--quiet", "rules", "--", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if result.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}")
    splits = []
    # Round 1 also waits for the pool's feature extraction: rounds 2 on are pure selection rounds.
    for r in range(2, rounds):
        here, before = run / f"round{r:03d}", run / f"round{r - 1:03d}"
        wall = (here / "labelled.csv").stat().st_mtime - (before / "labelled.csv").stat().st_mtime
        # The decision on round r-1's labels (and the refresh it asks for) runs after that round's
        # labelled.csv, so it belongs to this interval.
        steps = [s for s in step_seconds(here / "logs" / "select.log") if s[0] not in AFTER_LABELS]
        steps += [s for s in step_seconds(before / "logs" / "select.log") if s[0] in AFTER_LABELS]
        jobs = 1
        if (before / "logs" / "refresh_features.log").exists():
            steps += step_seconds(before / "logs" / "refresh_features.log")
            jobs += 1
        splits.append(RoundSplit(method, r, wall, jobs, len(steps), sum(s for _, s, _ in steps),
                                 sum(t for _, _, t in steps)))
    return splits


def table(splits: list[RoundSplit], args: argparse.Namespace) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    when = dt.datetime.now().isoformat(timespec="minutes")
    lines = [
        f"## {when} round overhead on {platform.node()} ({os.cpu_count()} CPUs, load {load})",
        "",
        f"Command: `python benchmarks/round_overhead.py {shlex.join(args.argv)}` (Fashion-MNIST, {args.pool} images "
        f"at 32 px, rounds of {args.budget} labels, one method at a time on `--cores 1`; mean over rounds "
        f"2..{args.rounds - 1}, seconds per round)",
        "",
        "| method | jobs per round | steps per round | round wall | in the steps | import torch | outside the steps | "
        "overhead share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        rows = [s for s in splits if s.method == method]
        n = len(rows)

        def mean(values: list[float]) -> float:
            return sum(values) / n

        wall, step = mean([s.wall for s in rows]), mean([s.step for s in rows])
        lines.append(
            f"| {method} | {mean([s.jobs for s in rows]):.0f} | {mean([s.steps for s in rows]):.0f} | {wall:.2f} | "
            f"{step:.2f} | {mean([s.import_torch for s in rows]):.2f} | {mean([s.outside for s in rows]):.2f} | "
            f"{1 - step / wall:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="selection rounds per method (at least 3)")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--methods", nargs="+", default=["svpp", "asvp"])
    parser.add_argument("--out", type=Path, default=None, help="append the table to this file (e.g. BENCHMARKS.md)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (rounds 0 and 1 include set-up)")
    splits: list[RoundSplit] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asvp-overhead-") as scratch:
        for method in args.methods:
            splits += measure(method, args.rounds, args.budget, args.pool, Path(scratch) / method)
    text = table(splits, args) + f"\n(whole benchmark: {time.perf_counter() - started:.0f} s)\n"
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
