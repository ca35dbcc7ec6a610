"""End-to-end: the real Snakefile on the tiny config (a few hundred real images, 3 rounds).

One full run is shared by the tests in this file (it is the expensive part): they read it, dry-run
against it, or rerun parts of it. Tests that need runs of their own are in test_workflow_runs.py,
so that pytest-xdist (--dist loadfile) runs the two files side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest

from tiny_workflow import METHODS, REPO, TINY, planned_jobs, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, real_fashion_mnist: Path, default_weights: Path) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return workdir

def test_full_run_reports_every_method_and_round(finished_run: Path) -> None:
    summary = pd.read_csv(finished_run / "results/tiny/summary.csv")
    assert set(summary["method"]) == METHODS
    # Random runs on past the methods' last point (evaluation.random_beyond: auto, 1.5 x 60 on
    # steps of 20 -> 100 labels, one round of 40), so its curve reaches their accuracies.
    assert len(summary) == len(METHODS) * 3 + 1
    for method, rows in summary.groupby("method"):
        extra = [3] if method == "random" else []
        assert rows["round"].tolist() == [0, 1, 2, *extra]
        assert rows["n_labelled"].tolist() == [20, 40, 60, *[100] * len(extra)]
    rounds = pd.read_csv(finished_run / "results/tiny/rounds.csv")
    assert rounds.loc[rounds["method"] == "random", "round"].max() == 3
    assert rounds.loc[rounds["method"] != "random", "round"].max() == 2
    assert (finished_run / "results/tiny/random/random/seed0/final/model.pt").is_file()
    assert not (finished_run / "results/tiny/random/random/seed0/round003/delivered").exists()
    assert summary["accuracy"].between(0, 1).all()
    assert (summary["seconds_evaluate"] > 0).all()
    proxy_rounds = summary[summary["method"].isin(["svpp", "asvp"]) & (summary["round"] > 0)]
    assert (proxy_rounds["seconds_train_proxy"] > 0).all() and (proxy_rounds["seconds_select"] > 0).all()
    # Each step of a selection job timed apart (asvp --timing): labelling and ASVP's decision too.
    assert (summary["seconds_label"] > 0).all()
    assert (summary.loc[summary["method"] == "asvp", "seconds_decide"] > 0).all()
    assert set(summary.loc[summary["method"] != "asvp", "train_method"]) == {"ft"}

def test_features_file_records_what_made_it(finished_run: Path) -> None:
    with h5py.File(finished_run / "results/tiny/features/pretrained.h5") as handle:
        assert handle["pool/features"].shape == (300, 1280)
        assert handle["test/features"].shape == (100, 1280)
        assert handle.attrs["backbone"] == "mobilenet_v2"
        assert handle.attrs["checkpoint_sha256"].startswith("b0353104")
        assert "Normalize" in handle.attrs["transform"] or "normal" in handle.attrs["transform"].lower()
        assert handle.attrs["dtype"] == "float32" and handle.attrs["complete"]
    assert not list((finished_run / "results/tiny/features").glob("*.partial"))

def test_forced_refresh_is_visible_and_used(finished_run: Path) -> None:
    run = finished_run / "results/tiny/asvp/margin/seed0"
    decisions = [json.loads((run / f"round{r:03d}/decision.json").read_text()) for r in range(3)]
    assert decisions[0]["verdict"] == "keep" and decisions[0]["reason"] == "first round"
    assert decisions[1]["verdict"] == "refresh" and decisions[1]["refresh_features"]
    assert decisions[1]["difference"] < decisions[1]["threshold"]
    # After a refresh the score history restarts on the new features: no comparable score.
    assert decisions[2]["previous_score"] is None and decisions[2]["verdict"] == "keep"
    # Round 0 kept the pre-trained features (a link to the real file); round 1 made new ones.
    kept = run / "round000/features.h5"
    assert kept.is_symlink() and Path(os.path.realpath(kept)) == (finished_run / "results/tiny/features/pretrained.h5").resolve()
    refreshed = run / "round001/features.h5"
    assert not refreshed.is_symlink()
    with h5py.File(refreshed) as handle:
        assert handle.attrs["checkpoint"].endswith("round001/refresh_model.pt")
    trained_on = [line for line in (run / "round002/logs/select.log").read_text().splitlines() if "proxy trained on" in line]
    assert len(trained_on) == 1 and trained_on[0].endswith("round001/features.h5")
    summary = pd.read_csv(finished_run / "results/tiny/summary.csv")
    asvp = summary[summary["method"] == "asvp"].sort_values("round")
    assert asvp["train_method"].tolist() == ["lpft", "ft", "ft"]  # training alignment switches with the trigger

def test_equal_fine_tunes_train_once_and_models_are_not_kept(finished_run: Path) -> None:
    results = finished_run / "results/tiny"
    metrics = {
        (m, r): json.loads((results / f"{m}/{s}/seed0/round{r:03d}/metrics.json").read_text())
        for m, s in (("random", "random"), ("standard", "margin"), ("svpp", "margin"), ("asvp", "margin"))
        for r in range(3)
    }
    # Round 0's labelled set is the same for every FT method: one key, trained once (its model
    # stays in the cache for standard AL's round-1 selection).
    round0 = [metrics[(m, 0)] for m in ("random", "standard", "svpp")]
    assert len({m["finetune_key"] for m in round0}) == 1
    assert sum(not m["reused"] for m in round0) == 1 and len({m["accuracy"] for m in round0}) == 1
    # ASVP's refresh round: its evaluation (FT on the same labels) reuses the refresh's fine-tune.
    assert metrics[("asvp", 1)]["reused"] and metrics[("asvp", 1)]["train_method"] == "ft"
    for entry in metrics.values():
        assert entry["status"] in ("ok", "diverged") and entry["loss_curve"]
    assert not [p for p in results.rglob("model.pt") if p.parent.name != "final"]
    assert not list(results.rglob("refresh_model.pt"))

def test_every_run_delivers_its_final_model(finished_run: Path) -> None:
    from asvp.delivery import load_model

    results = finished_run / "results/tiny"
    for m, s in (("random", "random"), ("standard", "margin"), ("svpp", "margin"), ("asvp", "margin")):
        run = results / f"{m}/{s}/seed0"
        final = run / "final"
        assert sorted(p.name for p in final.iterdir() if p.is_file()) == [
            "labelled.csv", "metrics.json", "model.pt", "model.torchscript.pt", "predictions.csv"]
        assert (final / "labelled.csv").read_bytes() == (run / "round002/labelled.csv").read_bytes()
        evaluated = json.loads((run / "round002/metrics.json").read_text())
        assert json.loads((final / "metrics.json").read_text())["accuracy"] == evaluated["accuracy"]
        model = load_model(final / "model.pt")
        assert model.classes[9] == "Ankle boot" and model.info["recipe"] == evaluated["train_method"]
        predictions = pd.read_csv(final / "predictions.csv")
        labelled = set(pd.read_csv(final / "labelled.csv")["pool_index"])
        assert predictions["pool_index"].tolist() == [i for i in range(300) if i not in labelled]

def test_second_run_finds_nothing_to_do(finished_run: Path) -> None:
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr

def test_proxy_change_reruns_only_proxy_dependent_jobs(finished_run: Path, tmp_path: Path) -> None:
    override = tmp_path / "override.yaml"
    override.write_text("proxy:\n  lr: 0.02\n")
    result = snakemake(finished_run, "-n", configfiles=(TINY, override))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    assert jobs, result.stdout[-2000:]
    per_round = [(rule, w) for rule, w in jobs if "method" in w]
    assert {w["method"] for _, w in per_round} == {"svpp", "asvp"}
    assert all(int(w["r"]) >= 1 for _, w in per_round if "r" in w)
    assert {w["point"] for rule, w in per_round if rule == "deliver"} == {"final"}  # their final models, again
    rules = {rule for rule, _ in jobs}
    assert rules >= {"select_proxy", "select_proxy_decide"}  # each trains its proxy (then selects, labels)
    assert not rules & {"define_pool", "extract_pretrained", "select_initial", "select_random", "select_model"}

def test_lpft_baseline_is_planned_with_its_own_recipe(finished_run: Path, tmp_path: Path) -> None:
    override = tmp_path / "lpft.yaml"
    override.write_text("methods: [random, standard, svpp, asvp, standard_lpft]\n")
    result = snakemake(finished_run, "-n", "-p", configfiles=(TINY, override))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    assert {w.get("method") for _, w in jobs if "method" in w} == {"standard_lpft"}  # nothing else reruns
    # Selection jobs label their batch themselves (simulated oracle).
    assert {rule for rule, w in jobs if "method" in w} == {"select_initial", "finetune_standard", "select_model", "deliver"}
    assert "--recipe lpft" in result.stdout

def test_rerunning_proxy_selection_reproduces_it_bit_for_bit(finished_run: Path) -> None:
    """Same config and seed, same selections: recompute the proxy rounds and compare bytes.

    Runs last in this module: it rewrites outputs of the shared run.
    """
    results = finished_run / "results/tiny"
    watched = sorted(results.glob("*/margin/seed0/round00[12]/selected.csv")) + sorted(
        results.glob("*/margin/seed0/round00[12]/scores.npy")
    )
    watched = [p for p in watched if p.parts[-5] in ("svpp", "asvp")]  # ./<method>/margin/seed0/roundNNN/file
    before = {p: p.read_bytes() for p in watched}
    assert len(before) == 8
    # Explicit targets, not --until: with --forcerun, --until drops the label jobs in between
    # (snakemake issue #823, "Out of jobs ready to be started").
    targets = [str(p.relative_to(finished_run)) for p in watched if p.name == "selected.csv"]
    result = snakemake(finished_run, "--forcerun", "select_proxy", "select_proxy_decide", "--", *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "select_proxy_decide" in result.stdout + result.stderr  # the jobs really ran again
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed on recomputation"

def test_report_holds_every_figure_and_table(finished_run: Path) -> None:
    report_dir = finished_run / "results/tiny/report"
    for name in ("accuracy.png", "equivalent_labels.png", "cost_vs_time.png", "decisions.png", "predicted_classes.png"):
        assert (report_dir / name).stat().st_size > 5000, name  # a drawn figure, not an empty canvas
    table1 = pd.read_csv(report_dir / "table1.csv")
    assert set(table1["method"]) == METHODS
    saving = pd.read_csv(report_dir / "saving_points.csv")
    assert len(saving) == len(METHODS) * 3 and saving["censored"].fillna("").isin(["", "above", "below"]).all()
    timing = pd.read_csv(report_dir / "time_model.csv").set_index("method")
    assert timing.loc["asvp", "N_pre"] == 2  # the forced refresh is counted
    classes = json.loads((finished_run / "results/tiny/data/dataset.json").read_text())["classes"]
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    per_class = pd.read_csv(report_dir / "per_class_accuracy.csv")
    assert "Ankle boot" in per_class.columns
    counts = pd.read_csv(finished_run / "results/tiny/class_counts.csv")
    assert (counts[classes].sum(axis=1) == counts["n_labelled"]).all()

    html = finished_run / "report.html"
    result = snakemake(finished_run, "--report", str(html))
    assert result.returncode == 0, result.stderr[-3000:]
    text = html.read_text(errors="replace")
    for name in ("accuracy.png", "equivalent_labels.png", "cost_vs_time.png", "decisions.png", "table1.html",
                 "time_model.html", "table3.html", "per_class_accuracy.html", "config.html"):
        assert name in text, name

def test_advisor_reads_the_finished_run(finished_run: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "asvp", "advise", "--experiment", str(finished_run / "results/tiny"),
                             "--label-price", "0.036", "--gpu-hour-price", "3.06"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "target accuracy" in result.stdout and "Break-even" in result.stdout
    assert "too small to decide" in result.stdout or "No method reached" in result.stdout or "Cheapest" in result.stdout

TIMING_KEYS = {"train_seconds", "test_seconds", "reused"}  # when and where a fine-tune ran, not what it computed

def _results_of(workdir: Path, methods: tuple[str, ...]) -> dict[str, bytes]:
    """Every selection, label file, decision, score file and metric of the given methods' runs."""
    files = {}
    for method in methods:
        for path in sorted((workdir / "results/tiny" / method).rglob("*")):
            if path.name in ("selected.csv", "labelled.csv", "decision.json", "scores.npy"):
                files[str(path.relative_to(workdir))] = path.read_bytes()
            elif path.name == "metrics.json":
                metrics = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_KEYS}
                files[str(path.relative_to(workdir))] = json.dumps(metrics, sort_keys=True).encode()
    return files

def test_killed_runs_resume_to_the_uninterrupted_results(finished_run: Path, tmp_path: Path) -> None:
    """SIGKILL of the whole run (head and jobs) mid-extraction, mid-fine-tune, mid-refresh and
    between rounds; after each, `--unlock` and the same command, as the README says."""
    override = tmp_path / "kill.yaml"
    override.write_text("methods: [svpp, asvp]\nfinetune:\n  checkpoint_seconds: 0\n")  # a checkpoint every epoch
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
               "--max-threads", "1", "--configfile", str(TINY), str(override)]
    features = workdir / "results/tiny/features/pretrained.h5"

    def killed_at(point: str) -> None:
        env = {**os.environ, "PYTHONHASHSEED": "0", "ASVP_CRASH_AT": point}
        if (workdir / ".snakemake/locks").exists():
            subprocess.run([*command, "--unlock"], capture_output=True, timeout=300, check=True)
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, start_new_session=True)
        assert run.returncode == -9, f"{point}: the run was not killed\n{run.stderr[-3000:]}"

    killed_at("extract_chunk:2")  # pre-trained extraction: 3 of 4 chunks of the pool to go
    assert not features.exists() and features.with_name("pretrained.h5.partial").exists()
    killed_at("finetune_checkpoint:1")  # an evaluation fine-tune after epoch 1 of 2
    assert list((workdir / "results/tiny/finetunes").glob("*.ckpt"))
    killed_at("refresh_chunk:1")  # ASVP's refresh: fine-tuned, re-extracting the pool
    refreshed = workdir / "results/tiny/asvp/margin/seed0/round001/features.h5"
    assert not refreshed.exists() and refreshed.with_name("features.h5.partial").exists()
    killed_at("labelled:1")  # between rounds: a labelled set written, the rest of the run not started
    subprocess.run([*command, "--unlock"], capture_output=True, timeout=300, check=True)
    one_core = [c if c != "2" else "1" for c in command]  # and the rest on one core: the same bits as on two
    final = subprocess.run(one_core, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert final.returncode == 0, final.stderr[-4000:]

    resumed, reference = _results_of(workdir, ("svpp", "asvp")), _results_of(finished_run, ("svpp", "asvp"))
    assert resumed.keys() == reference.keys() and len(resumed) > 20
    assert [name for name in resumed if resumed[name] != reference[name]] == []
    # The killed fine-tune resumed from its checkpoint, and its first attempt's log survived.
    attempts = [p.read_text() for p in workdir.glob("results/tiny/*/margin/seed0/round*/logs/evaluate.log.attempts")]
    resumed_logs = [text for text in attempts if "resuming from" in text]
    assert resumed_logs and all(text.count("=== attempt started") >= 2 for text in resumed_logs)
    killed_attempt = resumed_logs[0].split("resuming from")[0]
    assert "epoch 1/" in killed_attempt  # what the killed attempt logged before the kill is kept
