"""Where does ASVP's refresh rule fire, and does that depend on the round size?

On the default experiment's pre-trained features (Fashion-MNIST pool, MobileNetV2 at 32 px), this
draws random nested labelled sets (one random order of the pool per seed; the set at n labels is
its first n rows), scores LogME-PED at every 25 labels from --start to --max-labels with the
workflow's own `asvp.decision.decide_round` (PED reference: the unlabelled pool rows, as
`asvp decide` does), and replays the rule for rounds of 25, 50, 100 and 200 labels (and the
default experiment's schedule) from the same curve. Because the sets are nested, every round
size sees the same labelled sets at the label counts it shares with the others: the only
difference between round sizes is the rule.

The three values of decision.rule are compared (`asvp.decision.normalised_change`), each firing
at the first round whose value is below the threshold (1, the paper's, unless --threshold says
otherwise; PED never converges on these features, so that check never keeps the features):
  paper        |delta LogME-PED| between consecutive rounds (paper sec. 5)
  per_labels   |delta| x 200 / labels added: the paper's value at every 200-label round
  per_doubling |delta| x log2(600/400) / log2(n_t / n_{t-1}): per doubling of the labelled set,
               equal to the paper's |delta| at its refresh (400 -> 600 labels, 200 per round)

With --margin-runs, it also scores the margin-selected labelled sets of an existing run folder
(e.g. results/fmnist_default/svpp/margin, whose features are never refreshed) and prints each
rule's values along that run's schedule.

    python benchmarks/refresh_rule.py                      # builds the features if missing
    python benchmarks/refresh_rule.py --threshold 1 2 4 --margin-runs results/fmnist_default/svpp/margin

One thread (the BLAS thread count is set before numpy loads); about 30 s per seed on a 2-core CPU.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from asvp.config import validate_config  # noqa: E402
from asvp.decision import RULES, decide_round, normalised_change  # noqa: E402
from asvp.features import load_rows  # noqa: E402
from asvp.ped import CONVERGED_STEPS  # noqa: E402

DEFAULT_FEATURES = "results/fmnist_default/features/pretrained.h5"  # workflow_config.yaml's extraction
ROUND_SIZES = (25, 50, 100, 200)
DEFAULT_SCHEDULE = (100, 100, 100, 25, 25, 25, 25)  # workflow_config.yaml's budgets
RULE_NAMES = tuple(reversed(RULES))  # paper first


def ensure_features(path: Path) -> Path:
    """The features file; the default experiment's one is built by its own workflow target if missing."""
    if path.exists():
        return path
    if path.resolve() != (REPO / DEFAULT_FEATURES).resolve():
        sys.exit(f"features file {path} does not exist; omit --features to build the default experiment's")
    print(f"building {DEFAULT_FEATURES} with the default workflow's extraction (a few minutes) ...", flush=True)
    # The rules call the `asvp` command: the interpreter's own bin folder goes first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", DEFAULT_FEATURES], cwd=REPO, env=env, check=True)
    return path


def score_sets(x: np.ndarray, y: np.ndarray, sets: dict[int, np.ndarray], settings: dict) -> dict[int, tuple[float, int]]:
    """LogME-PED and PED steps of each labelled set (pool rows), scored as `asvp decide` does."""
    scored = {}
    for n, rows in sets.items():
        unlabelled = np.setdiff1d(np.arange(len(y)), rows)
        record = decide_round(x[rows], y[rows], x[unlabelled], None, settings)
        scored[n] = (record["score"], record["ped_steps"])
    return scored


def replay(scored: dict[int, tuple[float, int]], counts: list[int], rule: str, threshold: float) -> tuple[int | None, list[float]]:
    """First label count at which `rule` fires along `counts`, and the rule's value at each round."""
    values, fired = [], None
    for before, after in zip(counts, counts[1:]):
        value = normalised_change(abs(scored[after][0] - scored[before][0]), before, after, rule)
        values.append(value)
        if fired is None and value < threshold and scored[after][1] > CONVERGED_STEPS:
            fired = after
    return fired, values


def schedules(start: int, max_labels: int) -> dict[str, list[int]]:
    counts = {f"rounds of {r}": list(range(start, max_labels + 1, r)) for r in ROUND_SIZES}
    counts["default schedule"] = list(np.cumsum(DEFAULT_SCHEDULE))
    return counts


def summarise(fired: list[int | None]) -> str:
    hits = [f for f in fired if f is not None]
    if not hits:
        return f"never (0/{len(fired)})"
    spread = f"{min(hits)}-{max(hits)}" if min(hits) != max(hits) else f"{hits[0]}"
    return f"{np.mean(hits):.0f} ({spread}){'' if len(hits) == len(fired) else f', {len(hits)}/{len(fired)} seeds'}"


def margin_table(run_folder: Path, x: np.ndarray, y: np.ndarray, settings: dict, threshold: float) -> list[str]:
    lines = ["", f"Margin-selected sets of {run_folder} (never refreshed), rule values per round:", ""]
    lines.append("| seed | labels | LogME-PED | " + " | ".join(RULE_NAMES) + " |")
    lines.append("|---|---|---|" + "---|" * len(RULE_NAMES))
    for seed_dir in sorted(run_folder.glob("seed*")):
        tables = {int(p.parent.name[5:]): pd.read_csv(p) for p in sorted(seed_dir.glob("round*/labelled.csv"))}
        sets = {len(t): t["pool_index"].to_numpy() for t in tables.values()}
        scored = score_sets(x, y, sets, settings)
        counts = sorted(sets)
        lines.append(f"| {seed_dir.name} | {counts[0]} | {scored[counts[0]][0]:.2f} |" + " |" * len(RULE_NAMES))
        for before, after in zip(counts, counts[1:]):
            diff = abs(scored[after][0] - scored[before][0])
            cells = [f"{v:.2f}{' *' if v < threshold else ''}" for v in
                     (normalised_change(diff, before, after, rule) for rule in RULE_NAMES)]
            lines.append(f"| {seed_dir.name} | {after} | {scored[after][0]:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("(* below the threshold: the rule fires at the first starred round of a run.)")
    return lines


def firing_table(curves: dict[int, dict[int, tuple[float, int]]], args: argparse.Namespace, threshold: float) -> list[str]:
    lines = ["", f"Label count at which each rule first fires (threshold {threshold}), mean (min-max) over seeds:", ""]
    lines.append("| schedule | " + " | ".join(RULE_NAMES) + " |")
    lines.append("|---|" + "---|" * len(RULE_NAMES))
    spread: dict[str, list[float]] = {rule: [] for rule in RULE_NAMES}
    for name, counts in schedules(args.start, args.max_labels).items():
        cells = []
        for rule in RULE_NAMES:
            fired = [replay(curves[s], counts, rule, threshold)[0] for s in args.seeds]
            cells.append(summarise(fired))
            if name.startswith("rounds of") and all(f is not None for f in fired):
                spread[rule].append(float(np.mean(fired)))
        lines.append(f"| {name} ({counts[0]}-{counts[-1]}) | " + " | ".join(cells) + " |")
    lines.append("| spread of the means over rounds of 25-200 | " + " | ".join(
        f"{max(v) - min(v):.0f}" if len(v) == len(ROUND_SIZES) else "n/a" for v in spread.values()) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=REPO / DEFAULT_FEATURES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--start", type=int, default=100, help="labels of round 0 (the default experiment's)")
    parser.add_argument("--max-labels", type=int, default=2000)
    parser.add_argument("--threshold", type=float, nargs="+", default=[1.0],
                        help="thresholds to replay the rules with (1: the paper's)")
    parser.add_argument("--margin-runs", type=Path, help="a method/strategy folder with seed*/round*/labelled.csv")
    args = parser.parse_args()
    if args.start % 25 or args.max_labels < args.start + 200:
        sys.exit("--start must be a multiple of 25 and --max-labels at least --start + 200")

    began = time.perf_counter()
    x, y = load_rows(ensure_features(args.features), "pool")
    x = x.astype(np.float64)
    settings = validate_config({"experiment": "benchmark"})["decision"]  # fixed_point LogME, as the default
    grid = list(range(args.start, args.max_labels + 1, 25))
    curves = {}
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(y))
        curves[seed] = score_sets(x, y, {n: order[:n] for n in grid}, settings)
        print(f"seed {seed} scored ({time.perf_counter() - began:.0f} s)", flush=True)

    lines = [f"LogME-PED ({settings['logme_variant']}) of random nested sets, mean (min-max) over seeds "
             f"{', '.join(map(str, args.seeds))}:", "", "| labels | LogME-PED | PED steps |", "|---|---|---|"]
    for n in [c for c in (100, 200, 300, 400, 600, 800, 1000, 1500, 2000) if c in grid]:
        values = [curves[s][n][0] for s in args.seeds]
        steps = sorted({curves[s][n][1] for s in args.seeds})
        lines.append(f"| {n} | {np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f}) | {', '.join(map(str, steps))} |")
    for threshold in args.threshold:
        lines += firing_table(curves, args, threshold)
    if args.margin_runs:
        lines += margin_table(args.margin_runs, x, y, settings, args.threshold[0])
    lines += ["", f"{dt.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, "
              f"1 BLAS thread, {time.perf_counter() - began:.0f} s wall"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
