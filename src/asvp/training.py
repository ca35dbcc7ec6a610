"""The one training loop: FT, LP-FT and the ASVP feature refresh all run through `train`.

Modelled on torchvision's references/classification/train.py: readable top to bottom, one
epoch function, SGD with momentum. A recipe is a list of stages:
  FT    = [ft]        backbone lr + head lr, step decay x0.1 at the milestones (official code)
  LP-FT = [lp, ft]    lp: backbone frozen in eval mode, head trained with per-step cosine (7/16),
                      then ft carries the head over (Kumar et al. 2022; paper appendix A)
The ft stage of a backbone built of attention blocks (ViT, Swin, DINOv2) runs AdamW with a linear
warm-up and a cosine decay to zero instead (finetune.optimizer: auto), the recipe such backbones
are pre-trained and fine-tuned with (DeiT, DINOv2).
Every epoch ends with an atomic checkpoint, so a killed fine-tune resumes at the next epoch with
the same data order and augmentation draws (each epoch reseeds from (seed, stage, epoch)).
With world_size > 1 the same loop runs data-parallel in that many processes (asvp.distributed:
each global batch split into shards, DDP, synchronised BatchNorm), to the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp import distributed
from asvp.atomic import atomic_path
from asvp.backbones import memory_format
from asvp.batching import batch_positions, epoch_seed, iterate_batches, recalibrate_batchnorm
from asvp.crash import crash_point
from asvp.errors import ConfigError, DataError
from asvp.precision import autocast_dtype, inference_autocast
from asvp.probe import PROBE_DECAY_GRID, fit_linear_probe


# Fixed parts of every recipe, not config keys: no recipe the paper reports changes them.
SGD_MOMENTUM = 0.9  # paper appendix A (FT, LP-FT and the proxy) and the official code
SGD_NESTEROV = True  # the official code's SGD, where it cannot be switched off
# After FT and LP-FT, recompute BatchNorm statistics on the labelled set (one forward pass): with
# few steps the running averages still mix in pre-training statistics (on the default, LP-FT at
# 100 labels went from 0.12-0.22 to 0.63 test accuracy).
RECALIBRATE_BN = True
PREDICT_BATCH_SIZE = 512  # images per forward pass for test accuracy and full-model pool scoring (paper appendix A)
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


def recipe_from_config(kind: str, config: dict[str, Any]) -> TrainRecipe:
    """Build the FT or LP-FT recipe from the validated workflow config.

    FT is one stage of `finetune.epochs`. LP-FT is the same schedule whose first `lpft.lp_epochs`
    epochs train the head alone (the linear probe), so LP + FT epochs = finetune.epochs as the
    paper keeps them (appendix A). Its FT stage is FT's: the same optimizer, batch, learning
    rates, weight decay and warm-up, the milestones at the same epochs of the whole schedule, and
    its share of the `min_steps` floor (the floor stretches every schedule epoch alike).
    """
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


class Classifier(nn.Module):
    """A backbone that outputs pooled features (B, D) plus a linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.feature_dim), num_classes)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def _optimizer(model: Classifier, stage: Stage, recipe: TrainRecipe) -> torch.optim.Optimizer:
    parts = [(model.head, stage.lr_head)]
    if stage.lr_backbone is not None:
        parts.insert(0, (model.backbone, stage.lr_backbone))
    if stage.optimizer == "adamw":
        # No decay on biases, norms and embeddings (one-dimensional parameters), as timm and DeiT.
        groups = [{"params": [p for p in part.parameters() if (p.ndim > 1) == decayed], "lr": lr,
                   "weight_decay": stage.weight_decay if decayed else 0.0}
                  for part, lr in parts for decayed in (True, False)]
        return torch.optim.AdamW([g for g in groups if g["params"]])
    groups = [{"params": part.parameters(), "lr": lr} for part, lr in parts]
    return torch.optim.SGD(groups, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=stage.weight_decay)


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


def first_epoch_of(state: dict[str, Any] | None, stage_index: int, start_stage: int, start_epoch: int) -> int:
    """The epoch a stage starts at: mid-stage after a resume, else 0."""
    return start_epoch if state is not None and stage_index == start_stage else 0


def _set_trainable(model: Classifier, stage: Stage) -> None:
    frozen = stage.lr_backbone is None
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)
    model.train()
    if frozen:
        model.backbone.eval()  # linear probe: BatchNorm statistics stay those of the backbone


def _train_steps(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    shards: distributed.Shards | None = None,
) -> tuple[float, float]:
    """Run the given batches; return the mean loss and the (augmented) training accuracy.

    With `shards` (a data-parallel rank; `model` is then its DDP wrapper) each global batch is cut
    to this rank's shard, and loss and accuracy are summed over the ranks: those of the global batch.
    """
    loss_fn = nn.CrossEntropyLoss()
    total, correct, count = 0.0, 0, 0
    for images, labels in batches:
        weight = 1.0
        if shards is not None:
            weight = shards.loss_weight(len(labels))
            images, labels = shards.shard(images), shards.shard(labels)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=memory_format(model))
        optimizer.zero_grad(set_to_none=True)
        with inference_autocast(device):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        scaler.scale(loss if weight == 1.0 else loss * weight).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += float(loss.detach()) * len(labels)
        correct += int((logits.detach().argmax(1) == labels).sum())
        count += len(labels)
    if shards is not None:
        total, correct, count = shards.sum(total, correct, count)
    return total / max(count, 1), correct / max(count, 1)


def train(
    model: Classifier,
    dataset: Dataset,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    checkpoint: str | Path,
    fingerprint: str,
    num_workers: int = 0,
    checkpoint_seconds: float = 0.0,
    log: Callable[[str], None] = print,
    world_size: int = 1,
) -> list[dict[str, Any]]:
    """Train `model` in place through every stage of `recipe`; return the per-epoch history.

    Each history entry is one schedule epoch: {"stage", "epoch", "steps", "loss", "train_accuracy"}.
    `checkpoint` is rewritten at the end of an epoch once `checkpoint_seconds` have passed since
    the last write (0: every epoch); if it exists with the same `fingerprint` (recipe, seed,
    labelled set), training resumes from it, bit for bit as if never interrupted: each epoch
    reseeds augmentation from (seed, stage, epoch) and its batches come from seeded permutations.

    world_size > 1 trains data-parallel in that many processes (one GPU each on CUDA, gloo on
    the CPU) to the same result up to float rounding, and copies the weights back into `model`.
    The batch size must divide by world_size; `dataset` and `log` are sent to the processes and
    must pickle. Checkpoints are the single-process ones: either kind resumes the other's.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise DataError(f"fine-tuning needs at least 2 labelled images, got {n}; raise schedule.budgets[0]")
    distributed.require_world_size(world_size)
    if world_size > 1:
        return _train_distributed(model, dataset, recipe, world_size, device, dict(
            seed=seed, checkpoint=checkpoint, fingerprint=fingerprint, num_workers=num_workers,
            checkpoint_seconds=checkpoint_seconds, log=log))
    return _train_loop(model, dataset, recipe, seed=seed, device=device, checkpoint=checkpoint, fingerprint=fingerprint,
                       num_workers=num_workers, checkpoint_seconds=checkpoint_seconds, log=log)


def _train_distributed(model: Classifier, dataset: Dataset, recipe: TrainRecipe, world_size: int,
                       device: torch.device, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the split, run `_train_rank` in `world_size` processes, load rank 0's weights into `model`."""
    distributed.require_shardable(recipe.batch_size, len(dataset), world_size)  # type: ignore[arg-type]
    backend = distributed.backend_for(device, world_size)
    history, state = distributed.launch(_train_rank, world_size, model, dataset, recipe, options, backend=backend)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=memory_format(model))
    model.load_state_dict(state)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.eval()
    return history


def _train_rank(rank: int, world_size: int, model: Classifier, dataset: Dataset, recipe: TrainRecipe,
                options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]] | None:
    """One rank of a data-parallel fine-tune; rank 0 returns the history and the trained weights."""
    device = distributed.local_device()
    shards = distributed.Shards(rank, world_size, device)
    history = _train_loop(model, dataset, recipe, device=device, shards=shards, **options)
    if rank != 0:
        return None
    return history, {key: value.cpu() for key, value in model.state_dict().items()}


def _quiet(_: str) -> None:
    """The log of ranks other than 0: one log line per epoch, not one per process."""


def _train_loop(
    model: Classifier,
    dataset: Dataset,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    checkpoint: str | Path,
    fingerprint: str,
    num_workers: int = 0,
    checkpoint_seconds: float = 0.0,
    log: Callable[[str], None] = print,
    shards: distributed.Shards | None = None,
) -> list[dict[str, Any]]:
    """The loop of `train`; with `shards`, one rank of a data-parallel run (rank 0 logs and writes)."""
    n = len(dataset)  # type: ignore[arg-type]
    checkpoint = Path(checkpoint)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=memory_format(model))
    writer = shards is None or shards.main
    if shards is not None:
        distributed.sync_batchnorm(model, device)
        log = log if writer else _quiet
    shard = shards.shard if shards is not None else None
    history: list[dict[str, Any]] = []
    start_stage, start_epoch, state = 0, 0, None
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            start_stage, start_epoch, history = state["stage_index"], state["epoch"], state["history"]
            log(f"resuming from {checkpoint}: stage {start_stage}, epoch {start_epoch}")
        else:
            log(f"ignoring {checkpoint}: it was written for other settings")
            state = None
    last_write = time.monotonic()
    for stage_index, stage in enumerate(recipe.stages):
        if stage_index < start_stage:
            continue
        plan = plan_stage(stage, n, recipe.batch_size)
        if stage.lr_backbone is None and first_epoch_of(state, stage_index, start_stage, start_epoch) == 0 and any(
            later.lr_backbone is not None for later in recipe.stages[stage_index + 1 :]
        ):
            # LP before FT: fit the head to the features FT will start from. FT runs BatchNorm on
            # batch statistics of the new data; LP on the pre-training statistics fits a head to
            # other features, and FT's first epoch then starts at a loss far above LP's end
            # (default, 400 labels: LP 0.85 -> FT epoch 1 6.68).
            recalibrate_batchnorm(model, dataset, recipe.batch_size, seed=seed, device=device, num_workers=num_workers,
                                  shard=shard)
        _set_trainable(model, stage)
        optimizer = _optimizer(model, stage, recipe)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step, s=stage, p=plan: lr_factor(s, p, step))
        scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device) == torch.float16)
        first_epoch = 0
        # Optimizer state is restored only mid-stage: LP and FT optimise different parameter groups.
        if state is not None and stage_index == start_stage and start_epoch > 0:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            first_epoch = start_epoch
        if stage.schedule == "lbfgs":
            history = [h for h in history if h["stage"] != stage.name]  # a resumed probe is refitted whole
            history += fit_linear_probe(model, dataset, stage, recipe.batch_size, seed=seed, device=device,
                                        num_workers=num_workers, log=log)
            if writer:  # every rank fits the same probe; one writes it
                _save_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler, history, stage_index + 1, 0)
            state = None
            continue
        net = shards.wrap(model) if shards is not None else model
        log(f"{stage.name}: {plan.steps} {stage.optimizer} steps of {plan.batch} images over {stage.epochs} epochs ({n} labelled)")
        for epoch in range(first_epoch, stage.epochs):
            first, last = plan.epoch_starts[epoch], plan.epoch_starts[epoch + 1]
            this_seed = epoch_seed(seed, stage_index, epoch)
            torch.manual_seed(this_seed)
            positions = batch_positions(n, plan.batch, first, last, seed, stage_index) if last > first else np.zeros((0, plan.batch), np.int64)
            loss, accuracy = _train_steps(
                net, iterate_batches(dataset, positions, num_workers, device, this_seed), optimizer, scheduler, scaler, device,
                shards,
            )
            if not math.isfinite(loss):
                raise DataError(
                    f"training loss became {loss} in stage {stage.name}, epoch {epoch + 1}; lower the learning rates"
                )
            history.append({"stage": stage.name, "epoch": epoch + 1, "steps": last - first, "loss": loss, "train_accuracy": accuracy})
            log(f"{stage.name} epoch {epoch + 1}/{stage.epochs} ({last - first} steps) loss {loss:.4f} train acc {accuracy:.3f}")
            stage_done = epoch + 1 == stage.epochs
            if writer and (stage_done or time.monotonic() - last_write >= checkpoint_seconds):
                _save_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler, history,
                                 stage_index + 1 if stage_done else stage_index, 0 if stage_done else epoch + 1)
                last_write = time.monotonic()
                crash_point("finetune_checkpoint")
        state = None
        net = None  # a stage's DDP hooks go with it: the next stage trains other parameters
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if recipe.recalibrate_bn and any(stage.lr_backbone is not None for stage in recipe.stages):
        recalibrate_batchnorm(model, dataset, recipe.batch_size, seed=seed, device=device, num_workers=num_workers,
                              shard=shard)
    model.eval()
    return history


def _save_checkpoint(path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, history: list[dict[str, Any]],
                     stage_index: int, epoch: int) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "fingerprint": fingerprint,
                "stage_index": stage_index,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
            },
            tmp,
        )


@torch.inference_mode()
def predict(
    model: Classifier, dataset: Dataset, *, batch_size: int, device: torch.device, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, C) float32 and backbone features (N, D) float32, in dataset order.

    channels_last for CNNs (as extraction): at 32 px it roughly doubles CPU inference; autocast on CUDA.
    """
    model.to(device).eval().to(memory_format=memory_format(model))
    n = len(dataset)  # type: ignore[arg-type]
    rows = [np.arange(start, min(start + batch_size, n), dtype=np.int64) for start in range(0, n, batch_size)]
    probs, feats = [], []
    for images, _ in iterate_batches(dataset, rows, num_workers, device, seed=0):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format(model))
        with inference_autocast(device):
            features = model.backbone(images)
            logits = model.head(features)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        feats.append(features.float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats)


def classifier_from(payload: dict[str, Any]) -> Classifier:
    """Rebuild a fine-tuned model from a saved payload (arch, num_classes, state_dict)."""
    from asvp.backbones import build_backbone

    model = Classifier(build_backbone(payload["arch"], None), payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def recipe_fingerprint(recipe: TrainRecipe, seed: int, extra: str) -> str:
    return repr((recipe_identity(recipe), seed, extra))
