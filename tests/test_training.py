"""Tests for asvp.training: the one loop behind FT, LP-FT and the feature refresh."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp.config import validate_config
from asvp.errors import DataError
from asvp.recipes import (Stage, TrainRecipe, lr_factor, optimizer_of, plan_stage, recipe_fingerprint,
                          recipe_from_config, recipe_identity)
from asvp.training import Classifier, _optimizer, predict, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CPU = torch.device("cpu")
NUM_CLASSES = 3


class Interrupted(RuntimeError):
    """Stands in for a killed job."""


class TinyBackbone(nn.Module):
    """Conv -> ReLU -> pool -> Linear -> BatchNorm1d: pooled (B, D) features with BatchNorm statistics.

    The BatchNorm1d acts on (B, D), so a training batch of one sample raises, as in real backbones.
    """

    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(4, self.feature_dim)
        self.norm = nn.BatchNorm1d(self.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(images))).flatten(1)
        return self.norm(self.proj(x))


class TinyImages(Dataset):
    """(image, label, position) like the real datasets; random flips stand in for augmentation.

    `fail_at_fetch` raises on that (1-based) item fetch, to kill training mid-run; `fetches`
    counts item reads so a resumed run can prove which epochs it recomputed.
    """

    def __init__(self, n: int, fail_at_fetch: int | None = None) -> None:
        generator = torch.Generator().manual_seed(n)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.images = torch.randn(n, 3, 5, 5, generator=generator) + self.labels.view(-1, 1, 1, 1).float()
        self.fail_at_fetch = fail_at_fetch
        self.fetches = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        self.fetches += 1
        if self.fetches == self.fail_at_fetch:
            raise Interrupted(f"killed at item fetch {self.fetches}")
        image = self.images[position]
        if torch.rand(()) < 0.5:  # uses the global torch RNG, as torchvision transforms do
            image = image.flip(-1)
        return image, int(self.labels[position]), position


def _model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(TinyBackbone(), NUM_CLASSES)


def _recipe(kind: str = "ft", batch_size: int = 4, optimizer: str = "sgd") -> TrainRecipe:
    lp = Stage("lp", 2, None, 0.5, 0.0, "cosine")
    ft = Stage("ft", 3, 0.05, 0.1, 1e-4, "step", (2,))
    if optimizer == "adamw":
        ft = Stage("ft", 3, 1e-3, 1e-2, 0.05, "warmup_cosine", optimizer="adamw")
    return TrainRecipe(kind, (lp, ft) if kind == "lpft" else (ft,), batch_size)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _train(model: Classifier, dataset: Dataset, recipe: TrainRecipe, checkpoint: Path, fingerprint: str = "fp", seed: int = 0) -> list:
    return train(model, dataset, recipe, seed=seed, device=CPU, checkpoint=checkpoint, fingerprint=fingerprint, log=lambda _: None)


# --- recipes -------------------------------------------------------------------------------------


def test_ft_recipe_from_config() -> None:
    config = validate_config(
        {"experiment": "unit", "finetune": {"epochs": 12, "batch_size": 32, "lr_backbone": 0.05, "lr_head": 0.2,
                                            "milestones": [6, 9], "min_steps": 0}}
    )
    recipe = recipe_from_config("ft", config)
    assert recipe.kind == "ft" and recipe.batch_size == 32
    assert recipe.momentum == 0.9 and recipe.nesterov is True and recipe.recalibrate_bn is True  # fixed, not config keys
    assert recipe.stages == (Stage("ft", 12, 0.05, 0.2, 1e-4, "step", (6, 9)),)


def test_lpft_recipe_from_config_is_the_ft_schedule_with_a_probe_first() -> None:
    config = validate_config(
        {
            "experiment": "unit",
            "finetune": {"batch_size": 16, "epochs": 10, "lr_backbone": 0.001, "lr_head": 0.2, "weight_decay": 0.0,
                         "milestones": [9], "min_steps": 40, "warmup_steps": 3},
            "lpft": {"lp_epochs": 4, "lp_lr": 2.0, "lp_weight_decay": 0.1},
        }
    )
    recipe = recipe_from_config("lpft", config)
    assert recipe.kind == "lpft" and recipe.batch_size == 16
    lp, ft = recipe.stages
    assert lp == Stage("lp", 4, None, 2.0, 0.1, "lbfgs", (), 16)  # backbone frozen, L-BFGS probe (lp_weight_decay 0.1)
    # LP + FT epochs = finetune.epochs; milestone 9 of the whole schedule is epoch 5 of the FT stage;
    # the floor of 40 steps over 10 epochs gives the 6 FT epochs 24 steps.
    assert ft == Stage("ft", 6, 0.001, 0.2, 0.0, "step", (5,), 24, 3)


@pytest.mark.parametrize(("arch", "expected"), [("mobilenet_v2", "sgd"), ("convnext_tiny", "sgd"), ("vit_b_16", "adamw"),
                                              ("timm/vit_tiny_patch16_224", "adamw")])
def test_auto_picks_adamw_for_attention_backbones_and_sgd_for_cnns(arch: str, expected: str) -> None:
    config = validate_config({"experiment": "unit", "backbone": {"arch": arch, "checkpoint": None}})
    assert optimizer_of(config) == expected
    lp, ft = recipe_from_config("lpft", config).stages
    assert ft.optimizer == expected and lp.optimizer == "sgd"  # the probe is L-BFGS either way


def test_adamw_recipe_takes_its_own_rates_and_decays_to_zero_over_the_steps() -> None:
    config = validate_config({"experiment": "unit", "finetune": {
        "optimizer": "adamw", "epochs": 10, "min_steps": 50, "adamw": {"lr_backbone": 2e-4, "lr_head": 3e-3}}})
    (stage,) = recipe_from_config("ft", config).stages
    assert stage == Stage("ft", 10, 2e-4, 3e-3, 0.05, "warmup_cosine", (), 50, optimizer="adamw")
    plan = plan_stage(stage, 100, 128)  # 50 steps (the floor), the first 5 warm up
    factors = [lr_factor(stage, plan, step) for step in range(plan.steps)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[5] == 1.0 and all(a > b for a, b in zip(factors[5:], factors[6:])) and factors[-1] < 0.01


def test_sgd_recipes_keep_the_cache_identity_they_had_before_the_optimizer_choice() -> None:
    """Fine-tunes cached by existing experiments stay valid: the new field is left out at sgd."""
    config = validate_config({"experiment": "unit"})
    digests = {kind: hashlib.sha256(json.dumps(recipe_identity(recipe_from_config(kind, config)), sort_keys=True,
                                               default=str).encode()).hexdigest()[:16] for kind in ("ft", "lpft")}
    assert digests == {"ft": "4cfc83fcf330d0cd", "lpft": "98a2e14fd4e46041"}
    adamw = validate_config({"experiment": "unit", "finetune": {"optimizer": "adamw"}})
    assert recipe_identity(recipe_from_config("ft", adamw))["stages"][0]["optimizer"] == "adamw"


def test_adamw_leaves_biases_and_norms_undecayed(tmp_path: Path) -> None:
    model = _model()
    optimizer = _optimizer(model, _recipe("ft", optimizer="adamw").stages[0], _recipe("ft", optimizer="adamw"))
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert all(p.ndim > 1 for p in group["params"]) == (group["weight_decay"] > 0)


def test_unknown_recipe_kind_raises() -> None:
    with pytest.raises(ValueError, match="lp-ft"):
        recipe_from_config("lp-ft", validate_config({"experiment": "unit"}))


# --- what each stage trains ----------------------------------------------------------------------


def test_linear_probe_leaves_the_backbone_and_its_batchnorm_statistics_unchanged(tmp_path: Path) -> None:
    model = _model()
    before = _state(model)
    recipe = TrainRecipe("lp", (Stage("lp", 2, None, 0.5, 0.0, "cosine"),), 4)
    _train(model, TinyImages(10), recipe, tmp_path / "ckpt.pt")
    after = _state(model)
    backbone_keys = [k for k in before if k.startswith("backbone.")]
    assert "backbone.norm.running_mean" in backbone_keys and "backbone.norm.num_batches_tracked" in backbone_keys
    for key in backbone_keys:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for later use


def test_fine_tuning_changes_the_backbone_and_its_statistics(tmp_path: Path) -> None:
    model = _model()
    before = _state(model)
    _train(model, TinyImages(10), _recipe("ft"), tmp_path / "ckpt.pt")
    after = _state(model)
    assert not torch.equal(before["backbone.conv.weight"], after["backbone.conv.weight"])
    assert not torch.equal(before["backbone.norm.running_mean"], after["backbone.norm.running_mean"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not model.training


def test_training_is_bit_identical_for_the_same_seed(tmp_path: Path) -> None:
    first, second, other = _model(), _model(), _model()
    history = _train(first, TinyImages(10), _recipe("lpft"), tmp_path / "a.pt", seed=3)
    assert [(h["stage"], h["epoch"]) for h in history] == [("lp", 1), ("lp", 2), ("ft", 1), ("ft", 2), ("ft", 3)]
    _train(second, TinyImages(10), _recipe("lpft"), tmp_path / "b.pt", seed=3)
    _assert_same(_state(first), _state(second))
    _train(other, TinyImages(10), _recipe("lpft"), tmp_path / "c.pt", seed=4)
    assert not torch.equal(_state(first)["head.weight"], _state(other)["head.weight"])


def test_a_milestone_lowers_the_lr_from_the_following_epoch(tmp_path: Path) -> None:
    """Milestone m decays the lr after epoch m; so m == epochs never changes training (see config checks)."""

    def run(milestones: tuple[int, ...], name: str) -> dict[str, torch.Tensor]:
        model = _model()
        recipe = TrainRecipe("ft", (Stage("ft", 3, 0.05, 0.1, 0.0, "step", milestones),), 4)
        _train(model, TinyImages(10), recipe, tmp_path / f"{name}.pt")
        return _state(model)

    none = run((), "none")
    _assert_same(none, run((3,), "at_end"))
    assert not torch.equal(none["head.weight"], run((2,), "before_end")["head.weight"])


# --- kill and resume -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kill_epoch", "epochs_left"),
    [
        (2, 4),  # killed in LP epoch 2: resume mid-LP with its optimizer and cosine schedule
        (3, 3),  # killed in FT epoch 1: resume at the stage boundary (head carried over from LP)
        (4, 2),  # killed in FT epoch 2: resume mid-FT with momentum and the step schedule
    ],
)
def test_resumed_training_equals_an_uninterrupted_run_bit_for_bit(tmp_path: Path, kill_epoch: int, epochs_left: int) -> None:
    n = 10
    reference = _model()
    reference_history = _train(reference, TinyImages(n), _recipe("lpft"), tmp_path / "reference.pt")

    checkpoint = tmp_path / "ckpt.pt"
    # Reads per schedule epoch (LP then FT): full batches of 4, n / 4 steps an epoch on average.
    reads = [4 * h["steps"] for h in reference_history]
    # n reads of the BatchNorm recalibration before LP, then mid-epoch, after one optimizer step
    killed = TinyImages(n, fail_at_fetch=n + sum(reads[: kill_epoch - 1]) + 6)
    with pytest.raises(Interrupted):
        _train(_model(), killed, _recipe("lpft"), checkpoint)
    assert checkpoint.exists()

    restarted = _model()  # a new process rebuilds the model from the pre-trained weights
    data = TinyImages(n)
    history = _train(restarted, data, _recipe("lpft"), checkpoint)
    # The finished epochs are not recomputed; the last n reads are the BatchNorm recalibration.
    assert data.fetches == sum(reads[-epochs_left:]) + n
    assert history == reference_history
    _assert_same(_state(restarted), _state(reference))


def test_a_resumed_adamw_fine_tune_equals_an_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    n, recipe = 10, _recipe("lpft", optimizer="adamw")
    reference = _model()
    reference_history = _train(reference, TinyImages(n), recipe, tmp_path / "reference.pt")
    reads = [4 * h["steps"] for h in reference_history]
    killed = TinyImages(n, fail_at_fetch=n + sum(reads[:3]) + 6)  # mid FT epoch 2: Adam's moments in the checkpoint
    with pytest.raises(Interrupted):
        _train(_model(), killed, recipe, tmp_path / "ckpt.pt")
    restarted = _model()
    assert _train(restarted, TinyImages(n), recipe, tmp_path / "ckpt.pt") == reference_history
    _assert_same(_state(restarted), _state(reference))


def test_a_checkpoint_with_another_fingerprint_is_ignored(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    _train(_model(seed=1), TinyImages(10), _recipe("ft"), checkpoint, fingerprint="other labelled set")
    model, data = _model(), TinyImages(10)
    _train(model, data, _recipe("ft"), checkpoint, fingerprint="this labelled set")
    assert data.fetches == 8 * 4 + 10  # trained from scratch (ceil(3 * 10 / 4) = 8 full batches of 4), then one recalibration
    fresh = _model()
    _train(fresh, TinyImages(10), _recipe("ft"), tmp_path / "fresh.pt", fingerprint="this labelled set")
    _assert_same(_state(model), _state(fresh))


def test_a_finished_checkpoint_resumes_to_the_same_weights_without_training(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    first = _model()
    _train(first, TinyImages(10), _recipe("ft"), checkpoint)
    again, data = _model(), TinyImages(10)
    _train(again, data, _recipe("ft"), checkpoint)
    assert data.fetches == 10  # no epoch again: only the (deterministic) BatchNorm recalibration pass
    _assert_same(_state(first), _state(again))


class PlainImages(TinyImages):
    """TinyImages without the random flip, so activations can be averaged independently."""

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        self.fetches += 1
        return self.images[position], int(self.labels[position]), position


def test_batchnorm_statistics_are_recalibrated_to_the_training_set(tmp_path: Path) -> None:
    data = PlainImages(12)
    model = _model()
    model.backbone.norm.running_mean.fill_(100.0)  # stale statistics from "pre-training"
    frozen_weights = Stage("ft", 1, 0.0, 0.0, 0.0, "step")  # lr 0: only the statistics can change
    _train(model, data, TrainRecipe("ft", (frozen_weights,), 4), tmp_path / "c.pt")
    with torch.no_grad():
        x = model.backbone.proj(model.backbone.pool(torch.relu(model.backbone.conv(data.images))).flatten(1))
    assert torch.allclose(model.backbone.norm.running_mean, x.mean(0), atol=1e-5)
    # BatchNorm's running variance is the average of per-batch unbiased variances (batches of 4).
    batch_var = torch.stack([x[i : i + 4].var(0, unbiased=True) for i in range(0, 12, 4)]).mean(0)
    assert torch.allclose(model.backbone.norm.running_var, batch_var, atol=1e-6)


def test_batchnorm_recalibration_can_be_switched_off(tmp_path: Path) -> None:
    data = PlainImages(12)
    model = _model()
    model.backbone.norm.running_mean.fill_(100.0)
    frozen_weights = Stage("ft", 1, 0.0, 0.0, 0.0, "step")
    _train(model, data, TrainRecipe("ft", (frozen_weights,), 4, recalibrate_bn=False), tmp_path / "c.pt")
    assert data.fetches == 12  # the training epoch only (3 batches of 4)
    assert model.backbone.norm.running_mean.min() > 50  # momentum 0.1 over 3 steps leaves ~73 % of the stale value


def test_recipe_fingerprint_depends_on_recipe_seed_and_labelled_set() -> None:
    base = recipe_fingerprint(_recipe("ft"), 0, "labels-a")
    assert base == recipe_fingerprint(_recipe("ft"), 0, "labels-a")
    assert base != recipe_fingerprint(_recipe("lpft"), 0, "labels-a")
    assert base != recipe_fingerprint(_recipe("ft"), 1, "labels-a")
    assert base != recipe_fingerprint(_recipe("ft"), 0, "labels-b")


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ft", "lpft"])
def test_a_dataset_of_one_more_than_whole_batches_trains(tmp_path: Path, kind: str) -> None:
    # 9 = 2 * 4 + 1: without the guard the last training batch holds one sample and BatchNorm1d raises
    history = _train(_model(), TinyImages(9), _recipe(kind), tmp_path / "ckpt.pt")
    assert all(np.isfinite(h["loss"]) for h in history)


def test_fewer_than_two_samples_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2"):
        _train(_model(), TinyImages(1), _recipe("ft"), tmp_path / "ckpt.pt")


def test_a_diverging_loss_raises(tmp_path: Path) -> None:
    recipe = TrainRecipe("ft", (Stage("ft", 2, 1e30, 1e30, 0.0, "step"),), 4)
    with pytest.raises(DataError, match="lower the learning rates"):
        _train(_model(), TinyImages(10), recipe, tmp_path / "ckpt.pt")


def test_predict_returns_probabilities_and_features_in_dataset_order(tmp_path: Path) -> None:
    model = _model()
    _train(model, TinyImages(10), _recipe("ft"), tmp_path / "ckpt.pt")
    data = TinyImages(7)
    probs, feats = predict(model, _Unaugmented(data), batch_size=3, device=CPU)
    assert probs.shape == (7, NUM_CLASSES) and probs.dtype == np.float32
    assert feats.shape == (7, TinyBackbone.feature_dim) and feats.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert not model.training
    with torch.no_grad():
        direct = model.backbone(data.images)
        direct_probs = torch.softmax(model.head(direct), 1)
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, direct_probs.numpy(), rtol=1e-5, atol=1e-6)


class _Unaugmented(Dataset):
    def __init__(self, data: TinyImages) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        return self.data.images[position], int(self.data.labels[position]), position


def test_with_several_gpus_a_job_takes_the_one_with_most_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from asvp import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda k: ([2, 9, 5][k] * 2**30, 16 * 2**30))
    assert device.resolve_device("auto") == torch.device("cuda:1") == device.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device.resolve_device("auto") == torch.device("cuda")
    assert device.resolve_device("cpu") == torch.device("cpu")
