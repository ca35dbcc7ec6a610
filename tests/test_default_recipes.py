"""The schema's default recipes converge for every backbone a user can name.

A user whose config sets only `data:` and `backbone:` gets the schema's FT and LP-FT recipes.
With the paper's head lr (0.1) and no step floor, every such fine-tune of a ResNet-50 diverged
(loss 2.7 -> 89 -> 154, train accuracy about 0.1): the head's step grows with the squared norm
of the raw pooled features, thousands at 32 px. Here each architecture, from randomly
initialised weights saved as a checkpoint file and (MobileNetV2) from the packaged ImageNet
weights, runs the workflow's own fine-tune with nothing but the schema's recipe values on 10
real Fashion-MNIST labels at 32 px; it must fit them (final train accuracy above 0.9) and pass
the divergence guard. benchmarks/convergence.py runs the same cells at 100 and 1,000 labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from asvp import finetune
from asvp.steps.features import define_pool
from asvp.atomic import write_csv
from asvp.config import validate_config
from asvp.pool import read_split_table

pytestmark = pytest.mark.usefixtures("torch_single_thread")
LABELS_PER_CLASS = 1  # 10 labels: the step floor (finetune.min_steps) sets the work, 200 steps of 10 images
# ResNet-50 takes about half the file's time (two minutes of CPU of its four and a half).
CELLS = [("mobilenet_v2", "packaged"), ("mobilenet_v2", "random"), ("resnet18", "random"),
         pytest.param("resnet50", "random", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """torchvision models' randomly initialised state_dicts, saved as checkpoint files."""
    import torchvision

    folder = tmp_path_factory.mktemp("random_init")
    paths = {}
    for arch in ("mobilenet_v2", "resnet18", "resnet50"):
        torch.manual_seed(0)
        paths[arch] = folder / f"{arch}_random_init.pth"
        torch.save(getattr(torchvision.models, arch)().state_dict(), paths[arch])
    return paths


def _user_config(arch: str, checkpoint: str) -> dict:
    """What a new user writes: data and backbone; pool and test subsets only keep the test small."""
    return validate_config({"experiment": "defaults", "device": "cpu",
                            "data": {"dataset": "fashion_mnist", "pool_subset": 1000, "test_subset": 200},
                            "backbone": {"arch": arch, "checkpoint": checkpoint}})


@pytest.mark.parametrize("recipe", ["ft", "lpft"])
@pytest.mark.parametrize(("arch", "weights"), CELLS)
def test_the_default_recipe_fits_a_small_labelled_set_without_diverging(
    arch: str, weights: str, recipe: str, real_fashion_mnist: Path, random_checkpoints: dict[str, Path], tmp_path: Path,
) -> None:
    if weights == "packaged":
        from asvp.checkpoints import default_checkpoint
        from asvp.errors import CheckpointError

        try:
            default_checkpoint()
        except CheckpointError as exc:
            pytest.skip(str(exc))
    config = _user_config(arch, "default" if weights == "packaged" else str(random_checkpoints[arch]))
    define_pool(config, tmp_path / "pool.csv", tmp_path / "test.csv", tmp_path / "info.json")
    pool = read_split_table(tmp_path / "pool.csv")
    labels = pool["label"].to_numpy()
    rows = np.concatenate([np.flatnonzero(labels == c)[:LABELS_PER_CLASS] for c in range(10)])
    write_csv(tmp_path / "labelled.csv", pd.DataFrame({"pool_index": rows, "sample_id": pool["sample_id"].to_numpy()[rows],
                                                       "label": labels[rows], "round": 0}))
    metrics = finetune.finetune_and_evaluate(config, recipe, tmp_path / "pool.csv", tmp_path / "labelled.csv",
                                               tmp_path / "test.csv", 0, tmp_path / "metrics.json", cache_dir=tmp_path / "cache")
    curve = " ".join(f"{h['stage']}{h['epoch']}:{h['loss']:.2f}/{h['train_accuracy']:.2f}" for h in metrics["loss_curve"])
    assert metrics["status"] == "ok", f"{metrics['divergence']}; curve {curve}"
    assert metrics["final_train_accuracy"] > 0.9, f"curve {curve}"
