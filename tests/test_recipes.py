"""Fine-tune recipes: LP-FT's probe picks its L2 strength by cross-validation on the labelled set, and
the step floor stretches a schedule that still decays over the whole run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asvp.config import validate_config
from asvp.errors import ConfigError
from asvp.probe import PROBE_DECAY_GRID, choose_probe_decay, fold_count, stratified_folds
from asvp.recipes import recipe_from_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _blobs(n: int, separation: float, seed: int, classes: int = 3, dim: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=generator)
    features = torch.randn(n, dim, generator=generator) + separation * centres[labels]
    return features, labels


def test_cross_validation_picks_a_small_decay_on_separable_data() -> None:
    x, y = _blobs(60, separation=6.0, seed=0)
    decay, scores = choose_probe_decay(x, y, 3, PROBE_DECAY_GRID, seed=0)
    assert decay <= 1e-2 and set(scores) == set(PROBE_DECAY_GRID)


def test_cross_validation_picks_a_large_decay_on_noisy_data() -> None:
    x, _ = _blobs(60, separation=0.0, seed=1)
    y = torch.as_tensor(np.random.default_rng(1).integers(0, 3, 60))  # labels unrelated to the features
    decay, _ = choose_probe_decay(x, y, 3, PROBE_DECAY_GRID, seed=0)
    assert decay >= 0.1


def test_the_same_seed_makes_the_same_choice_and_the_same_folds() -> None:
    x, y = _blobs(45, separation=1.0, seed=2)
    assert choose_probe_decay(x, y, 3, PROBE_DECAY_GRID, seed=4) == choose_probe_decay(x, y, 3, PROBE_DECAY_GRID, seed=4)
    labels = y.numpy()
    folds = stratified_folds(labels, 5, seed=4)
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=4))
    for fold in range(5):  # every fold holds every class, in the set's proportions
        assert np.bincount(labels[folds == fold], minlength=3).tolist() == [3, 3, 3]


def test_folds_shrink_to_the_smallest_class() -> None:
    assert fold_count(np.array([0] * 10 + [1] * 3)) == 3
    assert fold_count(np.array([0] * 10 + [1] * 1)) == 2  # a class of one still leaves a held-out fold
    assert fold_count(np.arange(40) % 2) == 5


def test_cv_is_the_default_and_a_number_still_fixes_the_decay() -> None:
    default = recipe_from_config("lpft", validate_config({"experiment": "unit"}))
    assert default.stages[0].weight_decay_grid == PROBE_DECAY_GRID
    fixed = recipe_from_config("lpft", validate_config({"experiment": "unit", "lpft": {"lp_weight_decay": 0.01}}))
    assert fixed.stages[0].weight_decay == 0.01 and fixed.stages[0].weight_decay_grid == ()
    with pytest.raises(ConfigError, match="lp_solver: sgd"):
        recipe_from_config("lpft", validate_config({"experiment": "unit", "lpft": {"lp_solver": "sgd"}}))


def test_the_probe_trains_and_records_the_decay_cross_validation_chose() -> None:
    from torch import nn

    from asvp.probe import fit_linear_probe
    from asvp.recipes import Stage
    from asvp.training import Classifier

    x, y = _blobs(30, separation=6.0, seed=3, dim=4)

    class Features(nn.Module):
        feature_dim = 4

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.flatten(1)

    dataset = [(x[i].view(4, 1, 1), int(y[i]), i) for i in range(30)]
    torch.manual_seed(0)
    model = Classifier(Features(), 3)
    stage = Stage("lp", 2, None, 0.5, 0.0, "lbfgs", weight_decay_grid=PROBE_DECAY_GRID)
    history = fit_linear_probe(model, dataset, stage, 8, seed=0, device=torch.device("cpu"), log=lambda _: None)
    chosen, _ = choose_probe_decay(x, y, 3, PROBE_DECAY_GRID, seed=0)
    assert [h["weight_decay"] for h in history] == [chosen, chosen]
    assert history[-1]["train_accuracy"] == 1.0


@pytest.mark.parametrize("kind", ["ft", "lpft"])
def test_the_default_step_floor_decays_the_lr_over_the_whole_stretched_run(kind: str) -> None:
    """At 400 labels the 200-step floor binds (30 epochs are 94 steps): the milestones move with the
    stretched epochs, so the lr falls x0.1 at 2/3 and 5/6 of the 200 steps, not after the 94th."""
    from asvp.recipes import lr_factor, plan_stage

    stage = recipe_from_config(kind, validate_config({"experiment": "unit"})).stages[-1]
    plan = plan_stage(stage, n=400, batch_size=128)
    factors = [lr_factor(stage, plan, step) for step in range(plan.steps)]
    total = 200 if kind == "ft" else 180  # LP-FT's FT stage: its 27 of the 30 epochs' share of the floor
    assert plan.steps == total and factors[0] == 1.0 and factors[-1] == pytest.approx(0.01)
    first_drop, second_drop = factors.index(pytest.approx(0.1)), factors.index(pytest.approx(0.01))
    assert abs(first_drop - 200 * 20 / 30 - (total - 200)) <= 1 and abs(second_drop - 200 * 25 / 30 - (total - 200)) <= 1


def test_a_backbone_never_trained_gets_a_longer_schedule_and_a_trained_one_keeps_its_recipe(tmp_path: Path) -> None:
    import torchvision

    from asvp.checkpoints import never_trained
    from asvp.finetune import training_recipe
    from asvp.recipes import UNTRAINED_EPOCH_FACTOR

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), tmp_path / "random.pth")
    model.train()
    model(torch.randn(4, 3, 32, 32))  # one training-mode pass moves the BatchNorm statistics
    torch.save(model.state_dict(), tmp_path / "trained.pth")
    assert never_trained(str(tmp_path / "random.pth")) and never_trained(None)
    assert not never_trained(str(tmp_path / "trained.pth"))

    def config(checkpoint: str | None) -> dict:
        return validate_config({"experiment": "unit", "backbone": {"arch": "resnet18", "checkpoint": checkpoint}})

    trained, untrained = (training_recipe(kind, config(str(tmp_path / name))).stages[-1]
                          for kind, name in (("ft", "trained.pth"), ("ft", "random.pth")))
    assert untrained.epochs == UNTRAINED_EPOCH_FACTOR * trained.epochs
    assert untrained.milestones == tuple(UNTRAINED_EPOCH_FACTOR * m for m in trained.milestones)
    assert trained == recipe_from_config("ft", config(str(tmp_path / "trained.pth"))).stages[-1]
    lp, ft = training_recipe("lpft", config(str(tmp_path / "random.pth"))).stages
    assert lp.epochs + ft.epochs == UNTRAINED_EPOCH_FACTOR * validate_config({"experiment": "unit"})["finetune"]["epochs"]
