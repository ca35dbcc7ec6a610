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
# lpft.lp_weight_decay: cv picks the probe's L2 strength from this grid by k-fold cross-validation
# on the labelled set. No single value suits every labelled-set size: on the default at 400 labels
# 0.1 gave LP-FT 0.690 test accuracy and 1e-3 gave 0.720, and a probe worse than FT's own head
# makes LP-FT lose to FT for a reason the paper's comparison (sec. 4.3) does not intend.
PROBE_DECAY_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
CV_FOLDS = 5
CV_ITERATIONS = 100  # L-BFGS iterations per fold and grid value (a convex problem: converged well before)


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
    decay = stage.weight_decay
    if stage.weight_decay_grid:
        decay, scores = choose_probe_decay(x, y, head.out_features, stage.weight_decay_grid, seed)
        log(f"{stage.name}: L2 {decay:g} by {fold_count(y.cpu().numpy())}-fold cross-validation "
            f"(validation cross-entropy {', '.join(f'{d:g}: {v:.3f}' for d, v in scores.items())})")
    optimizer = _lbfgs(head, LBFGS_ITERATIONS_PER_EPOCH)
    objective = _penalised_objective(optimizer, head, x, y, decay)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(stage.epochs):
        optimizer.step(objective)
        with torch.no_grad():
            logits = head(x)
            cross_entropy = float(loss_fn(logits, y))
            # The loss is the objective L-BFGS minimises (with the L2 term), so the divergence
            # guard compares like with like: the cross-entropy alone may rise as the L2 term falls.
            loss = cross_entropy + 0.5 * decay * float(head.weight.pow(2).sum())
            accuracy = float((logits.argmax(1) == y).float().mean())
        if not math.isfinite(loss):
            raise DataError(f"linear probe loss became {loss}; raise lpft.lp_weight_decay (or set it to cv)")
        history.append({"stage": stage.name, "epoch": epoch + 1, "steps": LBFGS_ITERATIONS_PER_EPOCH, "loss": loss,
                        "cross_entropy": cross_entropy, "train_accuracy": accuracy, "weight_decay": decay})
        log(f"{stage.name} epoch {epoch + 1}/{stage.epochs} (L-BFGS) loss {loss:.4f} train acc {accuracy:.3f}")
    return history


def fold_count(labels: np.ndarray) -> int:
    """k of the cross-validation: 5, fewer when the smallest class has fewer images (each fold then
    holds at least one image of every class), and at least 2."""
    counts = np.bincount(labels)
    return max(2, min(CV_FOLDS, int(counts[counts > 0].min())))


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold of every row: each class's rows, in a seeded order, dealt to the folds in turn, so
    every fold has the class mix of the whole set and the same seed gives the same folds."""
    generator = np.random.default_rng([seed, 97])
    folds = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        folds[rows[generator.permutation(len(rows))]] = np.arange(len(rows)) % k
    return folds


def fit_logistic_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, decay: float,
                      iterations: int = CV_ITERATIONS) -> nn.Linear:
    """L2-regularised multinomial logistic regression from a zero start (the problem is convex, so
    the start only sets how deterministic it is: zero is the same everywhere)."""
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    optimizer = _lbfgs(head, iterations)
    optimizer.step(_penalised_objective(optimizer, head, x, y, decay))
    return head


def _lbfgs(head: nn.Linear, iterations: int) -> torch.optim.LBFGS:
    return torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                             line_search_fn="strong_wolfe")


def _penalised_objective(optimizer: torch.optim.Optimizer, head: nn.Linear, x: torch.Tensor, y: torch.Tensor,
                         decay: float) -> Callable[[], torch.Tensor]:
    """L-BFGS's closure: cross-entropy plus 0.5 x decay x |W|^2 (the bias is not penalised)."""
    loss_fn = nn.CrossEntropyLoss()

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(head(x), y) + 0.5 * decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    return objective


def choose_probe_decay(x: torch.Tensor, y: torch.Tensor, num_classes: int, grid: tuple[float, ...],
                       seed: int) -> tuple[float, dict[float, float]]:
    """The L2 strength of `grid` whose probe predicts held-out labelled images best (lowest mean
    validation cross-entropy over stratified folds), and every value's score. Cross-entropy, not
    accuracy: with a few hundred labels accuracy ties across the grid, and FT inherits the probe's
    logits, whose scale the cross-entropy judges. Ties go to the stronger L2 (the bounded head)."""
    labels = y.cpu().numpy()
    k = fold_count(labels)
    folds = torch.as_tensor(stratified_folds(labels, k, seed), device=x.device)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    scores: dict[float, float] = {}
    for decay in grid:
        total = 0.0
        for fold in range(k):
            held_out = folds == fold
            head = fit_logistic_head(x[~held_out], y[~held_out], num_classes, decay)
            with torch.no_grad():
                total += float(loss_fn(head(x[held_out]), y[held_out]))
        scores[decay] = total / len(labels)
    best = min(scores.values())
    return max(decay for decay, score in scores.items() if score <= best + 1e-9), scores
