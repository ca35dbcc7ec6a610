"""The MLP proxy of SVPp/ASVP, trained on pre-computed features (paper sec. 3.1 and 6.1).

Architecture: Linear(d, d) -> BatchNorm1d(d) -> ReLU -> Linear(d, C), hidden width = feature
dimension, re-initialised every round. Training follows the official code: SGD with momentum
0.9 and Nesterov, per-step cosine decay over 7/16 of a cycle (the lr ends at cos(7*pi/16) ~ 0.195
of its base, not 0), plain cross-entropy on raw (unnormalised) features.

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


@dataclass(frozen=True)
class ProxyRecipe:
    """Proxy training hyper-parameters; defaults are the paper's appendix A values."""

    epochs: int = 50
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    batch_size: int = 2048

    @classmethod
    def from_config(cls, proxy_config: dict[str, Any]) -> ProxyRecipe:
        """The `proxy` config section's recipe (epochs, lr, weight_decay, batch_size). Momentum 0.9 with
        Nesterov (paper appendix A; the official code's SGD) are fixed: this class's defaults, not
        config keys (the scoring batch is proxy_scoring.INFERENCE_BATCH_SIZE)."""
        return cls(**{key: proxy_config[key] for key in ("epochs", "lr", "weight_decay", "batch_size") if key in proxy_config})


class ProxyMLP(nn.Module):
    """Linear + BatchNorm + ReLU + Linear; `embed` gives the post-ReLU hidden layer."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
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
    total_steps = recipe.epochs * steps_per_epoch
    # Official code: LambdaLR factor max(0, cos(pi * 7/16 * step / total)), stepped per iteration.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, math.cos(math.pi * 7 / 16 * step / total_steps))
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(recipe.epochs):
        for batch in _batches(len(x), recipe.batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return model


def save_weights(model: ProxyMLP, path: str | Path) -> None:
    """The weights as plain arrays (proxy.npz), for the torch-free scoring job (`proxy_scoring`)."""
    from asvp.atomic import atomic_path

    linear, norm = model.hidden[0], model.hidden[1]
    arrays = {
        "hidden_weight": linear.weight, "hidden_bias": linear.bias,
        "bn_weight": norm.weight, "bn_bias": norm.bias,
        "bn_running_mean": norm.running_mean, "bn_running_var": norm.running_var,
        "classifier_weight": model.classifier.weight, "classifier_bias": model.classifier.bias,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz"
        np.savez(handle, **{name: value.detach().float().cpu().numpy() for name, value in arrays.items()})
