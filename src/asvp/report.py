"""The report of one experiment, by the paper's yardstick: saving ratios, costs, the time model and the
per-class view, as the tables and figures `snakemake --report` gathers into one HTML file.

Inputs are the summarize rule's tables (asvp.tables) (summary.csv, rounds.csv, decisions.csv,
class_counts.csv), dataset.json and the run's config; every output is written atomically.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from asvp import costs, metrics, plots
from asvp.atomic import atomic_path, read_json, write_csv
from asvp.errors import DataError
from asvp.methods import METHODS
from asvp.tables import NO_TEST_SET, has_test_set

FIGURES = ("accuracy.png", "equivalent_labels.png", "cost_vs_time.png", "decisions.png", "predicted_classes.png")
TABLES = ("table1.html", "table3.html", "comparisons.html", "saving_points.html", "time_model.html", "decisions.html",
          "per_class_accuracy.html", "class_counts.html", "predicted_classes.html", "config.html")
ABLATIONS = {m.name: m.table3_variant for m in METHODS.values() if m.table3_variant}  # paper Table 3's rows


def pm(mean: float, std: float, digits: int = 3, percent: bool = False) -> str:
    """'mean +- std' as the paper's tables print it; a lone seed has no std."""
    if not math.isfinite(mean):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.{digits}f}{unit}"
    return text + (f" +- {std * scale:.{digits}f}{unit}" if math.isfinite(std) else "")


def gap_frame(message: str) -> pd.DataFrame:
    """A table that is a marked gap: one row saying what is missing and how to get it."""
    return pd.DataFrame({"gap": [message]})


def _count(value: Any) -> int:
    """A count from a merged table cell (NaN where one side had no row)."""
    try:
        return int(value) if math.isfinite(float(value)) else 0
    except (TypeError, ValueError):
        return 0


def _bound(row: dict[str, Any]) -> str:
    """A saving-ratio row's censoring bound ('' for none, or a table from before it was kept)."""
    bound = row.get("bound", "")
    return bound if isinstance(bound, str) else ""


def table1(saving: pd.DataFrame, cost: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1: per method and strategy, the average saving ratio, the overall cost to
    reach random's final accuracy, and the cost saving ratio (mean +- std over seeds)."""
    merged = saving.merge(cost, on=["method", "strategy"], how="outer", suffixes=("", "_cost"))
    rows = []
    for row in merged.to_dict("records"):
        censored, excluded = _count(row.get("censored_points")), _count(row.get("excluded_points"))
        notes = [f"{censored} censored point(s) (bounds)"] * bool(censored) + [f"{excluded} excluded (diverged)"] * bool(excluded)
        if not math.isfinite(float(row.get("saving_ratio_mean", math.nan))) and row["method"] != "random":
            notes.append("no evaluation point after round 0")
        if _count(row.get("reached")) < _count(row.get("seeds_cost", row.get("seeds"))):
            notes.append(f"target reached by {row['reached']} of {row['seeds_cost']} seeds")
        rows.append({
            "method": row["method"], "strategy": row["strategy"],
            "sample saving ratio": "baseline" if row["method"] == "random" else metrics.bounded(
                pm(row.get("saving_ratio_mean", math.nan), row.get("saving_ratio_std", math.nan), 1, True), _bound(row)),
            "labels to target": pm(row.get("labels_mean", math.nan), math.nan, 0),
            "cost (USD)": pm(row.get("cost_mean", math.nan), row.get("cost_std", math.nan), 2),
            "cost saving ratio": "baseline" if row["method"] == "random" else pm(row.get("cost_saving_mean", math.nan), row.get("cost_saving_std", math.nan), 1, True),
            "notes": "; ".join(notes),
        })
    return pd.DataFrame(rows)


def table3(saving: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 3: average saving ratio of the two ablations and of ASVP, per strategy."""
    rows = saving[saving["method"].isin(ABLATIONS)]
    return pd.DataFrame([
        {"variant": ABLATIONS[r["method"]], "method": r["method"], "strategy": r["strategy"],
         "average sample saving ratio": metrics.bounded(pm(r["saving_ratio_mean"], r["saving_ratio_std"], 1, True), _bound(r))}
        for r in rows.to_dict("records")
    ])


def per_class_accuracy(summary: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Test accuracy per class at each run's last evaluation point, mean over seeds, by name."""
    columns = [f"class_accuracy_{i}" for i in range(len(classes)) if f"class_accuracy_{i}" in summary.columns]
    if not columns:
        return pd.DataFrame({"note": ["metrics.json has no per-class accuracy (results from before it was recorded)"]})
    last = summary[summary["n_labelled"] == summary.groupby(["method", "strategy"])["n_labelled"].transform("max")]
    table = last.groupby(["method", "strategy", "n_labelled"])[columns].mean()
    return table.rename(columns={c: classes[int(c.rsplit("_", 1)[1])] for c in columns}).round(3).reset_index()


def class_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """The labelled set per class and round, mean over seeds (a skew a strategy causes shows)."""
    if counts.empty:
        return counts
    names = [c for c in counts.columns if c not in ("method", "strategy", "seed", "round", "n_labelled")]
    return counts.groupby(["method", "strategy", "round", "n_labelled"])[names].mean().round(1).reset_index()


def predicted_classes(experiment_dir: Path, summary: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per run and class: the final model's predicted classes over the unlabelled pool (its
    final/predictions.csv) beside the labelled set (final/labelled.csv). The one view of the
    pool a run without a test set still has; with one, a class the model over- or under-predicts."""
    rows = []
    for method, strategy, seed in sorted(set(zip(summary["method"], summary["strategy"], summary["seed"].astype(int)))):
        final = experiment_dir / method / strategy / f"seed{seed}" / "final"
        if not (final / "predictions.csv").exists():
            continue
        predictions = pd.read_csv(final / "predictions.csv", usecols=["class", "probability"])
        labels = pd.read_csv(final / "labelled.csv", usecols=["label"])["label"]
        by_class = predictions.groupby("class")["probability"].agg(["size", "mean"])
        for index, name in enumerate(classes):
            predicted = int(by_class["size"].get(name, 0))
            rows.append({"method": method, "strategy": strategy, "seed": seed, "class": name,
                         "labelled": int((labels == index).sum()), "predicted": predicted,
                         "predicted_share": predicted / len(predictions) if len(predictions) else math.nan,
                         "mean_probability": float(by_class["mean"].get(name, math.nan))})
    return pd.DataFrame(rows, columns=["method", "strategy", "seed", "class", "labelled", "predicted", "predicted_share",
                                       "mean_probability"])


def _html(frame: pd.DataFrame, title: str, note: str = "") -> str:
    body = frame.to_html(index=False, na_rep="", border=0, classes="table") if not frame.empty else "<p>(empty)</p>"
    return (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:collapse;font:13px sans-serif}td,th{padding:3px 8px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h3>{html.escape(title)}</h3><p>{html.escape(note)}</p>{body}</body></html>")


def _write_text(out: Path, text: str) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(text)


def build(experiment_dir: str | Path, config: dict[str, Any], out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write every figure and table of the report into out_dir; return the tables."""
    experiment_dir, out_dir = Path(experiment_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = pd.read_csv(experiment_dir / "summary.csv")
    rounds = pd.read_csv(experiment_dir / "rounds.csv")
    decisions = pd.read_csv(experiment_dir / "decisions.csv")
    counts = pd.read_csv(experiment_dir / "class_counts.csv")
    classes = read_json(experiment_dir / "data" / "dataset.json").get("classes", [])
    prices = costs.Prices.from_config(config.get("cost", {}))

    gaps: dict[str, str] = {}
    tested = has_test_set(summary)
    try:  # a gap in the yardstick (no random baseline, seeds missing, NaN) is shown, not fatal
        if not tested:
            raise DataError(NO_TEST_SET)
        metrics.points_are_comparable(summary)
        saving = metrics.saving_table(summary)
        average = metrics.average_saving(saving)
        comparisons = metrics.paired_differences(saving) if (summary["method"] == "asvp").any() else pd.DataFrame()
    except DataError as exc:
        gaps["saving"] = str(exc)
        saving = average = comparisons = gap_frame(str(exc))
    try:
        if not tested:
            raise DataError(NO_TEST_SET)
        compared = metrics.compared_points(summary)
        cost_points = costs.compute_table(compared, rounds, prices)
        target = costs.random_target(compared)
        per_run = costs.cost_to_target(cost_points, prices, target)
        cost_table = costs.cost_summary(per_run)
    except DataError as exc:
        gaps["cost"] = str(exc)
        target = float("nan")
        cost_points = per_run = cost_table = gap_frame(str(exc))
    # Without cost points (a gap) the table keeps its terms and formulas, not the measured totals.
    timing = costs.time_model(rounds, None if "cost" in gaps else cost_points)
    on_cpu = costs.cpu_factor_applies(summary)
    compute_note = (f"; measured on CPU, x {prices.cpu_to_gpu_factor:g} cost.cpu_to_gpu_factor" if on_cpu else "")
    price_note = (f"Prices: {prices.label_price:g} USD per label, {prices.compute_price_per_hour:g} USD per compute hour. "
                  f"Target: random's final accuracy {target:.4f}. "
                  + ("Compute was measured on a CPU and counted as GPU hours x cost.cpu_to_gpu_factor = "
                     f"{prices.cpu_to_gpu_factor:g}. " if on_cpu else "")
                  + "Censored points: the accuracy lies outside the random curve, so the ratio is a bound, printed as "
                    "'>= x' (above random's last point) or '<= x' (below its first); evaluate random further to measure it."
                  + "".join(f" GAP ({what}): {message}" for what, message in gaps.items()))
    if not tested:
        price_note = NO_TEST_SET + " Shown instead: the labels per class, the refresh decisions and the final models' " \
                                   "predicted classes over the unlabelled pool."
    predicted = predicted_classes(experiment_dir, summary, classes)

    plots.accuracy_curves(summary, out_dir / "accuracy.png", "" if tested else NO_TEST_SET)
    plots.equivalent_labels_plot(saving, out_dir / "equivalent_labels.png")
    plots.cost_vs_time(per_run, out_dir / "cost_vs_time.png", compute_note)
    plots.decision_plot(decisions, out_dir / "decisions.png")
    plots.predicted_classes_plot(predicted, out_dir / "predicted_classes.png")

    tables = {
        "table1": gap_frame(" / ".join(dict.fromkeys(gaps.values()))) if gaps else table1(average, cost_table),
        "table3": average if "saving" in gaps else table3(average),
        "comparisons": comparisons,
        "saving_points": saving,
        "time_model": timing,
        "decisions": decisions,
        "per_class_accuracy": per_class_accuracy(metrics.compared_points(summary), classes) if tested else gap_frame(NO_TEST_SET),
        "class_counts": class_counts(counts),
        "predicted_classes": predicted,
        "costs": cost_points,
        "cost_per_run": per_run,
    }
    notes = {"table1": price_note, "time_model": "Seconds, means over seeds; formula = paper sec. 6.4, measured = the "
             "selection jobs' wall time to the last round" + compute_note.replace(";", ","),
             "predicted_classes": "Each run's final model on the pool images nobody labelled (final/predictions.csv), "
                                  "beside the labels it was trained on; mean_probability = its mean top-1 probability.",
             "table3": "Average sample saving ratio over the rounds after round 0 (paper Table 3 layout).",
             "comparisons": "Average saving ratios with 95% t intervals over seeds [low, high]; difference = asvp minus "
                            "each method, paired by seed (difference_per_seed), with its 95% paired t interval; wins = "
                            "seeds where asvp is ahead; paired_t_p = paired t-test p-value (small: the gap exceeds the "
                            "seeds' spread). '>=' / '<=' mark bounds: the figure includes points censored by random's "
                            "evaluated range.",
             "saving_points": "saving: the ratio, or the bound it is ('>=' above random's last point, '<=' below "
                              "its first) where the accuracy lies outside random's evaluated curve."}
    for name, frame in tables.items():
        write_csv(out_dir / f"{name}.csv", frame)
        if f"{name}.html" in TABLES:
            _write_text(out_dir / f"{name}.html", _html(frame, name.replace("_", " "), notes.get(name, "")))
    _write_text(out_dir / "config.html", "<html><body><h3>config</h3><pre>"
                + html.escape(yaml.safe_dump(config, sort_keys=False)) + "</pre></body></html>")
    return tables
