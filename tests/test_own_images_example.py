"""The README's "Your own images" walk-through, end to end with the CSV oracle: the template
config (config/my_images.yaml) on a folder of real photos that `asvp example-images` writes,
a person's answers each round (played from the answer key), and what a user takes home."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from asvp.config import validate_config
from asvp.data.example import EXAMPLE_CLASSES, answer_from_key, write_example_images
from asvp.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "config" / "my_images.yaml"
RUN = "results/my_images/asvp/margin/seed0"


def test_the_template_is_a_valid_config_for_your_own_images(tmp_path: Path, real_fashion_mnist: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    write_example_images(tmp_path / "examples/my_images", pool_size=10, test_size=5)
    monkeypatch.chdir(tmp_path)  # the template's paths are read from the folder snakemake runs in
    config = validate_config(yaml.safe_load(TEMPLATE.read_text()))
    assert config["data"]["dataset"] == "unlabelled" and config["oracle"] == "human"


def test_example_images_are_seeded_and_never_written_over(tmp_path: Path, real_fashion_mnist: Path) -> None:
    first = write_example_images(tmp_path / "a", pool_size=12, test_size=6, seed=3)
    second = write_example_images(tmp_path / "b", pool_size=12, test_size=6, seed=3)
    key = pd.read_csv(first / "answer_key.csv")
    assert key.equals(pd.read_csv(second / "answer_key.csv")) and len(key) == 12
    assert set(key["class"]) <= set(EXAMPLE_CLASSES)
    assert (first / "classes.txt").read_text().splitlines() == list(EXAMPLE_CLASSES)
    assert len(list((first / "test").rglob("*.png"))) == 6
    with pytest.raises(DataError, match="already holds images"):
        write_example_images(first, pool_size=12, test_size=6)


@pytest.mark.workflow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_walk_through_delivers_a_model_predictions_and_a_report(tmp_path: Path, real_fashion_mnist: Path,
                                                                     default_weights: Path) -> None:
    from test_workflow import snakemake

    write_example_images(tmp_path / "examples/my_images", pool_size=60, test_size=30)
    small = tmp_path / "small.yaml"  # the template's paths as they are; rounds and recipe sized for a test
    small.write_text("schedule: {budgets: [10, 10], cold_start: coreset}\nevaluation: {at: [20]}\n"
                     "features: {batch_size: 64}\nfinetune: {epochs: 2, batch_size: 16, min_steps: 0, milestones: []}\n"
                     "lpft: {lp_epochs: 1}\n")
    run = tmp_path / RUN
    for r in range(2):
        waiting = snakemake(tmp_path, configfiles=(TEMPLATE, small))
        assert waiting.returncode == 0, waiting.stdout[-3000:] + waiting.stderr[-4000:]
        assert f"round{r:03d}/to_label.csv lists the images to label" in waiting.stderr
        answer_from_key(run / f"round{r:03d}/to_label.csv", tmp_path / "examples/my_images/answer_key.csv",
                        run / f"labels/round{r:03d}.csv")
    done = snakemake(tmp_path, configfiles=(TEMPLATE, small))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]

    final = run / "final"
    labelled = pd.read_csv(final / "labelled.csv")
    predictions = pd.read_csv(final / "predictions.csv")
    assert len(labelled) == 20 and len(predictions) == 40
    assert not set(predictions["sample_id"]) & set(labelled["sample_id"])
    assert set(predictions["class"]) <= set(EXAMPLE_CLASSES)
    summary = pd.read_csv(tmp_path / "results/my_images/summary.csv")
    assert summary["accuracy"].notna().all() and summary["n_labelled"].tolist() == [20]
    assert (tmp_path / "results/my_images/report").is_dir()
    assert isinstance(torch.jit.load(str(final / "model.torchscript.pt")), torch.jit.ScriptModule)

    out = tmp_path / "new.csv"
    predicted = subprocess.run([sys.executable, "-m", "asvp", "predict", "--model", str(final / "model.pt"),
                                "--images", str(tmp_path / "examples/my_images/test"), "--out", str(out)],
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(pd.read_csv(out)) == 30
