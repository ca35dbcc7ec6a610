"""The results tree as tables: summary.csv (one row per evaluation point: accuracy, timings),
rounds.csv (one row per round of every run: every job's seconds and the fine-tunes it used),
decisions.csv (ASVP's verdict per round) and class_counts.csv (the labelled set per class, by
name). Everything the report, the saving ratio and the cost model read comes from these.

Timings come from Snakemake's `benchmark:` files (wall seconds of each job), stored per round
under `round{r}/benchmarks/<rule>.tsv`, and from the selection job's `select_steps.tsv` (one row
per step it runs: train_proxy, select, label, decide; asvp.step_timing), so the paper's time
model (sec. 6.4) can be computed
from the table: T_tr,proxy + T_f,proxy per round, T_pre for extraction, T_tr,full for FT.
The one-off pre-trained extraction is charged to round 0 of the methods that use features.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asvp.atomic import read_json, write_csv
from asvp.methods import method
from asvp.strategies.base import STRATEGIES

ROUND_PATH = re.compile(r"(?P<method>[^/]+)/(?P<strategy>[^/]+)/seed(?P<seed>\d+)/round(?P<round>\d{3})/metrics\.json$")


def charges_extraction(method_name: str, strategy: str, round_index: int) -> bool:
    """Whether a round pays the pre-trained extraction: round 0 of every method that reads the
    features (ActiveFT's round 0 does, whatever the method), and every single shot of ActiveFT(pre),
    each of which a user could run alone."""
    entry = method(method_name)
    if entry.single_shot:
        return True
    return round_index == 0 and (entry.reads_features or (strategy in STRATEGIES and STRATEGIES[strategy].cold_start))


def _benchmark_seconds(path: Path) -> float:
    frame = pd.read_csv(path, sep="\t")
    return float(frame["s"].sum())


def stage_seconds(round_dir: Path) -> dict[str, float]:
    """{'seconds_<stage>': wall seconds} for every benchmark file of one round: a rule's file
    counts for the rule, a job's file with a `step` column (asvp.step_timing) for each step."""
    bench = round_dir / "benchmarks"
    if not bench.is_dir():
        return {}
    seconds: dict[str, float] = {}
    for path in sorted(bench.glob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if "step" in frame.columns:
            for step, s in frame.groupby("step", sort=True)["s"].sum().items():
                seconds[f"seconds_{step}"] = seconds.get(f"seconds_{step}", 0.0) + float(s)
        else:
            seconds[f"seconds_{path.stem}"] = seconds.get(f"seconds_{path.stem}", 0.0) + float(frame["s"].sum())
    return seconds


DECISION_COLUMNS = ["n_labelled", "feature_version", "ped_steps", "score", "previous_score", "difference", "rule",
                    "labels_added", "normalised_difference", "threshold", "verdict", "refresh_features", "train_method",
                    "reason"]


def _finetune_columns(prefix: str, path: Path) -> dict[str, Any]:
    """Which fine-tune a round used (its cache key) and what it cost where it was trained."""
    if not path.exists():
        return {}
    record = read_json(path)
    # Device seconds, what the cost model charges: a fine-tune on 4 GPUs (gpus_per_job) costs
    # 4 GPU hours per hour of wall time. The test pass runs in the parent process, on one device.
    processes = int(record.get("processes", 1))
    return {
        f"{prefix}_key": record.get("finetune_key"),
        f"{prefix}_reused": bool(record.get("reused", False)),
        f"{prefix}_processes": processes,
        f"{prefix}_train_seconds": record.get("train_seconds", math.nan) * processes,
        f"{prefix}_test_seconds": record.get("test_seconds", math.nan),
        f"{prefix}_method": record.get("train_method"),
    }


def collect_rounds(experiment_dir: str | Path, runs: list[tuple[str, str, int]], n_rounds: int,
                   classes: list[str], random_rounds: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """rounds, decisions and class-count tables for rounds 0..n_rounds-1 of the given runs
    (0..random_rounds-1 of the random baseline's, when it runs on past the others).

    Only the runs and rounds of the current config are read: a results tree keeps files of
    methods or rounds a user has since removed, and those must not leak into the figures.
    """
    experiment_dir = Path(experiment_dir)
    extraction = experiment_dir / "features" / "benchmarks" / "extract_pretrained.tsv"
    extract_seconds = _benchmark_seconds(extraction) if extraction.exists() else 0.0
    rounds, decisions, counts = [], [], []
    for method, strategy, seed in runs:
        for r in range((random_rounds or n_rounds) if method == "random" else n_rounds):
            directory = experiment_dir / method / strategy / f"seed{seed}" / f"round{r:03d}"
            labelled_csv = directory / "labelled.csv"
            if not labelled_csv.exists():
                continue  # not run yet: the tables show the rounds that exist
            labels = pd.read_csv(labelled_csv, usecols=["label"])["label"].to_numpy()
            key = {"method": method, "strategy": strategy, "seed": seed, "round": r, "n_labelled": len(labels)}
            row = {**key, **stage_seconds(directory)}
            if charges_extraction(method, strategy, r):
                row["seconds_extract_pretrained"] = extract_seconds
            row.update(_finetune_columns("eval", directory / "metrics.json"))
            row.update(_finetune_columns("refresh", directory / "refresh_finetune.json"))
            decision_path = directory / "decision.json"
            if decision_path.exists():
                decision = read_json(decision_path)
                row["refreshed"] = bool(decision["refresh_features"])
                decisions.append({**key, **{c: decision.get(c) for c in DECISION_COLUMNS if c != "n_labelled"}})
            rounds.append(row)
            per_class = np.bincount(labels, minlength=len(classes))
            counts.append({**key, **{name: int(n) for name, n in zip(classes, per_class)}})
    return pd.DataFrame(rounds), pd.DataFrame(decisions), pd.DataFrame(counts)


def write_round_tables(experiment_dir: str | Path, runs: list[tuple[str, str, int]], n_rounds: int, dataset_json: str | Path,
                       rounds_out: str | Path, decisions_out: str | Path, class_counts_out: str | Path,
                       random_rounds: int | None = None) -> None:
    info = read_json(dataset_json)
    classes = info.get("classes") or [str(i) for i in range(info["num_classes"])]
    rounds, decisions, counts = collect_rounds(experiment_dir, runs, n_rounds, classes, random_rounds)
    seconds = sorted(c for c in rounds.columns if c.startswith("seconds_"))
    rounds[seconds] = rounds[seconds].fillna(0.0)
    write_csv(rounds_out, rounds)
    write_csv(decisions_out, decisions if not decisions.empty else pd.DataFrame(columns=["method", "strategy", "seed", "round", *DECISION_COLUMNS]))
    write_csv(class_counts_out, counts)


def summarize(experiment_dir: str | Path, metrics_files: list[str], out: str | Path) -> pd.DataFrame:
    experiment_dir = Path(experiment_dir)
    extraction = experiment_dir / "features" / "benchmarks" / "extract_pretrained.tsv"
    extract_seconds = _benchmark_seconds(extraction) if extraction.exists() else 0.0
    rows = []
    for metrics_file in metrics_files:
        match = ROUND_PATH.search(Path(metrics_file).as_posix())
        if match is None:
            raise ValueError(f"unexpected metrics path {metrics_file}")
        metrics = read_json(metrics_file)
        row = {
            "experiment": experiment_dir.name,
            "method": match["method"],
            "strategy": match["strategy"],
            "seed": int(match["seed"]),
            "round": int(match["round"]),
            "n_labelled": metrics["n_labelled"],
            "accuracy": metrics["accuracy"],  # None (an empty cell) without a labelled test set
            "n_test": metrics.get("n_test"),
            "train_method": metrics["train_method"],
            "status": metrics.get("status", "ok"),
            "final_train_accuracy": metrics.get("final_train_accuracy"),
            "reused_finetune": metrics.get("reused", False),
            "finetune_key": metrics.get("finetune_key"),
            "device": metrics.get("device"),
        }
        for index, value in enumerate(metrics.get("per_class_accuracy") or []):
            row[f"class_accuracy_{index}"] = value
        if charges_extraction(row["method"], row["strategy"], row["round"]):
            row["seconds_extract_pretrained"] = extract_seconds
        row.update(stage_seconds(Path(metrics_file).parent))
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values(["method", "strategy", "seed", "round"], kind="stable")
    seconds = sorted(c for c in frame.columns if c.startswith("seconds_"))
    frame[seconds] = frame[seconds].fillna(0.0)
    frame = frame[[c for c in frame.columns if not c.startswith("seconds_")] + seconds]
    write_csv(out, frame)
    return frame


NO_TEST_SET = ("no labelled test set (test.csv has no rows): no accuracy can be given, nor a saving ratio or a "
               "cost to reach an accuracy. The models were trained and delivered; label a test set to measure them.")


def has_test_set(summary: pd.DataFrame) -> bool:
    """Whether any evaluation had test images (a data source may come without a test set)."""
    if "n_test" in summary.columns and summary["n_test"].notna().any():
        return bool((summary["n_test"] > 0).any())
    return bool(summary["accuracy"].notna().any())


def run_notice(summary_csv: str | Path) -> str:
    """What the terminal says after a run: mean accuracy per method and evaluation point, and
    every diverged fine-tune, so a wrong curve is seen without opening a file."""
    summary_csv = Path(summary_csv)
    if not summary_csv.exists():
        return ""
    frame = pd.read_csv(summary_csv)
    if not has_test_set(frame):
        lines = [f"asvp-flow: {NO_TEST_SET}"]
    else:
        table = frame.groupby(["method", "strategy", "n_labelled"])["accuracy"].agg(["mean", "std", "count"])
        lines = [f"asvp-flow: mean test accuracy ({summary_csv}):", table.round(3).to_string()]
    if any(summary_csv.parent.glob("*/*/seed*/final/model.pt")):
        lines.append(f"asvp-flow: each run's final model (model.pt, model.torchscript.pt) and its predictions for the "
                     f"unlabelled pool (predictions.csv): {summary_csv.parent}/<method>/<strategy>/seed<k>/final/")
    diverged = frame[frame.get("status", pd.Series("ok", index=frame.index)) == "diverged"]
    for _, row in diverged.iterrows():
        lines.append(
            f"WARNING: diverged fine-tune: {row['method']}/{row['strategy']}/seed{row['seed']} round {row['round']} "
            f"({row['n_labelled']} labels, {row['train_method']}); see that round's metrics.json and logs/evaluate.log"
        )
    table1 = summary_csv.parent / "report" / "table1.csv"
    if table1.exists():
        lines += [f"asvp-flow: saving ratio and cost ({table1}; snakemake --report report.html for the full report):",
                  pd.read_csv(table1).fillna("").to_string(index=False)]
    return "\n".join(lines)
