"""End-to-end: the real Snakefile on tiny configs of their own: plans, config errors, every
strategy, the human oracle round trip, --keep-going. The shared finished run is test_workflow.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tiny_workflow import REPO, TINY, planned_jobs, snakemake

pytestmark = pytest.mark.workflow


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
