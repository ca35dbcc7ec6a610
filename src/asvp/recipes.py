"""Training recipes: what FT, LP-FT and the refresh's fine-tune run, built from the config.

A recipe is a list of stages run by the one training loop (asvp.training):
  FT    = [ft]        backbone lr + head lr, step decay x0.1 at the milestones (official code)
  LP-FT = [lp, ft]    lp: backbone frozen in eval mode, head fitted by L-BFGS (or SGD with a
                      per-step cosine, 7/16), then ft carries the head over (Kumar et al. 2022;
                      paper appendix A)
The ft stage of a backbone built of attention blocks (ViT, Swin, DINOv2) runs AdamW with a linear
warm-up and a cosine decay to zero instead (finetune.optimizer: auto), the recipe such backbones
are pre-trained and fine-tuned with (DeiT, DINOv2). A recipe's identity (`recipe_identity`) keys
the fine-tune cache and the checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from asvp.errors import ConfigError
from asvp.probe import PROBE_DECAY_GRID


# Fixed parts of every recipe, not config keys: no recipe the paper reports changes them.
SGD_MOMENTUM = 0.9  # paper appendix A (FT, LP-FT and the proxy) and the official code
SGD_NESTEROV = True  # the official code's SGD, where it cannot be switched off
# After FT and LP-FT, recompute BatchNorm statistics on the labelled set (one forward pass): with
# few steps the running averages still mix in pre-training statistics (on the default, LP-FT at
# 100 labels went from 0.12-0.22 to 0.63 test accuracy).
RECALIBRATE_BN = True
# AdamW's warm-up: this share of the stage's steps, so it means the same at 40 and at 4,000 steps
# (DeiT warms up 5 of 300 epochs, DINOv2's fine-tunes about a tenth).
ADAMW_WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class Stage:
    name: str  # "lp" or "ft"
    epochs: int
    lr_backbone: float | None  # None freezes the backbone (linear probe)
    lr_head: float
    weight_decay: float
    schedule: str = "step"  # "step": x0.1 at the milestone epochs; "cosine": 7/16 of a cycle over all steps
    milestones: tuple[int, ...] = ()
    # Floor on optimizer steps. `epochs` passes over 100 labels at batch 128 are 20 steps: too few to
    # fine-tune anything. With a floor, each "epoch" of the schedule is stretched to steps/epochs
    # steps, so milestones keep their place; recipes whose floor does not bind are the paper's.
    min_steps: int = 0
    warmup_steps: int = 0  # linear lr warm-up over the first steps of the stage
    # L-BFGS probe only: when given, cross-validation on the labelled set picks the L2 strength
    # from these values (asvp.probe.choose_probe_decay) and weight_decay is not used.
    weight_decay_grid: tuple[float, ...] = ()
    # "sgd" (momentum, Nesterov; any schedule) or "adamw" (schedule "warmup_cosine"; decoupled
    # weight decay, none on biases and norms)
    optimizer: str = "sgd"


@dataclass(frozen=True)
class TrainRecipe:
    kind: str  # "ft" or "lpft"
    stages: tuple[Stage, ...]
    batch_size: int
    momentum: float = SGD_MOMENTUM
    nesterov: bool = SGD_NESTEROV
    recalibrate_bn: bool = RECALIBRATE_BN  # recompute BatchNorm statistics on the training set at the end


@dataclass(frozen=True)
class StagePlan:
    """How a stage is laid out in optimizer steps for a training set of `n` images."""

    batch: int  # every batch holds exactly this many images (a short last batch breaks BatchNorm)
    steps: int
    epoch_starts: tuple[int, ...]  # step at which each schedule epoch starts, plus the total at the end


def plan_stage(stage: Stage, n: int, batch_size: int) -> StagePlan:
    """Steps of a stage: `epochs` passes over the data, at least `min_steps`, full batches only.

    An epoch is n / batch steps, not ceil(n / batch): with full batches the rounded-up count
    would see 384 images per "epoch" of 300 (28 % more compute than the recipe says).
    """
    batch = min(batch_size, n)
    steps = max(stage.min_steps, math.ceil(stage.epochs * n / batch), 1)
    starts = tuple(round(k * steps / stage.epochs) for k in range(stage.epochs + 1))
    return StagePlan(batch, steps, starts)


def optimizer_of(config: dict[str, Any]) -> str:
    """finetune.optimizer, `auto` resolved: AdamW for a backbone of attention blocks, else SGD."""
    chosen = config["finetune"]["optimizer"]
    if chosen != "auto":
        return chosen
    from asvp.backbones import uses_attention

    return "adamw" if uses_attention(config["backbone"]["arch"]) else "sgd"


def _ft_stage(config: dict[str, Any], epochs: int, skipped_epochs: int) -> Stage:
    """The fine-tuning stage: `epochs` of the schedule after its first `skipped_epochs` (LP-FT's
    probe), with their share of the step floor and the milestones that fall in them."""
    ft = config["finetune"]
    floor = ft["min_steps"] if epochs == ft["epochs"] else math.ceil(ft["min_steps"] / ft["epochs"] * epochs)
    if optimizer_of(config) == "adamw":
        adamw = ft["adamw"]
        return Stage("ft", epochs, adamw["lr_backbone"], adamw["lr_head"], adamw["weight_decay"], "warmup_cosine",
                     (), floor, optimizer="adamw")
    return Stage("ft", epochs, ft["lr_backbone"], ft["lr_head"], ft["weight_decay"], "step",
                 tuple(m - skipped_epochs for m in ft["milestones"]), floor, ft["warmup_steps"])


# Weights that were never trained need far more steps than pre-trained ones to fit the same
# labels: on 1,000 Fashion-MNIST labels at 32 px, randomly initialised MobileNetV2 reached train
# accuracy 0.79 in the schema's 30 epochs, 0.84 in 60 and 0.92 in 120; ResNet-50 0.80, 0.88 and
# 0.95 (BENCHMARKS.md). Such a backbone gets this many times the configured epochs,
# milestones included, so that a user who names only data and backbone gets a fine-tune that fits.
UNTRAINED_EPOCH_FACTOR = 4


def _longer_schedule(config: dict[str, Any], factor: int) -> dict[str, Any]:
    ft = config["finetune"]
    return {**config, "finetune": {**ft, "epochs": ft["epochs"] * factor,
                                   "milestones": [m * factor for m in ft["milestones"]]}}


def recipe_from_config(kind: str, config: dict[str, Any], *, untrained: bool = False) -> TrainRecipe:
    """Build the FT or LP-FT recipe from the validated workflow config; `untrained`: the backbone's
    weights were never trained (asvp.checkpoints.never_trained), so the schedule is longer.

    FT is one stage of `finetune.epochs`. LP-FT is the same schedule whose first `lpft.lp_epochs`
    epochs train the head alone (the linear probe), so LP + FT epochs = finetune.epochs as the
    paper keeps them (appendix A). Its FT stage is FT's: the same optimizer, batch, learning
    rates, weight decay and warm-up, the milestones at the same epochs of the whole schedule, and
    its share of the `min_steps` floor (the floor stretches every schedule epoch alike).
    """
    if untrained:
        config = _longer_schedule(config, UNTRAINED_EPOCH_FACTOR)
    ft = config["finetune"]
    epochs = ft["epochs"]
    if kind == "ft":
        return TrainRecipe("ft", (_ft_stage(config, epochs, 0),), ft["batch_size"])
    if kind == "lpft":
        lp = config["lpft"]
        lp_epochs = lp["lp_epochs"]
        ft_epochs = epochs - lp_epochs  # validation checks it for configs whose methods use LP-FT
        if ft_epochs < 1:
            raise ConfigError(f"lpft.lp_epochs ({lp_epochs}) leaves no FT epochs of finetune.epochs ({epochs}); "
                              "lower lpft.lp_epochs or raise finetune.epochs")
        by_cv = lp["lp_weight_decay"] == "cv"
        if by_cv and lp["lp_solver"] != "lbfgs":
            raise ConfigError("lpft.lp_weight_decay: cv cross-validates the L-BFGS probe; with lpft.lp_solver: sgd "
                              "give lpft.lp_weight_decay a number (e.g. 0.0001)")
        probe = Stage("lp", lp_epochs, None, lp["lp_lr"], 0.0 if by_cv else lp["lp_weight_decay"],
                      "lbfgs" if lp["lp_solver"] == "lbfgs" else "cosine", (),
                      math.ceil(ft["min_steps"] / epochs * lp_epochs), weight_decay_grid=PROBE_DECAY_GRID if by_cv else ())
        return TrainRecipe("lpft", (probe, _ft_stage(config, ft_epochs, lp_epochs)), ft["batch_size"])
    raise ValueError(f"unknown training recipe '{kind}' (use 'ft' or 'lpft')")


# Stage fields added after fine-tunes were cached, and the value that trains as before they
# existed: left out of a recipe's identity at that value, so old cache keys stay valid.
_NEUTRAL_STAGE_FIELDS = {"optimizer": "sgd"}


def recipe_identity(recipe: TrainRecipe) -> dict[str, Any]:
    """The recipe as a dict for cache keys and checkpoint fingerprints, neutral new fields left out."""
    identity = asdict(recipe)
    for stage in identity["stages"]:
        for field, neutral in _NEUTRAL_STAGE_FIELDS.items():
            if stage[field] == neutral:
                del stage[field]
    return identity


def recipe_fingerprint(recipe: TrainRecipe, seed: int, extra: str) -> str:
    """A checkpoint's fingerprint: resume only a fine-tune of the same recipe, seed and labelled set."""
    return repr((recipe_identity(recipe), seed, extra))


def lr_factor(stage: Stage, plan: StagePlan, step: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of the stage."""
    if stage.schedule == "warmup_cosine":
        warm = max(1, math.ceil(ADAMW_WARMUP_SHARE * plan.steps))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, plan.steps - warm)))
    warmup = min(1.0, (step + 1) / stage.warmup_steps) if stage.warmup_steps else 1.0
    if stage.schedule == "cosine":
        return warmup * max(0.0, math.cos(math.pi * 7 / 16 * step / plan.steps))
    passed = sum(1 for m in stage.milestones if m < len(plan.epoch_starts) and plan.epoch_starts[m] <= step)
    return warmup * 0.1**passed
