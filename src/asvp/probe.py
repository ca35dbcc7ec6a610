"""LP-FT's linear probe: L2-regularised logistic regression on frozen features, by L-BFGS."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp.batching import epoch_seed, iterate_batches
from asvp.errors import DataError
from asvp.precision import inference_autocast


LBFGS_ITERATIONS_PER_EPOCH = 25


def fit_linear_probe(
    model: nn.Module,
    dataset: Dataset,
    stage: Any,
    batch_size: int,
    *,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """LP as L2-regularised logistic regression on frozen features, solved with L-BFGS.

    Kumar et al. (2022) fit LP-FT's probe this way. Unlike SGD at a fixed lr (the official code:
    lr 0.5), it converges whatever the scale of the backbone's features: at lr 0.5 the probe
    diverged on the default once BatchNorm was recalibrated (loss 2.6 -> 72 in 5 epochs) and on
    a MoCo-style ResNet-18 (4.2 -> 208). `stage.weight_decay` is the L2 strength; it keeps the
    head FT inherits from growing without bound on separable data (a few hundred labels in 1280
    dimensions always are). One forward pass; each "epoch" is 25 L-BFGS iterations.
    """
    torch.manual_seed(epoch_seed(seed, 98, 0))
    n = len(dataset)  # type: ignore[arg-type]
    rows = np.array_split(np.arange(n, dtype=np.int64), math.ceil(n / min(batch_size, n)))
    model.backbone.eval()
    features, labels = [], []
    with torch.no_grad():
        for images, batch_labels in iterate_batches(dataset, rows, num_workers, device, seed):
            with inference_autocast(device):
                features.append(model.backbone(images.to(device)).float())
            labels.append(batch_labels.to(device))
    x, y = torch.cat(features), torch.cat(labels)
    head = model.head
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=LBFGS_ITERATIONS_PER_EPOCH,
                                  history_size=20, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss()

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(head(x), y) + 0.5 * stage.weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    history = []
    for epoch in range(stage.epochs):
        optimizer.step(objective)
        with torch.no_grad():
            logits = head(x)
            cross_entropy = float(loss_fn(logits, y))
            # The loss is the objective L-BFGS minimises (with the L2 term), so the divergence
            # guard compares like with like: the cross-entropy alone may rise as the L2 term falls.
            loss = cross_entropy + 0.5 * stage.weight_decay * float(head.weight.pow(2).sum())
            accuracy = float((logits.argmax(1) == y).float().mean())
        if not math.isfinite(loss):
            raise DataError(f"linear probe loss became {loss}; raise lpft.lp_weight_decay")
        history.append({"stage": stage.name, "epoch": epoch + 1, "steps": LBFGS_ITERATIONS_PER_EPOCH, "loss": loss,
                        "cross_entropy": cross_entropy, "train_accuracy": accuracy})
        log(f"{stage.name} epoch {epoch + 1}/{stage.epochs} (L-BFGS) loss {loss:.4f} train acc {accuracy:.3f}")
    return history
