"""The trained proxy's scoring pass in numpy: pool scoring without torch.

A proxy round is two jobs (train the proxy, score the pool), and `import torch` alone takes
~4.3 s here against ~1 s of scoring a 10k pool: the scoring job therefore reads the proxy's
weights from `proxy.npz` (written next to `proxy.pt` by the training job) and runs the MLP's
eval-mode forward in float32 numpy: Linear -> BatchNorm (running statistics) -> ReLU -> Linear
-> softmax. Rows are read from the features file in sorted chunks, so a 1.28M-row pool is
never loaded whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asvp.errors import DataError

BATCHNORM_EPS = 1e-5  # torch.nn.BatchNorm1d's default, with which the proxy is trained


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name].astype(np.float32) for name in archive.files}


def proxy_probabilities(weights: dict[str, np.ndarray], features: Any, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """(len(rows), C) float32 softmax outputs for the given pool rows, in the order of `rows`."""
    rows = np.asarray(rows, dtype=np.int64)
    scale = weights["bn_weight"] / np.sqrt(weights["bn_running_var"] + np.float32(BATCHNORM_EPS))
    shift = weights["bn_bias"] - weights["bn_running_mean"] * scale
    # Fold BatchNorm into the first layer: (x W^T + b) * scale + shift.
    w1 = (weights["hidden_weight"] * scale[:, None]).T.astype(np.float32)
    b1 = (weights["hidden_bias"] * scale + shift).astype(np.float32)
    w2, b2 = weights["classifier_weight"].T.astype(np.float32), weights["classifier_bias"]
    out = np.empty((len(rows), len(b2)), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        order = np.argsort(chunk)
        x = np.empty((len(chunk), w1.shape[0]), dtype=np.float32)
        x[order] = np.asarray(features[chunk[order]], dtype=np.float32)  # h5py wants increasing indices
        if not np.isfinite(x).all():
            raise DataError("pool features contain NaN or Inf; re-extract the features (delete the file and rerun)")
        logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        out[start : start + len(chunk)] = e / e.sum(axis=1, keepdims=True)
    return out
