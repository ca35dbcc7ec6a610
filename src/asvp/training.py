"""The one training loop: FT, LP-FT and the ASVP feature refresh all run through `train`.

Modelled on torchvision's references/classification/train.py: readable top to bottom, one
epoch function. What it runs, stage by stage, is a recipe (asvp.recipes: FT, LP-FT; SGD or AdamW).
Every epoch ends with an atomic checkpoint, so a killed fine-tune resumes at the next epoch with
the same data order and augmentation draws (each epoch reseeds from (seed, stage, epoch)).
With world_size > 1 the same loop runs data-parallel in that many processes (asvp.distributed:
each global batch split into shards, DDP, synchronised BatchNorm), to the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
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
from asvp.errors import DataError
from asvp.precision import autocast_dtype, inference_autocast
from asvp.probe import fit_linear_probe
from asvp.recipes import Stage, TrainRecipe, lr_factor, plan_stage

PREDICT_BATCH_SIZE = 512  # images per forward pass for test accuracy and full-model pool scoring (paper appendix A)


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
