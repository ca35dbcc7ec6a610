"""Backbone features of the pool and the test set, streamed into the feature store (paper stage 1).

Extraction writes `<out>.partial` chunk by chunk (`asvp.features` holds the file layout); each
finished chunk is flushed and recorded in the split's `rows_done` attribute, so a killed job
resumes from the last complete chunk, and only a complete file is renamed to its final name.

Speed (issue 7, point 5): the feed must keep up with the backbone. A dataset with a
`batch(positions)` method (the in-memory `TensorImageDataset`) hands over whole normalised
batches; any other dataset goes through ONE DataLoader per split over the remaining rows
(building one per chunk restarted its workers and emptied its prefetch queue at every
boundary). Chunk boundaries are counted on the batch stream, so resume points are unchanged.
On CUDA the forward runs under bf16/fp16 autocast in channels_last; features are stored in
the configured dtype either way.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from asvp import features as store
from asvp.crash import crash_point
from asvp.errors import DataError
from asvp.precision import inference_autocast


@dataclass(frozen=True)
class SplitInput:
    """One split to extract: a dataset yielding (image, label, position) and its metadata."""

    dataset: Dataset
    labels: np.ndarray  # (N,) int64
    sample_ids: list[str]


def image_batches(dataset: Dataset, start: int, batch_size: int, *, num_workers: int = 0,
                  device: torch.device = torch.device("cpu")) -> Iterator[torch.Tensor]:
    """Image batches (B, 3, H, W) of rows start..N-1 in order, `batch_size` rows each (the last may be short)."""
    n = len(dataset)  # type: ignore[arg-type]
    if hasattr(dataset, "batch"):
        for first in range(start, n, batch_size):
            yield dataset.batch(np.arange(first, min(first + batch_size, n)))[0]
        return
    loader = DataLoader(
        Subset(dataset, range(start, n)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    for images, *_ in loader:
        yield images


@torch.inference_mode()
def _forward(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Features of one batch, left on `device` (one host copy per chunk, not per batch)."""
    images = images.to(device, non_blocking=True)
    if images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    with inference_autocast(device):
        return model(images)


def extract_features(
    model: torch.nn.Module,
    splits: Mapping[str, SplitInput],
    out: str | Path,
    *,
    attrs: Mapping[str, Any],
    dtype: str = "float32",
    batch_size: int = 256,
    chunk_rows: int = 4096,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    crash_name: str = "extract_chunk",
) -> None:
    """Write features of every split to `out` (HDF5), resumably and atomically.

    crash_name: the crash point passed after each chunk (asvp.crash; tests only)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    # Rows per chunk must be a multiple of the batch size so a resumed chunk starts on a batch edge.
    chunk_rows = max(batch_size, (chunk_rows // batch_size) * batch_size)
    fingerprint = json.dumps({**dict(attrs), "dtype": dtype, "chunk_rows": chunk_rows}, sort_keys=True, default=str)
    partial = store.partial_path(out)
    with store.open_partial(partial, fingerprint) as handle:
        for name, split in splits.items():
            n = len(split.dataset)  # type: ignore[arg-type]
            group = store.require_split(handle, name, split.labels, split.sample_ids, feature_dim, dtype, chunk_rows)
            done = int(group.attrs["rows_done"])
            progress = tqdm(total=n, initial=done, desc=f"features {name}", unit="img", mininterval=5.0)
            batches = image_batches(split.dataset, done, batch_size, num_workers=num_workers, device=device)
            for start in range(done, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                outputs = [_forward(model, images, device) for images in
                           itertools.islice(batches, math.ceil((stop - start) / batch_size))]
                block = torch.cat(outputs).float().cpu().numpy()
                if len(block) != stop - start:
                    raise DataError(f"dataset for {name} yielded {len(block)} rows for rows {start}..{stop - 1}; "
                                    "its length and its items disagree")
                if not np.isfinite(block).all():
                    raise DataError(
                        f"backbone produced NaN/Inf features for {name} rows {start}..{stop - 1}; "
                        "check the checkpoint (backbone.checkpoint) and the input images"
                    )
                store.write_rows(handle, group, start, block)
                crash_point(crash_name)
                progress.update(stop - start)
            progress.close()
        store.mark_complete(handle, attrs, dtype, feature_dim)
    os.replace(partial, out)
