"""The experiment's tables and report (rules/report.smk): summary.csv and the round tables,
the paper's yardstick on them, and the effective config of the run."""

from __future__ import annotations

from typing import Any


def summarize(experiment_dir: str, metrics: list[str], rounds: int, dataset_json: str, out: str, rounds_out: str,
              decisions_out: str, class_counts_out: str, random_rounds: int | None = None) -> None:
    """summary.csv (one row per evaluation point), then rounds.csv, decisions.csv and
    class_counts.csv for the `rounds` rounds of the runs the summary holds (`random_rounds` of
    the random baseline's, which runs on past the methods' last point)."""
    from asvp import tables

    frame = tables.summarize(experiment_dir, metrics, out)
    runs = sorted(set(zip(frame["method"], frame["strategy"], frame["seed"].astype(int))))
    tables.write_round_tables(experiment_dir, runs, rounds, dataset_json, rounds_out, decisions_out, class_counts_out,
                              random_rounds=random_rounds)


def report(config: dict[str, Any], experiment_dir: str, out_dir: str) -> None:
    """Saving ratios, costs, the time model, per-class tables and the figures, into out_dir."""
    from asvp.report import build

    build(experiment_dir, config, out_dir)


def write_config(config: dict[str, Any], layers: str, out: str) -> None:
    """The effective config of the run (results/<experiment>/config.yaml), with its layers."""
    from asvp.config import write_effective_config

    write_effective_config(config, layers, out)
