"""End-to-end: the real Snakefile on the tiny config (a few hundred real images, 3 rounds).

One full run is shared by the tests in this module (it is the expensive part); the other tests
are dry-runs against it or small runs of their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
METHODS = {"random", "standard", "svpp", "asvp"}

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *extra: str, configfiles: tuple[Path, ...] = (TINY,)) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
        # Tiny jobs are dominated by interpreter start-up: run two at a time, one thread each.
        "--max-threads", "1", "--configfile", *map(str, configfiles), *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONHASHSEED": "0"})


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) for every job a dry-run lists."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line.strip()):
            jobs.append((m.group(1), {}))
        elif (m := re.match(r"^wildcards: (.*)$", line.strip())) and jobs:
            jobs[-1][1].update(dict(part.split("=", 1) for part in m.group(1).split(", ")))
    return jobs


# Session scope, not module: under pytest-xdist a worker may run another module's tests between
# this module's, and a module fixture would be torn down and the run made again.
@pytest.fixture(scope="session")
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


def test_evaluation_points_are_planned_apart_from_selection_rounds(tmp_path: Path) -> None:
    override = tmp_path / "at.yaml"
    override.write_text("schedule:\n  budgets: [20, 20, 20, 20, 20]\nevaluation:\n  at: [20, 60]\n")
    result = snakemake(tmp_path, "-n", configfiles=(TINY, override))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    evaluated = sorted({(w["method"], int(w["r"])) for rule, w in jobs if rule == "evaluate"})
    # random, svpp and asvp train the final model at 20 and 60 labels and in the last round only;
    # random also in its own round 5, at 160 labels (1.5 x 100 on steps of 20: evaluation.random_beyond auto).
    assert evaluated == sorted([(m, r) for m in ("random", "svpp", "asvp") for r in (0, 2, 4)] + [("random", 5)])
    assert "random also at 160 labels" in result.stderr
    # standard fine-tunes every round: its next selection reads that model.
    assert sorted(int(w["r"]) for rule, w in jobs if rule == "finetune_standard") == [0, 1, 2, 3, 4]
    assert "evaluation points at rounds 0 (20 labels), 2 (60 labels), 4 (100 labels)" in result.stderr


def test_an_evaluation_point_no_round_reaches_is_refused(tmp_path: Path) -> None:
    override = tmp_path / "at.yaml"
    override.write_text("evaluation:\n  at: [50]\n")
    result = snakemake(tmp_path, "-n", configfiles=(TINY, override))
    assert result.returncode != 0
    assert "evaluation.at names label counts [50]" in result.stdout + result.stderr


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


def test_unknown_config_key_stops_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "proxy_settings:\n  lr: 1\n")
    result = snakemake(tmp_path, "-n", configfiles=(bad,))
    assert result.returncode != 0
    assert "unknown config key 'proxy_settings'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_config_layers_are_the_same_wherever_the_command_runs(tmp_path: Path) -> None:
    """No --configfile: workflow_config.yaml; with one: only it; --config on top; from any directory."""
    user = tmp_path / "user.yaml"
    user.write_text("experiment: layered\nproxy:\n  epochs: 3\n")

    def effective(cwd: Path, workdir: Path, experiment: str, *extra: str) -> str:
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1",
                   f"results/{experiment}/config.yaml", *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "asvp-flow: config = schema defaults < " in result.stderr
        return (workdir / f"results/{experiment}/config.yaml").read_text()

    default = effective(tmp_path, tmp_path / "a", "from_cli", "--config", "experiment=from_cli")
    settings = yaml.safe_load(default)
    assert settings["experiment"] == "from_cli" and settings["data"]["pool_subset"] == 10000  # the default, then --config
    assert f"{REPO / 'workflow_config.yaml'} < --config" in default
    inside = effective(REPO, tmp_path / "b", "layered", "--configfile", str(user))
    outside = effective(tmp_path, tmp_path / "c", "layered", "--configfile", str(user))
    assert inside == outside
    settings = yaml.safe_load(outside)
    assert settings["proxy"]["epochs"] == 3 and settings["proxy"]["lr"] == 0.01
    assert settings["data"]["pool_subset"] is None and settings["seeds"] == [0]  # the schema's, not the default experiment's
    assert settings["strategy_options"]["badge"]["candidates"] is None  # nested defaults are filled too


def test_activeft_pre_plans_one_single_shot_per_evaluation_point(tmp_path: Path) -> None:
    override = tmp_path / "activeft.yaml"
    override.write_text("methods: [activeft_pre]\nschedule:\n  budgets: [20, 20, 20]\nevaluation:\n  at: [20, 60]\n")
    result = snakemake(tmp_path, "-n", "-p", configfiles=(TINY, override))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    selections = sorted(w["r"] for rule, w in jobs if rule == "select_single_shot")
    assert selections == ["000", "002"]  # no round in between: each point is its own selection
    assert all(w["strategy"] == "activeft" for rule, w in jobs if rule == "select_single_shot")
    assert not [rule for rule, _ in jobs if rule in ("select_initial", "select_proxy", "select_proxy_decide")]
    assert re.search(r"select-single-shot .*--budget 60 .*--round 002", result.stdout)


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


def test_every_strategy_runs_through_a_tiny_proxy_run(tmp_path: Path, real_fashion_mnist: Path, default_weights: Path) -> None:
    override = tmp_path / "strategies.yaml"
    override.write_text("methods: [random, svpp, activeft_pre]\n"
                        "strategies: [margin, confidence, entropy, coreset, badge, activeft]\n"
                        "schedule:\n  budgets: [20, 20]\nevaluation:\n  at: [40]\n  random_beyond: []\n")
    result = snakemake(tmp_path, configfiles=(TINY, override))
    assert result.returncode == 0, result.stderr[-6000:]
    selections = {}
    for strategy in ("margin", "confidence", "entropy", "coreset", "badge", "activeft"):
        selected = pd.read_csv(tmp_path / f"results/tiny/svpp/{strategy}/seed0/round001/selected.csv")
        assert len(selected) == 20 and selected["pool_index"].is_unique
        labelled = pd.read_csv(tmp_path / f"results/tiny/svpp/{strategy}/seed0/round000/labelled.csv")
        assert not set(selected["pool_index"]) & set(labelled["pool_index"])
        selections[strategy] = frozenset(selected["pool_index"])
    assert len(set(selections.values())) >= 5  # the strategies really differ
    run = tmp_path / "results/tiny/svpp"
    initial = {s: set(pd.read_csv(run / s / "seed0/round000/labelled.csv")["pool_index"]) for s in ("margin", "activeft")}
    assert initial["margin"] != initial["activeft"]  # ActiveFT's round 0 is ActiveFT on the pre-trained features
    assert "ActiveFT: 100 iterations" in (run / "activeft/seed0/round000/logs/select.log").read_text()
    # ActiveFT(pre): one single shot of 40 labels on the pre-trained features, then FT.
    single = tmp_path / "results/tiny/activeft_pre/activeft/seed0"
    assert not (single / "round000").exists()
    shot = pd.read_csv(single / "round001/labelled.csv")
    assert len(shot) == 40 and shot["pool_index"].is_unique and set(shot["round"]) == {1}
    log = (single / "round001/logs/select.log").read_text()
    first, last = map(float, re.search(r"loss (\S+) -> (\S+)", log).groups())
    assert last < first
    summary = pd.read_csv(tmp_path / "results/tiny/summary.csv")
    assert set(summary["strategy"]) == {"random", "margin", "confidence", "entropy", "coreset", "badge", "activeft"}
    point = summary[summary["method"] == "activeft_pre"]
    assert list(point["n_labelled"]) == [40] and list(point["train_method"]) == ["ft"]
    assert 0.0 <= point["accuracy"].iloc[0] <= 1.0


def test_human_oracle_round_trip(tmp_path: Path, real_fashion_mnist: Path, default_weights: Path) -> None:
    """Select, stop cleanly, a bad answer file refused, answers by CSV then by folders, finish."""
    override = tmp_path / "human.yaml"
    override.write_text("oracle: human\nmethods: [svpp]\nschedule:\n  budgets: [20, 20]\nevaluation:\n  at: [40]\n")
    run = tmp_path / "results/tiny/svpp/margin/seed0"
    first = snakemake(tmp_path, configfiles=(TINY, override))
    assert first.returncode == 0, first.stderr[-4000:]
    assert "write results/tiny/svpp/margin/seed0/labels/round000.csv" in first.stderr
    request = pd.read_csv(run / "round000/to_label.csv", dtype={"sample_id": str})
    assert len(request) == 20 and (run / "round000/to_label.png").stat().st_size > 0
    assert all(Path(p).exists() for p in request["image_path"])
    assert not (run / "round000/labelled.csv").exists() and not (tmp_path / "results/tiny/summary.csv").exists()

    pool = pd.read_csv(tmp_path / "results/tiny/data/pool.csv", dtype={"sample_id": str})
    classes = json.loads((tmp_path / "results/tiny/data/dataset.json").read_text())["classes"]
    truth = dict(zip(pool["sample_id"], pool["label"]))
    answers = run / "labels/round000.csv"
    answers.parent.mkdir()
    rows = [f'{s},"{classes[truth[s]]}"' for s in request["sample_id"]]
    answers.write_text("sample_id;class\n" + "\n".join(r.replace(",", ";", 1) for r in rows) + "\n")  # a spreadsheet's export
    refused = snakemake(tmp_path, configfiles=(TINY, override))
    assert refused.returncode != 0
    assert "round000.csv, line 1: the header 'sample_id;class' uses ';' between columns" in refused.stderr + refused.stdout
    assert not (run / "round000/labelled.csv").exists()

    answers.write_text("sample_id,class\n" + "\n".join(rows) + "\n")
    second = snakemake(tmp_path, configfiles=(TINY, override))
    assert second.returncode == 0, second.stderr[-4000:]
    labelled = pd.read_csv(run / "round000/labelled.csv", dtype={"sample_id": str})
    assert labelled["label"].tolist() == [truth[s] for s in labelled["sample_id"]]
    assert labelled["class_name"].tolist() == [classes[truth[s]] for s in labelled["sample_id"]]
    request = pd.read_csv(run / "round001/to_label.csv", dtype={"sample_id": str}, keep_default_na=False)
    assert len(request) == 20 and set(request["predicted_class"]) <= set(classes)  # the proxy's hint
    assert "write results/tiny/svpp/margin/seed0/labels/round001.csv" in second.stderr

    for sample_id, image in zip(request["sample_id"], request["image_path"]):  # answers as a folder per class
        name = classes[truth[sample_id]].replace("/", "_")  # "T-shirt/top" -> folder T-shirt_top
        folder = run / "labels/round001" / (name if name != "Trouser" else "Trousers")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(image).name).symlink_to(image)
    if (run / "labels/round001/Trousers").exists():
        refused = snakemake(tmp_path, configfiles=(TINY, override))
        assert refused.returncode != 0
        assert "unknown class 'Trousers'; did you mean 'Trouser'?" in refused.stderr + refused.stdout
        (run / "labels/round001/Trousers").rename(run / "labels/round001/Trouser")
    third = snakemake(tmp_path, configfiles=(TINY, override))
    assert third.returncode == 0, third.stderr[-4000:]
    assert "waiting for labels" not in third.stderr
    labelled = pd.read_csv(run / "round001/labelled.csv", dtype={"sample_id": str})
    assert len(labelled) == 40 and labelled["label"].tolist() == [truth[s] for s in labelled["sample_id"]]
    summary = pd.read_csv(tmp_path / "results/tiny/summary.csv")
    assert summary["n_labelled"].tolist() == [40]


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


def test_keep_going_finishes_the_other_seed_when_one_fails(tmp_path: Path, real_fashion_mnist: Path,
                                                           default_weights: Path) -> None:
    """One seed's job fails (a person's answer file with an unknown class): --keep-going finishes
    the other seed; after the fix the same command finishes the run, no --unlock needed."""
    override = tmp_path / "two_seeds.yaml"
    override.write_text("oracle: human\nmethods: [random]\nseeds: [0, 1]\nschedule:\n  budgets: [20]\n")
    assert snakemake(tmp_path, configfiles=(TINY, override)).returncode == 0  # both seeds wait for labels
    classes = json.loads((tmp_path / "results/tiny/data/dataset.json").read_text())["classes"]
    pool = pd.read_csv(tmp_path / "results/tiny/data/pool.csv", dtype={"sample_id": str})
    truth = dict(zip(pool["sample_id"], pool["label"]))
    for seed, wrong in ((0, False), (1, True)):
        run = tmp_path / f"results/tiny/random/random/seed{seed}"
        ids = pd.read_csv(run / "round000/to_label.csv", dtype={"sample_id": str})["sample_id"]
        rows = [f'{i},"{"Sneakers" if wrong and k == 3 else classes[truth[i]]}"' for k, i in enumerate(ids)]
        (run / "labels").mkdir()
        (run / "labels/round000.csv").write_text("sample_id,class\n" + "\n".join(rows) + "\n")
    failed = snakemake(tmp_path, "--keep-going", configfiles=(TINY, override))
    assert failed.returncode != 0
    assert "round000.csv, line 5: unknown class 'Sneakers'; did you mean 'Sneaker'?" in failed.stdout + failed.stderr
    assert (tmp_path / "results/tiny/random/random/seed0/round000/metrics.json").exists()
    assert not (tmp_path / "results/tiny/random/random/seed1/round000/labelled.csv").exists()
    answers = tmp_path / "results/tiny/random/random/seed1/labels/round000.csv"
    answers.write_text(answers.read_text().replace('"Sneakers"', '"Sneaker"'))
    fixed = snakemake(tmp_path, configfiles=(TINY, override))
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results/tiny/summary.csv")
    assert sorted(summary["seed"]) == [0, 1]
