"""What a user takes home: the model file, its TorchScript export, the pool predictions,
`asvp predict` on new image files, and a run whose data source has no labelled test set.

One tiny experiment (40 pool images of 28x28 noise, a randomly initialised MobileNetV2 at 32 px,
one epoch) is built by calling the step functions directly; it is shared by the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from asvp import delivery
from asvp.atomic import write_csv
from asvp.cli import main
from asvp.config import validate_config
from asvp.data.sources import FASHION_MNIST_CLASSES
from asvp.pool import SPLIT_COLUMNS, read_split_table
from asvp.steps.evaluate import deliver, evaluate
from asvp.steps.features import define_pool
from conftest import write_idx

N_POOL, N_TEST, N_LABELLED = 40, 20, 20
RUN = "random/random/seed0"


def _config(root: Path, results: Path) -> dict:
    return validate_config({
        "experiment": "unit", "results_dir": str(results), "device": "cpu", "methods": ["random"], "seeds": [0],
        "data": {"dataset": "fashion_mnist", "root": str(root), "resolution": 32},
        "backbone": {"checkpoint": None},
        "schedule": {"budgets": [N_LABELLED]},
        "finetune": {"epochs": 1, "batch_size": 10, "min_steps": 0, "milestones": []},
    })


def _experiment(base: Path, empty_test: bool) -> tuple[dict, Path]:
    """A prepared results dir: pool, test set (or its empty header), round 0's labelled set."""
    root = base / "fashion-mnist"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", N_POOL), ("t10k", N_TEST)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    config = _config(root, base / "results")
    experiment = base / "results" / "unit"
    data = experiment / "data"
    data.mkdir(parents=True)
    define_pool(config, str(data / "pool.csv"), str(data / "test.csv"), str(data / "dataset.json"))
    if empty_test:  # what a source without a labelled test set writes: the header, no rows
        write_csv(data / "test.csv", pd.DataFrame(columns=SPLIT_COLUMNS))
    pool = read_split_table(data / "pool.csv")
    chosen = np.sort(rng.choice(N_POOL, N_LABELLED, replace=False))
    round0 = experiment / RUN / "round000"
    round0.mkdir(parents=True)
    write_csv(round0 / "labelled.csv", pd.DataFrame({"pool_index": chosen, "sample_id": pool["sample_id"].to_numpy()[chosen],
                                                      "label": pool["label"].to_numpy()[chosen], "round": 0}))
    return config, experiment


def _deliver(config: dict, experiment: Path, out: Path) -> None:
    data, round0 = experiment / "data", experiment / RUN / "round000"
    deliver(config, "ft", str(data / "pool.csv"), str(round0 / "labelled.csv"), str(data / "test.csv"),
            str(data / "dataset.json"), 0, 0, str(experiment / "finetunes"), str(out))


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    config, experiment = _experiment(tmp_path_factory.mktemp("delivery"), empty_test=False)
    out = experiment / RUN / "final"
    _deliver(config, experiment, out)
    return config, experiment, out


def test_the_model_file_loads_without_the_config(delivered: tuple[dict, Path, Path]) -> None:
    _, experiment, out = delivered
    assert sorted(p.name for p in out.iterdir()) == ["labelled.csv", "metrics.json", "model.pt", "model.torchscript.pt",
                                                      "predictions.csv"]
    loaded = delivery.load_model(out / "model.pt")
    assert loaded.classes == list(FASHION_MNIST_CLASSES) and loaded.model.head.out_features == 10
    prep = loaded.preprocessing
    assert (prep["resolution"], prep["resize"], prep["interpolation"], prep["grey_to_rgb"]) == (32, 32, "bilinear", True)
    assert prep["mean"] == pytest.approx([0.485, 0.456, 0.406]) and prep["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert loaded.info["n_labelled"] == N_LABELLED and loaded.info["recipe"] == "ft"
    metrics = json.loads((out / "metrics.json").read_text())
    assert loaded.info["test_accuracy"] == metrics["accuracy"] and metrics["n_test"] == N_TEST
    assert not list(out.glob(".*")), "no temporary file left in the delivery folder"


def test_torchscript_export_matches_the_eager_model(delivered: tuple[dict, Path, Path]) -> None:
    _, _, out = delivered
    loaded = delivery.load_model(out / "model.pt")
    extra = {delivery.TORCHSCRIPT_INFO: ""}
    scripted = torch.jit.load(str(out / "model.torchscript.pt"), map_location="cpu", _extra_files=extra)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), loaded.model(images), rtol=1e-5, atol=1e-5)
    inside = json.loads(extra[delivery.TORCHSCRIPT_INFO])
    assert inside["classes"] == loaded.classes and inside["preprocessing"] == loaded.preprocessing


def test_predictions_cover_exactly_the_unlabelled_pool(delivered: tuple[dict, Path, Path]) -> None:
    _, experiment, out = delivered
    pool = pd.read_csv(experiment / "data/pool.csv")
    labelled = pd.read_csv(experiment / RUN / "round000/labelled.csv")
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["pool_index", "sample_id", "class", "probability", "margin"]
    expected = sorted(set(range(N_POOL)) - set(labelled["pool_index"]))
    assert predictions["pool_index"].tolist() == expected
    assert predictions["sample_id"].tolist() == pool["sample_id"].iloc[expected].tolist()
    assert predictions["class"].isin(FASHION_MNIST_CLASSES).all()
    assert predictions["probability"].between(1 / 10, 1).all() and (predictions["margin"] >= 0).all()
    assert (predictions["margin"] <= predictions["probability"]).all()
    pd.testing.assert_frame_equal(pd.read_csv(out / "labelled.csv"), labelled)


def _png_folder(experiment: Path, folder: Path, predictions: pd.DataFrame) -> list[Path]:
    """The unlabelled pool images as grey PNG files, named by pool index."""
    from asvp.data import open_source

    pool = pd.read_csv(experiment / "data/pool.csv")
    source = open_source("fashion_mnist", str(experiment.parents[1] / "fashion-mnist"), "train")
    folder.mkdir()
    paths = []
    for index in predictions["pool_index"]:
        path = folder / f"{index:03d}.png"
        Image.fromarray(source.images[pool["source_index"].iloc[index]]).save(path)
        paths.append(path)
    return paths


def test_predict_on_image_files_agrees_with_the_pool_predictions(delivered: tuple[dict, Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _, experiment, out = delivered
    pool_predictions = pd.read_csv(out / "predictions.csv")
    images = tmp_path / "new"
    _png_folder(experiment, images, pool_predictions)
    csv = tmp_path / "predicted.csv"
    assert main(["predict", "--model", str(out / "model.pt"), "--images", str(images), "--out", str(csv),
                 "--batch-size", "7", "--device", "cpu"]) == 0
    predicted = pd.read_csv(csv)
    assert list(predicted.columns) == ["path", "class", "probability", "margin"]
    assert [Path(p).name for p in predicted["path"]] == [f"{i:03d}.png" for i in pool_predictions["pool_index"]]
    # PIL decoding + the stored preprocessing give what the evaluation's in-memory path gave.
    assert predicted["class"].tolist() == pool_predictions["class"].tolist()
    np.testing.assert_allclose(predicted["probability"], pool_predictions["probability"], atol=1e-4)

    # A list file: relative paths resolve against its folder, absolute ones stay.
    first, second = (Path(p) for p in predicted["path"].iloc[:2])
    listing = images / "some.txt"
    listing.write_text(f"# two of them\n{first.name}\n\n{second.resolve()}\n")
    assert main(["predict", "--model", str(out / "model.pt"), "--images", str(listing), "--out", str(csv),
                 "--device", "cpu"]) == 0
    assert pd.read_csv(csv)["class"].tolist() == predicted["class"].iloc[:2].tolist()

def test_an_undecodable_image_stops_predict_unless_skipped(delivered: tuple[dict, Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, _, out = delivered
    images = tmp_path / "new"
    images.mkdir()
    Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(images / "a_rgb.png")
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(images / "b_grey.png")
    (images / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    csv = tmp_path / "predicted.csv"
    command = ["predict", "--model", str(out / "model.pt"), "--images", str(images), "--out", str(csv), "--device", "cpu"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "c_broken.png" in error and "--skip-bad" in error
    assert not csv.exists()
    assert main([*command, "--skip-bad"]) == 0
    assert "c_broken.png" in capsys.readouterr().out
    assert [Path(p).name for p in pd.read_csv(csv)["path"]] == ["a_rgb.png", "b_grey.png"]


def test_a_foreign_file_is_refused_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, weights)
    assert main(["predict", "--model", str(weights), "--images", str(tmp_path), "--out", str(tmp_path / "p.csv")]) == 2
    assert f"{weights} is not an asvp model file" in capsys.readouterr().err


def test_a_run_without_a_test_set_trains_delivers_and_reports(tmp_path: Path) -> None:
    from asvp.advisor import advise
    from asvp.steps.report import report, summarize
    from asvp.tables import run_notice

    config, experiment = _experiment(tmp_path, empty_test=True)
    data, round0 = experiment / "data", experiment / RUN / "round000"
    evaluate(config, "ft", str(data / "pool.csv"), str(round0 / "labelled.csv"), str(data / "test.csv"), 0, 0,
             str(experiment / "finetunes"), str(round0 / "metrics.json"), share_model=True)
    metrics = json.loads((round0 / "metrics.json").read_text())
    assert metrics["accuracy"] is None and metrics["n_test"] == 0 and metrics["loss_curve"]
    assert metrics["per_class_accuracy"] == [None] * 10 and metrics["status"] in ("ok", "diverged")

    _deliver(config, experiment, experiment / RUN / "final")
    final = experiment / RUN / "final"
    assert json.loads((final / "metrics.json").read_text())["reused"]  # the evaluation's model, from the cache
    cached = torch.load(experiment / "finetunes" / f"{metrics['finetune_key']}.pt", weights_only=True)["state_dict"]
    for key, value in delivery.load_model(final / "model.pt").model.state_dict().items():
        assert torch.equal(value, cached[key]), key
    assert delivery.load_model(final / "model.pt").info["test_accuracy"] is None
    assert len(pd.read_csv(final / "predictions.csv")) == N_POOL - N_LABELLED

    summarize(str(experiment), [str(round0 / "metrics.json")], 1, str(data / "dataset.json"), str(experiment / "summary.csv"),
              str(experiment / "rounds.csv"), str(experiment / "decisions.csv"), str(experiment / "class_counts.csv"))
    summary = pd.read_csv(experiment / "summary.csv")
    assert summary["accuracy"].isna().all() and (summary["n_test"] == 0).all()
    report(config, str(experiment), str(experiment / "report"))
    page = (experiment / "report" / "table1.html").read_text()
    assert "no labelled test set" in page
    predicted = pd.read_csv(experiment / "report" / "predicted_classes.csv")
    assert predicted["predicted"].sum() == N_POOL - N_LABELLED
    counts = pd.read_csv(experiment / "report" / "class_counts.csv")
    assert counts[list(FASHION_MNIST_CLASSES)].sum(axis=1).tolist() == [N_LABELLED]
    assert (experiment / "report" / "accuracy.png").stat().st_size > 0
    assert "no labelled test set" in advise(experiment, 0.05, 3.0)
    notice = run_notice(experiment / "summary.csv")
    assert "no labelled test set" in notice and f"{experiment}/<method>/<strategy>/seed<k>/final/" in notice


def test_delivery_points_follow_evaluation_deliver() -> None:
    from asvp.plan import DELIVERED_FILES, Plan

    settings = {"experiment": "unit", "methods": ["random", "standard"], "seeds": [0],
                "schedule": {"budgets": [20, 20, 20, 20, 20]}, "evaluation": {"at": [20, 60]}}
    final_only = Plan(validate_config(settings))
    assert final_only.delivered_rounds("random") == [4] and final_only.delivery_folder(4) == "final"
    assert final_only.delivery_files() == [f"results/unit/{run}/final/{name}" for run in ("random/random/seed0", "standard/margin/seed0")
                                           for name in DELIVERED_FILES]
    assert final_only.shares_model("random", 4) and not final_only.shares_model("random", 2)
    every = Plan(validate_config({**settings, "evaluation": {"at": [20, 60], "deliver": "all"}}))
    assert every.delivered_rounds("random") == every.delivered_rounds("standard") == [0, 2, 4]
    assert every.delivery_folder(2) == "round002/delivered" and every.delivery_round("round002/delivered") == 2
    assert every.delivery_round("final") == 4 and every.shares_model("random", 2) and not every.shares_model("standard", 3)
