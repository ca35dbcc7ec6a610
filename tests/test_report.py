"""The report's tables and figures from a hand-made results tree, gaps included."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from asvp import report
from test_costs import _pilot

CONFIG = {"cost": {"label_price": 0.036, "compute_price_per_hour": 3.0, "cpu_to_gpu_factor": 1.0}}


def _tree(tmp_path: Path, drop_random: bool = False) -> Path:
    experiment = _pilot(tmp_path)
    summary = pd.read_csv(experiment / "summary.csv")
    summary["class_accuracy_0"], summary["class_accuracy_1"] = 0.5, 0.9
    if drop_random:
        summary = summary[summary["method"] != "random"]
    summary.to_csv(experiment / "summary.csv", index=False)
    pd.DataFrame(columns=["method", "strategy", "seed", "round", "n_labelled", "difference", "threshold", "refresh_features"]).to_csv(
        experiment / "decisions.csv", index=False)
    pd.DataFrame({"method": ["asvp"], "strategy": ["margin"], "seed": [0], "round": [0], "n_labelled": [100],
                  "cat": [60], "dog": [40]}).to_csv(experiment / "class_counts.csv", index=False)
    (experiment / "data").mkdir()
    (experiment / "data" / "dataset.json").write_text(json.dumps({"num_classes": 2, "classes": ["cat", "dog"]}))
    return experiment


def test_report_writes_every_figure_and_the_table1_layout(tmp_path: Path) -> None:
    experiment = _tree(tmp_path)
    tables = report.build(experiment, CONFIG, experiment / "report")
    for name in (*report.FIGURES, *report.TABLES):
        assert (experiment / "report" / name).stat().st_size > 0, name
    table1 = tables["table1"].set_index("method")
    assert table1.loc["asvp", "cost (USD)"] == "9.00 +- 0.00"
    assert table1.loc["random", "sample saving ratio"] == "baseline"
    # asvp: 200 labels at 0.80 -> N2 = 400 (ratio 0.5); 400 labels at 0.85 -> above random's curve (censored bound 0)
    # Its censored points all lie above random's curve, so the average is a lower bound, printed as one.
    assert table1.loc["asvp", "sample saving ratio"] == ">= 25.0% +- 0.0%"
    assert "1 censored" not in table1.loc["asvp", "notes"] and "2 censored" in table1.loc["asvp", "notes"]
    assert list(tables["per_class_accuracy"].columns[-2:]) == ["cat", "dog"]


def test_a_run_without_random_gets_a_marked_gap_not_a_crash(tmp_path: Path) -> None:
    experiment = _tree(tmp_path, drop_random=True)
    tables = report.build(experiment, CONFIG, experiment / "report")
    assert "no random baseline" in tables["table1"]["gap"].iloc[0]
    for name in report.FIGURES:
        assert (experiment / "report" / name).stat().st_size > 0
    assert "no random baseline" in (experiment / "report" / "table1.html").read_text()


def test_a_run_evaluated_only_at_its_last_round_gets_a_report(tmp_path: Path) -> None:
    experiment = _tree(tmp_path)
    summary = pd.read_csv(experiment / "summary.csv")
    summary[summary["round"] == 2].to_csv(experiment / "summary.csv", index=False)
    tables = report.build(experiment, CONFIG, experiment / "report")
    assert set(tables["table1"]["method"]) == {"random", "standard", "asvp"}
