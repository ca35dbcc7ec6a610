"""A selection job runs several `asvp` steps: one log and one timing file for the job, a row per
step, and the report reads them as it reads a rule's benchmark file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from asvp.errors import AsvpError
from asvp.tables import stage_seconds
from asvp.step_timing import COLUMNS, stage_of_command, write_step_benchmark


def test_later_steps_append_and_the_first_step_starts_the_file_afresh(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks" / "select_steps.tsv"
    write_step_benchmark(path, "train_proxy", 9.0)  # an earlier, failed attempt
    write_step_benchmark(path, "train_proxy", 2.5)  # the job's rerun starts the file again
    write_step_benchmark(path, "select", 0.75, append=True)
    write_step_benchmark(path, "label", 0.25, append=True)
    frame = pd.read_csv(path, sep="\t")
    assert list(frame.columns) == list(COLUMNS)
    assert frame["step"].tolist() == ["train_proxy", "select", "label"]
    assert frame["s"].tolist() == [2.5, 0.75, 0.25]
    assert (frame["max_rss"] > 0).all() and (frame["cpu_time"] >= 0).all()
    assert not list(path.parent.glob(".*tmp"))  # written through a temporary file


def test_the_report_reads_step_rows_and_rule_files_alike(tmp_path: Path) -> None:
    bench = tmp_path / "round001" / "benchmarks"
    write_step_benchmark(bench / "select_steps.tsv", "train_proxy", 2.0)
    write_step_benchmark(bench / "select_steps.tsv", "select", 0.5, append=True)
    write_step_benchmark(bench / "select_steps.tsv", "decide", 1.5, append=True)
    (bench / "refresh_features.tsv").write_text("s\th:m:s\tmax_rss\n3.25\t0:00:03\t100\n")
    assert stage_seconds(tmp_path / "round001") == {
        "seconds_train_proxy": 2.0, "seconds_select": 0.5, "seconds_decide": 1.5, "seconds_refresh_features": 3.25}


def test_appending_to_a_file_that_is_not_a_step_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "select_steps.tsv"
    path.write_text("s\th:m:s\n1.0\t0:00:01\n")
    with pytest.raises(AsvpError, match="not a step timing file.*delete it"):
        write_step_benchmark(path, "label", 0.1, append=True)


def test_stage_names_are_the_rules_benchmark_names() -> None:
    assert [stage_of_command(c) for c in ("train-proxy", "select-proxy", "select-single-shot", "select-initial", "label")] == [
        "train_proxy", "select", "select", "select_initial", "label"]


def test_one_job_log_holds_every_step(tmp_path: Path) -> None:
    """Two CLI steps of one job: the log keeps both (the second appends), the timing file both rows."""
    log, timing = tmp_path / "logs" / "select.log", tmp_path / "benchmarks" / "select_steps.tsv"
    pd.DataFrame({"index": range(6), "source_index": range(6), "sample_id": [f"s{i}" for i in range(6)], "label": [0, 1, 2, 0, 1, 2]}).to_csv(
        tmp_path / "pool.csv", index=False)
    (log.parent).mkdir(parents=True)
    log.write_text("a previous attempt's log\n")
    first = ["--log", str(log), "--timing", str(timing)]

    def asvp(*args: str) -> None:  # a process of its own, as in a job: its output goes to the log
        subprocess.run([sys.executable, "-m", "asvp", *first, *args], check=True, capture_output=True)

    asvp("select-initial", "--strategy", "margin", "--pool", str(tmp_path / "pool.csv"), "--budget", "3", "--seed", "0",
         "--round", "0", "--selected-out", str(tmp_path / "selected.csv"), "--scores-out", str(tmp_path / "scores.npy"))
    asvp("--same-job", "label", "--selected", str(tmp_path / "selected.csv"), "--pool", str(tmp_path / "pool.csv"),
         "--round", "0", "--out", str(tmp_path / "labelled.csv"))
    text = log.read_text()
    assert "previous attempt" not in text
    assert "asvp select-initial:" in text and "asvp label:" in text and text.index("select-initial") < text.index("asvp label:")
    assert pd.read_csv(timing, sep="\t")["step"].tolist() == ["select_initial", "label"]
    assert len(pd.read_csv(tmp_path / "labelled.csv")) == 3
