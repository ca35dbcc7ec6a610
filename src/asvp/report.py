"""summary.csv: one row per (method, strategy, seed, round) with accuracy and stage timings.

Timings come from Snakemake's `benchmark:` files (wall seconds of each job), stored per round
under `round{r}/benchmarks/<rule>.tsv`, so the paper's time model (sec. 6.4) can be computed
from the table: T_tr,proxy + T_f,proxy per round, T_pre for extraction, T_tr,full for FT.
The one-off pre-trained extraction is charged to round 0 of the methods that use features.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from asvp.atomic import read_json, write_csv

ROUND_PATH = re.compile(r"(?P<method>[^/]+)/(?P<strategy>[^/]+)/seed(?P<seed>\d+)/round(?P<round>\d{3})/metrics\.json$")
FEATURE_METHODS = {"svpp", "asvp", "asvp_features_only", "asvp_training_only", "activeft_pre"}


def _benchmark_seconds(path: Path) -> float:
    frame = pd.read_csv(path, sep="\t")
    return float(frame["s"].sum())


def stage_seconds(round_dir: Path) -> dict[str, float]:
    """{'seconds_<rule>': wall seconds} for every benchmark file of one round."""
    bench = round_dir / "benchmarks"
    if not bench.is_dir():
        return {}
    return {f"seconds_{p.stem}": _benchmark_seconds(p) for p in sorted(bench.glob("*.tsv"))}


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
            "accuracy": metrics["accuracy"],
            "train_method": metrics["train_method"],
            "status": metrics.get("status", "ok"),
            "final_train_accuracy": metrics.get("final_train_accuracy"),
            "reused_finetune": metrics.get("reused", False),
        }
        if row["round"] == 0 and row["method"] in FEATURE_METHODS:
            row["seconds_extract_pretrained"] = extract_seconds
        row.update(stage_seconds(Path(metrics_file).parent))
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values(["method", "strategy", "seed", "round"], kind="stable")
    seconds = sorted(c for c in frame.columns if c.startswith("seconds_"))
    frame[seconds] = frame[seconds].fillna(0.0)
    frame = frame[[c for c in frame.columns if not c.startswith("seconds_")] + seconds]
    write_csv(out, frame)
    return frame


def run_notice(summary_csv: str | Path) -> str:
    """What the terminal says after a run: mean accuracy per method and evaluation point, and
    every diverged fine-tune, so a wrong curve is seen without opening a file."""
    summary_csv = Path(summary_csv)
    if not summary_csv.exists():
        return ""
    frame = pd.read_csv(summary_csv)
    table = frame.groupby(["method", "strategy", "n_labelled"])["accuracy"].agg(["mean", "std", "count"])
    lines = [f"asvp-flow: mean test accuracy ({summary_csv}):", table.round(3).to_string()]
    diverged = frame[frame.get("status", pd.Series("ok", index=frame.index)) == "diverged"]
    for _, row in diverged.iterrows():
        lines.append(
            f"WARNING: diverged fine-tune: {row['method']}/{row['strategy']}/seed{row['seed']} round {row['round']} "
            f"({row['n_labelled']} labels, {row['train_method']}); see that round's metrics.json and logs/evaluate.log"
        )
    return "\n".join(lines)
