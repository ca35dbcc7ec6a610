"""Fine-tunes that converge at every labelled-set size, and the guard that flags those that do not.

The default's curves fell at 400 labels because 400 = 3 * 128 + 16: the last batch of every
epoch held 16 images, and MobileNetV2's last BatchNorm layers (1x1 spatial at 32 px) normalised
over 16 values, so every epoch ended with a step on wild statistics (loss 1.14 -> 1.89 between
epochs 4 and 9). And LP at a fixed SGD lr exploded on features of another scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp.errors import DataError
from asvp.finetune import _guard, divergence
from asvp.recipes import Stage, TrainRecipe, lr_factor, plan_stage
from asvp.training import Classifier, batch_positions, fit_linear_probe, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")
CPU = torch.device("cpu")


class BatchSizeProbe(nn.Module):
    """Backbone that records the size of every training batch it sees."""

    feature_dim = 4

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(3, self.feature_dim)
        self.norm = nn.BatchNorm1d(self.feature_dim)
        self.scale = scale
        self.sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.sizes.append(len(images))
        return self.norm(self.proj(images.mean((2, 3)))) * self.scale


class Blobs(Dataset):
    def __init__(self, n: int, classes: int = 3) -> None:
        generator = torch.Generator().manual_seed(n)
        self.labels = torch.arange(n) % classes
        self.images = torch.randn(n, 3, 2, 2, generator=generator) + 2 * self.labels.view(-1, 1, 1, 1).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        return self.images[position], int(self.labels[position]), position


def _train(model: Classifier, dataset: Dataset, recipe: TrainRecipe, tmp_path: Path) -> list:
    return train(model, dataset, recipe, seed=0, device=CPU, checkpoint=tmp_path / "c.pt", fingerprint="f", log=lambda _: None)


def test_every_training_batch_is_full_whatever_the_labelled_set_size(tmp_path: Path) -> None:
    """Regression: 400 labels at batch 128 gave a 16-image batch every epoch (fails on the old loop)."""
    torch.manual_seed(0)
    probe = BatchSizeProbe()
    model = Classifier(probe, 3)
    recipe = TrainRecipe("ft", (Stage("ft", 3, 0.01, 0.01, 0.0, "step", ()),), batch_size=8, recalibrate_bn=False)
    _train(model, Blobs(19), recipe, tmp_path)  # 19 = 2 * 8 + 3
    assert probe.sizes == [8] * 8  # ceil(3 * 19 / 8) = 8 steps, all of 8 images (no batch of 3)


def test_batches_cover_every_sample_once_per_pass_and_rebuild_on_resume() -> None:
    whole = batch_positions(19, 8, 0, 9, seed=3, stage_index=0)
    assert whole.shape == (9, 8)
    stream = whole.ravel()
    for start in range(0, 57 - 19, 19):  # each consecutive 19 positions are a permutation
        assert sorted(stream[start : start + 19]) == list(range(19))
    np.testing.assert_array_equal(batch_positions(19, 8, 4, 9, seed=3, stage_index=0), whole[4:])
    assert not np.array_equal(batch_positions(19, 8, 0, 9, seed=4, stage_index=0), whole)


def test_a_step_floor_stretches_the_schedule_and_keeps_the_milestones_in_place() -> None:
    stage = Stage("ft", 20, 0.01, 0.01, 0.0, "step", (12, 16), min_steps=200)
    plan = plan_stage(stage, n=100, batch_size=128)  # 20 epochs of 1 step: floored to 200 steps
    assert (plan.batch, plan.steps) == (100, 200)
    assert plan.epoch_starts[12] == 120 and plan.epoch_starts[16] == 160
    assert [lr_factor(stage, plan, s) for s in (0, 119, 120, 159, 160, 199)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # Where the floor does not bind, the plan is the paper's epoch recipe.
    paper = plan_stage(stage, n=12800, batch_size=128)
    assert paper.steps == 20 * 100 and paper.epoch_starts[12] == 1200


def test_warmup_ramps_the_lr_linearly() -> None:
    stage = Stage("ft", 2, 0.01, 0.01, 0.0, "step", (), warmup_steps=4)
    plan = plan_stage(stage, n=40, batch_size=8)  # 10 steps
    assert [lr_factor(stage, plan, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_the_lbfgs_probe_converges_whatever_the_feature_scale(scale: float) -> None:
    torch.manual_seed(0)
    model = Classifier(BatchSizeProbe(scale), 3)
    history = fit_linear_probe(model, Blobs(30), Stage("lp", 3, None, 0.5, 0.1, "lbfgs"), 8, seed=0, device=CPU,
                               log=lambda _: None)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] <= history[0]["loss"] + 1e-6
    assert history[-1]["train_accuracy"] > 0.9


def test_sgd_probe_at_a_fixed_lr_explodes_on_large_features(tmp_path: Path) -> None:
    """Why lbfgs is the default: the official lr 0.5 is tied to one feature scale."""
    torch.manual_seed(0)
    model = Classifier(BatchSizeProbe(1000.0), 3)
    recipe = TrainRecipe("lp", (Stage("lp", 3, None, 0.5, 0.0, "cosine"),), 8)
    try:
        history = _train(model, Blobs(30), recipe, tmp_path)
    except DataError:
        return  # the loss became infinite: exploded
    assert history[-1]["loss"] > 10 * history[0]["loss"] or history[-1]["loss"] > 5


def test_lpft_probes_the_features_that_fine_tuning_starts_from(tmp_path: Path) -> None:
    """BatchNorm statistics are recalibrated to the labelled data before the probe."""
    torch.manual_seed(0)
    probe = BatchSizeProbe()
    probe.norm.running_mean.fill_(50.0)  # "pre-training" statistics far from this data
    model = Classifier(probe, 3)
    lp = Stage("lp", 1, None, 0.5, 0.1, "lbfgs")
    ft = Stage("ft", 1, 0.0, 0.0, 0.0, "step")  # lr 0: FT leaves the head as LP made it
    history = _train(model, Blobs(24), TrainRecipe("lpft", (lp, ft), 8), tmp_path)
    lp_loss, ft_loss = history[0]["loss"], history[1]["loss"]
    assert lp_loss < 0.7 and ft_loss < 2 * lp_loss + 0.2  # no jump at the LP -> FT boundary


# --- the divergence guard ---------------------------------------------------------------------


def _history(*losses: float, stage: str = "ft") -> list[dict]:
    return [{"stage": stage, "epoch": i + 1, "loss": loss, "train_accuracy": 0.5} for i, loss in enumerate(losses)]


def test_a_loss_that_ends_above_its_start_is_diverged() -> None:
    assert divergence(_history(2.0, 1.0, 0.5), 0.7, 10) == []
    assert "rose" in divergence(_history(1.1, 1.9, 1.2), 0.7, 10)[0]


def test_accuracy_near_chance_is_diverged() -> None:
    assert "chance" in divergence(_history(2.0, 1.0), 0.115, 10)[0]
    assert divergence(_history(2.0, 1.0), 0.125, 10) == []


def test_on_divergence_fail_names_the_round_and_the_lr_knob(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {"status": "diverged", "divergence": ["ft loss rose"], "n_labelled": 400}
    with pytest.raises(DataError, match=r"round 3 .*finetune\.lr_backbone"):
        _guard(metrics, {"evaluation": {"on_divergence": "fail"}}, "ft", 3)
    _guard(metrics, {"evaluation": {"on_divergence": "warn"}}, "lpft", 3)
    assert "WARNING" in capsys.readouterr().out


def test_the_probe_reports_the_objective_it_minimises_so_it_never_looks_diverged() -> None:
    """On the default the probe's cross-entropy rose 0.205 -> 0.208 while L-BFGS lowered the
    regularised objective: three LP-FT runs were flagged 'diverged' for it."""
    torch.manual_seed(0)
    model = Classifier(BatchSizeProbe(), 3)
    history = fit_linear_probe(model, Blobs(30), Stage("lp", 4, None, 0.5, 1.0, "lbfgs"), 8, seed=0, device=CPU,
                               log=lambda _: None)
    losses = [h["loss"] for h in history]
    assert all(later <= earlier + 1e-6 for earlier, later in zip(losses, losses[1:]))
    assert all(h["loss"] >= h["cross_entropy"] for h in history)
    assert divergence(history, 0.9, 3) == []
