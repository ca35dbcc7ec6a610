"""The MLP proxy of SVPp/ASVP, trained on pre-computed features (paper sec. 3.1 and 6.1).

Architecture: Linear(d, d) -> BatchNorm1d(d) -> ReLU -> Linear(d, C), hidden width = feature
dimension, re-initialised every round. Training follows the official code: SGD with momentum
0.9 and Nesterov, per-step cosine decay over 7/16 of a cycle (the lr ends at cos(7*pi/16) ~ 0.195
of its base, not 0), plain cross-entropy on raw (unnormalised) features.

The paper's schedule is one such cycle of `epochs` passes. Up to a few thousand labels (one batch)
that is 50 full-batch steps, which leave a margin-selected set underfit (train loss 0.46 at 1,000
labels, 0.69 at 2,000), so the cycle is repeated from the base lr until the last pass's mean loss
is below `target_loss` (or `max_cycles` are spent); a set the first cycle fits trains the paper's
recipe exactly. The final loss and the cycles are saved with the weights (`training_record`).

Two bugs of the official code are avoided: a final batch of exactly one sample (BatchNorm in
train mode raises on it) is merged into the previous batch, and every random choice is seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from asvp.errors import DataError, require_finite_rows
from asvp.proxy_scoring import TRAINING_PREFIX


@dataclass(frozen=True)
class ProxyRecipe:
    """Proxy training hyper-parameters; defaults are the paper's appendix A values, repeated to convergence."""

    epochs: int = 50
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    batch_size: int = 2048
    target_loss: float = 0.1  # repeat the cosine cycle while the last pass's mean loss is above this
    max_cycles: int = 10  # 1: the paper's single cycle, whatever the loss

    @classmethod
    def from_config(cls, proxy_config: dict[str, Any]) -> ProxyRecipe:
        """The `proxy` config section's recipe (epochs, lr, weight_decay, batch_size, target_loss,
        max_cycles). Momentum 0.9 with Nesterov (paper appendix A; the official code's SGD) are
        fixed: this class's defaults, not config keys (the scoring batch is
        proxy_scoring.INFERENCE_BATCH_SIZE)."""
        return cls(**{key: proxy_config[key] for key in ("epochs", "lr", "weight_decay", "batch_size", "target_loss", "max_cycles")
                     if key in proxy_config})


class ProxyMLP(nn.Module):
    """Linear + BatchNorm + ReLU + Linear; `embed` gives the post-ReLU hidden layer."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fit_record: dict[str, float] = {}  # how training ended (train_proxy fills it; saved with the weights)
        self.hidden = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.hidden(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(features))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled mini-batches; a trailing batch of one is merged so BatchNorm never sees size 1."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        # Pop first, then extend the new last batch: `batches[-2] = cat([batches[-2], batches.pop()])`
        # evaluates the pop before the assignment target, overwriting the wrong batch and
        # dropping a whole batch of samples from every epoch.
        last = batches.pop()
        batches[-1] = torch.cat([batches[-1], last])
    return batches


def train_proxy(
    features: np.ndarray, labels: np.ndarray, num_classes: int, recipe: ProxyRecipe, seed: int
) -> ProxyMLP:
    """Train a fresh proxy on labelled features.

    features: (N, D) float array of the labelled samples; labels: (N,) int64 in [0, num_classes).
    """
    if len(features) < 2:
        raise DataError(f"the proxy needs at least 2 labelled samples, got {len(features)}; raise schedule.budgets[0]")
    require_finite_rows(features, "labelled features", "re-extract the features (delete the file and rerun)")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    model = ProxyMLP(x.shape[1], num_classes)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    steps_per_epoch = len(_batches(len(x), recipe.batch_size, torch.Generator().manual_seed(0)))
    cycle_steps = recipe.epochs * steps_per_epoch
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    cycles, last_epoch_loss = 0, math.inf
    while cycles < max(1, recipe.max_cycles) and (cycles == 0 or last_epoch_loss > recipe.target_loss):
        cycles += 1
        # Official code: LambdaLR factor max(0, cos(pi * 7/16 * step / total)), stepped per
        # iteration; a new scheduler starts each further cycle again from the base lr.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, math.cos(math.pi * 7 / 16 * step / cycle_steps))
        )
        for _ in range(recipe.epochs):
            total, count = 0.0, 0
            for batch in _batches(len(x), recipe.batch_size, generator):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
                scheduler.step()
                total, count = total + float(loss.detach()) * len(batch), count + len(batch)
            last_epoch_loss = total / count
        if not math.isfinite(last_epoch_loss):
            raise DataError(f"proxy training loss became {last_epoch_loss}; lower proxy.lr")
    model.fit_record = {"final_train_loss": last_epoch_loss, "cycles": float(cycles), "steps": float(cycles * cycle_steps)}
    model.eval()
    return model


def save_weights(model: ProxyMLP, path: str | Path) -> None:
    """The weights as plain arrays (proxy.npz), for the torch-free scoring job (`proxy_scoring`),
    with how training ended (training_final_train_loss, training_cycles, training_steps)."""
    from asvp.atomic import atomic_path

    linear, norm = model.hidden[0], model.hidden[1]
    arrays = {
        "hidden_weight": linear.weight, "hidden_bias": linear.bias,
        "bn_weight": norm.weight, "bn_bias": norm.bias,
        "bn_running_mean": norm.running_mean, "bn_running_var": norm.running_var,
        "classifier_weight": model.classifier.weight, "classifier_bias": model.classifier.bias,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz"
        np.savez(handle, **{name: value.detach().float().cpu().numpy() for name, value in arrays.items()},
                 **{TRAINING_PREFIX + key: np.float64(value) for key, value in model.fit_record.items()})


def training_record(path: str | Path) -> dict[str, float]:
    """How a saved proxy's training ended: {'final_train_loss', 'cycles', 'steps'} ({} for a
    proxy.npz written before they were recorded)."""
    with np.load(path) as archive:
        return {name.removeprefix(TRAINING_PREFIX): float(archive[name]) for name in archive.files
                if name.startswith(TRAINING_PREFIX)}
