"""Tests for asvp.report: summary.csv from the results tree and Snakemake benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from asvp.tables import summarize

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def _benchmark(path: Path, *seconds: float) -> None:
    """A Snakemake benchmark TSV (one row per repeat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{s:.4f}\t0:00:{int(s):02d}\t120.5\t900.1\t100.0\t110.0\t0.01\t0.02\t87.3\t{s * 0.9:.2f}" for s in seconds]
    path.write_text("\n".join([BENCHMARK_HEADER, *rows]) + "\n")


def _round(exp: Path, method: str, strategy: str, seed: int, r: int, accuracy: float, benchmarks: dict[str, float]) -> str:
    directory = exp / method / strategy / f"seed{seed}" / f"round{r:03d}"
    directory.mkdir(parents=True, exist_ok=True)
    train_method = "lpft" if method == "standard_lpft" else "ft"
    (directory / "metrics.json").write_text(
        json.dumps({"accuracy": accuracy, "n_test": 100, "n_labelled": 20 * (r + 1), "train_method": train_method})
    )
    for rule, seconds in benchmarks.items():
        _benchmark(directory / "benchmarks" / f"{rule}.tsv", seconds)
    return str(directory / "metrics.json")


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, list[str]]:
    """A results tree: svpp (feature-based) and standard (not), two seeds incl. seed 10, two rounds."""
    exp = tmp_path / "results" / "tiny"
    _benchmark(exp / "features" / "benchmarks" / "extract_pretrained.tsv", 42.0)
    files = [
        # deliberately listed out of order, as Snakemake's input list may be
        _round(exp, "svpp", "margin", 10, 1, 0.60, {"train_proxy": 2.0, "select": 0.5, "label": 0.1, "finetune": 30.0, "evaluate": 1.0}),
        _round(exp, "svpp", "margin", 10, 0, 0.50, {"select_initial": 0.2, "label": 0.1, "finetune": 25.0, "evaluate": 1.0}),
        _round(exp, "standard", "margin", 0, 1, 0.58, {"select": 3.0, "label": 0.1, "finetune": 31.0, "evaluate": 1.0}),
        _round(exp, "svpp", "margin", 2, 0, 0.52, {"select_initial": 0.3, "label": 0.1, "finetune": 26.0, "evaluate": 1.5}),
        _round(exp, "standard", "margin", 0, 0, 0.49, {"select_initial": 0.2, "label": 0.1, "finetune": 24.0, "evaluate": 1.0}),
        _round(exp, "svpp", "margin", 2, 1, 0.61, {"train_proxy": 2.5, "select": 0.4, "label": 0.1, "finetune": 29.0, "evaluate": 1.5}),
    ]
    return exp, files


def test_summary_has_one_row_per_round_sorted_by_method_strategy_seed_round(experiment: tuple[Path, list[str]], tmp_path: Path) -> None:
    exp, files = experiment
    frame = summarize(exp, files, tmp_path / "summary.csv")
    keys = list(zip(frame["method"], frame["seed"], frame["round"]))
    assert keys == [("standard", 0, 0), ("standard", 0, 1), ("svpp", 2, 0), ("svpp", 2, 1), ("svpp", 10, 0), ("svpp", 10, 1)]
    assert set(frame["experiment"]) == {"tiny"} and set(frame["strategy"]) == {"margin"}
    assert frame["accuracy"].tolist() == [0.49, 0.58, 0.52, 0.61, 0.50, 0.60]
    assert frame["n_labelled"].tolist() == [20, 40, 20, 40, 20, 40]
    assert set(frame["train_method"]) == {"ft"}


def test_summary_columns_are_metadata_then_sorted_seconds_per_rule(experiment: tuple[Path, list[str]], tmp_path: Path) -> None:
    exp, files = experiment
    out = tmp_path / "summary.csv"
    frame = summarize(exp, files, out)
    seconds = [
        "seconds_evaluate", "seconds_extract_pretrained", "seconds_finetune", "seconds_label",
        "seconds_select", "seconds_select_initial", "seconds_train_proxy",
    ]
    metadata = ["experiment", "method", "strategy", "seed", "round", "n_labelled", "accuracy", "n_test", "train_method",
                "status", "final_train_accuracy", "reused_finetune", "finetune_key", "device"]
    assert list(frame.columns) == [*metadata, *seconds]
    written = pd.read_csv(out)
    assert list(written.columns) == list(frame.columns)
    assert len(written) == 6
    assert not written[seconds].isna().any().any()  # a rule that did not run in a round counts 0 s


def test_seconds_come_from_the_benchmark_s_column(experiment: tuple[Path, list[str]], tmp_path: Path) -> None:
    exp, files = experiment
    frame = summarize(exp, files, tmp_path / "summary.csv").set_index(["method", "seed", "round"])
    assert frame.loc[("svpp", 10, 1), "seconds_train_proxy"] == pytest.approx(2.0)
    assert frame.loc[("svpp", 10, 1), "seconds_finetune"] == pytest.approx(30.0)
    assert frame.loc[("standard", 0, 1), "seconds_select"] == pytest.approx(3.0)
    assert frame.loc[("standard", 0, 1), "seconds_train_proxy"] == 0.0
    assert frame.loc[("svpp", 2, 0), "seconds_select"] == 0.0


def test_pretrained_extraction_is_charged_to_round_0_of_feature_methods_only(experiment: tuple[Path, list[str]], tmp_path: Path) -> None:
    exp, files = experiment
    frame = summarize(exp, files, tmp_path / "summary.csv").set_index(["method", "seed", "round"])
    extraction = frame["seconds_extract_pretrained"]
    assert extraction[("svpp", 2, 0)] == pytest.approx(42.0)
    assert extraction[("svpp", 10, 0)] == pytest.approx(42.0)  # every seed pays for the features it uses
    assert extraction[("svpp", 2, 1)] == 0.0
    assert extraction[("svpp", 10, 1)] == 0.0
    assert extraction[("standard", 0, 0)] == 0.0  # fine-tuning methods never read the features
    assert extraction[("standard", 0, 1)] == 0.0


def test_benchmark_repeats_are_summed(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    metrics = _round(exp, "random", "margin", 0, 0, 0.4, {})
    _benchmark(Path(metrics).parent / "benchmarks" / "finetune.tsv", 3.0, 4.5)
    frame = summarize(exp, [metrics], tmp_path / "summary.csv")
    assert frame["seconds_finetune"].tolist() == [pytest.approx(7.5)]


def test_missing_extraction_benchmark_counts_as_zero(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    metrics = _round(exp, "asvp", "entropy", 1, 0, 0.4, {"label": 0.1})
    frame = summarize(exp, [metrics], tmp_path / "summary.csv")
    assert frame["seconds_extract_pretrained"].tolist() == [0.0]


def test_unexpected_metrics_path_raises(tmp_path: Path) -> None:
    stray = tmp_path / "exp" / "svpp" / "metrics.json"
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({"accuracy": 0.1, "n_labelled": 1, "train_method": "ft"}))
    with pytest.raises(ValueError, match="unexpected metrics path"):
        summarize(tmp_path / "exp", [str(stray)], tmp_path / "summary.csv")


def test_the_run_notice_shows_mean_accuracy_and_names_every_diverged_fine_tune(tmp_path: Path) -> None:
    from asvp.tables import run_notice

    summary = tmp_path / "summary.csv"
    pd.DataFrame(
        {
            "method": ["random", "random", "asvp"], "strategy": ["random", "random", "margin"], "seed": [0, 1, 0],
            "round": [2, 2, 2], "n_labelled": [300, 300, 300], "accuracy": [0.70, 0.72, 0.11],
            "train_method": ["ft", "ft", "lpft"], "status": ["ok", "ok", "diverged"],
        }
    ).to_csv(summary, index=False)
    notice = run_notice(summary)
    assert "0.71" in notice  # random's mean over its two seeds
    assert "WARNING: diverged fine-tune: asvp/margin/seed0 round 2 (300 labels, lpft)" in notice
    assert run_notice(tmp_path / "missing.csv") == ""


def test_round_tables_cover_every_round_with_decisions_and_class_counts_by_name(tmp_path: Path) -> None:
    from asvp.tables import write_round_tables

    exp = tmp_path / "results" / "tiny"
    _benchmark(exp / "features" / "benchmarks" / "extract_pretrained.tsv", 42.0)
    for r, labels in enumerate([[0, 1], [0, 1, 1, 2]]):
        directory = exp / "asvp" / "margin" / "seed0" / f"round{r:03d}"
        directory.mkdir(parents=True)
        pd.DataFrame({"pool_index": range(len(labels)), "sample_id": "x", "label": labels, "round": r}).to_csv(
            directory / "labelled.csv", index=False)
        _benchmark(directory / "benchmarks" / "decide.tsv", 3.0)
        (directory / "decision.json").write_text(json.dumps({
            "n_labelled": len(labels), "feature_version": 0, "ped_steps": 6, "score": 10.0 - r, "previous_score": None,
            "difference": None if r == 0 else 1.0, "threshold": 1.0, "verdict": "keep", "refresh_features": r == 1,
            "train_method": "lpft", "reason": "x"}))
    (exp / "asvp" / "margin" / "seed0" / "round001" / "metrics.json").write_text(json.dumps(
        {"finetune_key": "abc", "reused": False, "train_seconds": 12.5, "test_seconds": 1.5, "train_method": "ft"}))
    (exp / "data").mkdir()
    (exp / "data" / "dataset.json").write_text(json.dumps({"num_classes": 3, "classes": ["cat", "dog", "owl"]}))
    out = {name: tmp_path / f"{name}.csv" for name in ("rounds", "decisions", "counts")}
    # Round 2 of the schedule has not run yet: the tables hold the rounds that exist.
    write_round_tables(exp, [("asvp", "margin", 0)], 3, exp / "data" / "dataset.json", out["rounds"], out["decisions"], out["counts"])
    rounds = pd.read_csv(out["rounds"])
    assert rounds["round"].tolist() == [0, 1] and rounds["n_labelled"].tolist() == [2, 4]
    assert rounds["seconds_extract_pretrained"].tolist() == [42.0, 0.0]  # charged to round 0 only
    assert rounds.loc[1, "eval_key"] == "abc" and rounds.loc[1, "eval_train_seconds"] == 12.5
    assert rounds["refreshed"].tolist() == [False, True]
    decisions = pd.read_csv(out["decisions"])
    assert decisions["difference"].isna().tolist() == [True, False]
    counts = pd.read_csv(out["counts"])
    assert counts[["cat", "dog", "owl"]].to_numpy().tolist() == [[1, 1, 0], [1, 2, 1]]


def test_a_fine_tune_on_several_gpus_is_charged_its_gpu_seconds(tmp_path: Path) -> None:
    from asvp.tables import _finetune_columns

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"finetune_key": "k", "train_seconds": 100.0, "test_seconds": 5.0, "processes": 4}))
    columns = _finetune_columns("eval", metrics)
    assert (columns["eval_processes"], columns["eval_train_seconds"], columns["eval_test_seconds"]) == (4, 400.0, 5.0)
    metrics.write_text(json.dumps({"finetune_key": "k", "train_seconds": 100.0, "test_seconds": 5.0}))  # before gpus_per_job
    assert _finetune_columns("eval", metrics)["eval_train_seconds"] == 100.0
