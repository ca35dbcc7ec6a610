"""The trained proxy's scoring pass in numpy: pool scoring without torch.

A proxy round is two jobs (train the proxy, score the pool), and `import torch` alone takes
~4.3 s here against ~1 s of scoring a 10k pool: the scoring job therefore reads the proxy's
weights from `proxy.npz` (written by the training job, `proxy.save_weights`) and runs the MLP's
eval-mode forward in float32 numpy: Linear -> BatchNorm (running statistics) -> ReLU -> Linear
-> softmax. Rows are read from the features file in chunks, so a 1.28M-row pool is
never loaded whole: uncertainty strategies score chunk by chunk (`asvp.steps.select.select_proxy`),
diversity strategies read the hidden embeddings from memory-mapped files (`write_proxy_outputs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from asvp.errors import require_finite_rows
from asvp.features import read_rows

INFERENCE_BATCH_SIZE = 16384  # feature rows per proxy forward pass when scoring the pool (paper appendix A)
TRAINING_PREFIX = "training_"  # proxy.npz entries that record how training ended (asvp.proxy), not weights
BATCHNORM_EPS = 1e-5  # torch.nn.BatchNorm1d's default, with which the proxy is trained


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The proxy's weight arrays (not the training record saved beside them)."""
    with np.load(path) as archive:
        return {name: archive[name].astype(np.float32) for name in archive.files if not name.startswith(TRAINING_PREFIX)}


def _folded(weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first layer with eval-mode BatchNorm folded in: (x W^T + b) * scale + shift."""
    scale = weights["bn_weight"] / np.sqrt(weights["bn_running_var"] + np.float32(BATCHNORM_EPS))
    shift = weights["bn_bias"] - weights["bn_running_mean"] * scale
    w1 = (weights["hidden_weight"] * scale[:, None]).T.astype(np.float32)
    b1 = (weights["hidden_bias"] * scale + shift).astype(np.float32)
    return w1, b1, weights["classifier_weight"].T.astype(np.float32), weights["classifier_bias"]


def proxy_chunks(weights: dict[str, np.ndarray], features: Any, rows: np.ndarray,
                 batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start, probabilities (n, C) float32, hidden (n, H) float32) for consecutive chunks of
    `rows`, in their order: the pool is streamed, never held whole (1.28M x 1000 float32
    probabilities alone are 5 GB). `hidden` is the post-ReLU embedding (the official `emb`)."""
    rows = np.asarray(rows, dtype=np.int64)
    w1, b1, w2, b2 = _folded(weights)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        x = np.asarray(read_rows(features, chunk), dtype=np.float32)
        require_finite_rows(x, "pool features", "re-extract the features (delete the file and rerun)", row_numbers=chunk,
                            numbering="pool row")
        # In place after each product: every (n, H) or (n, C) temporary costs a pass over memory.
        hidden = x @ w1
        hidden += b1
        np.maximum(hidden, 0, out=hidden)
        logits = hidden @ w2
        logits += b2
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)  # in place: at 1000 classes each (n, C) copy costs as much as the exp
        logits /= logits.sum(axis=1, keepdims=True)
        yield start, logits, hidden


OUTPUT_NAMES = ("hidden", "labelled_hidden", "probabilities")


def write_proxy_outputs(weights: dict[str, np.ndarray], features: Any, unlabelled: np.ndarray, labelled: np.ndarray,
                        out_dir: str | Path, batch_size: int, with_probabilities: bool) -> dict[str, Path]:
    """The proxy's outputs for diversity strategies, as .npy files in the round folder:
    proxy_hidden.npy (U, H) and proxy_labelled_hidden.npy (L, H) in the features' dtype,
    proxy_probabilities.npy (U, C) float32 when asked. Strategies open them as memory maps:
    bounded memory at any pool size, and scattered row reads at page-cache speed (an HDF5
    dataset costs ~50 us per scattered row, which made BADGE's exact updates 5x slower)."""
    from asvp.atomic import atomic_path

    dtype = np.float16 if np.dtype(features.dtype) == np.float16 else np.float32
    hidden_dim, classes = weights["hidden_bias"].shape[0], weights["classifier_bias"].shape[0]
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"proxy_{name}.npy" for name in OUTPUT_NAMES}
    for name, rows in (("hidden", unlabelled), ("labelled_hidden", labelled)):
        with atomic_path(paths[name]) as tmp:
            target = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(rows), hidden_dim))
            probabilities_out = None
            if name == "hidden" and with_probabilities:
                probabilities_tmp = paths["probabilities"].with_name(".proxy_probabilities.npy.tmp")
                probabilities_out = np.lib.format.open_memmap(probabilities_tmp, mode="w+", dtype=np.float32,
                                                              shape=(len(rows), classes))
            for start, probabilities, hidden in proxy_chunks(weights, features, rows, batch_size):
                target[start : start + len(hidden)] = hidden.astype(dtype)
                if probabilities_out is not None:
                    probabilities_out[start : start + len(probabilities)] = probabilities
            target.flush()
            del target
            if probabilities_out is not None:
                probabilities_out.flush()
                del probabilities_out
                probabilities_tmp.replace(paths["probabilities"])
    if not with_probabilities:
        paths.pop("probabilities")
    return paths
