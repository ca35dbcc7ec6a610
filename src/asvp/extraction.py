"""Backbone features of the pool and the test set, streamed into the feature store (paper stage 1).

Extraction writes `<out>.partial` chunk by chunk (`asvp.features` holds the file layout); each
finished chunk is flushed and recorded in the split's `rows_done` attribute, so a killed job
resumes from the last complete chunk, and only a complete file is renamed to its final name.

Speed: the feed must keep up with the backbone. A dataset with a
`batch(positions)` method (the in-memory `TensorImageDataset`) hands over whole normalised
batches; any other dataset goes through ONE DataLoader per split over the remaining rows
(building one per chunk restarted its workers and emptied its prefetch queue at every
boundary). Chunk boundaries are counted on the batch stream, so resume points are unchanged.
On CUDA the forward runs under bf16/fp16 autocast, CNNs in channels_last; features are stored in
the configured dtype either way.

With world_size > 1 each chunk's rows are split into contiguous parts, one per
process (asvp.distributed); rank 0 gathers the parts and is the only writer, so the file, its
chunks and its resume points are those of one process.
"""

from __future__ import annotations

import contextlib
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

from asvp import distributed
from asvp import features as store
from asvp.backbones import memory_format
from asvp.batching import iterate_batches
from asvp.crash import crash_point
from asvp.errors import DataError, require_finite_rows
from asvp.precision import inference_autocast


CHUNK_ROWS = 4096  # rows per HDF5 chunk of the features file, also the unit a killed extraction resumes from


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
        images = images.contiguous(memory_format=memory_format(model))
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
    chunk_rows: int = CHUNK_ROWS,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    crash_name: str = "extract_chunk",
    world_size: int = 1,
) -> None:
    """Write features of every split to `out` (HDF5), resumably and atomically.

    crash_name: the crash point passed after each chunk (asvp.crash; tests only).
    world_size > 1: that many processes (a GPU each on CUDA, gloo on the CPU) share every chunk;
    the file is the one a single process writes (features equal up to float rounding), and either
    kind resumes the other's partial file. `model` and `splits` are sent to them and must pickle.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    distributed.require_world_size(world_size)
    if world_size > 1:
        options = dict(attrs=attrs, dtype=dtype, batch_size=batch_size, chunk_rows=chunk_rows, num_workers=num_workers,
                       crash_name=crash_name)
        distributed.launch(_extract_rank, world_size, model, splits, out, options,
                           backend=distributed.backend_for(device, world_size))
        return
    feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
    model = model.to(device).eval().to(memory_format=memory_format(model))
    chunk_rows = _whole_batches(chunk_rows, batch_size)
    fingerprint = _fingerprint(attrs, dtype, chunk_rows)
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
                _check_count(name, len(block), start, stop)
                _check_finite(name, block, start, stop)
                store.write_rows(handle, group, start, block)
                crash_point(crash_name)
                progress.update(stop - start)
            progress.close()
        store.mark_complete(handle, attrs, dtype, feature_dim)
    os.replace(partial, out)


# What the rows of a previous features file must have been made with to be copied, not recomputed.
COPY_IDENTITY = ("backbone", "checkpoint_sha256", "checkpoint_prefix", "resolution", "transform", "dtype")


def seed_from_previous(previous: str | Path, out: str | Path, pool: SplitInput, *, attrs: Mapping[str, Any],
                       dtype: str, batch_size: int, feature_dim: int, chunk_rows: int = CHUNK_ROWS) -> int:
    """Copy the pool rows a previous complete features file already holds into `out`'s partial
    file, so that `extract_features` (same arguments) computes only the rows after them.

    A pool that grows keeps its earlier rows first (asvp.data.unlabelled.pool_order), so the
    previous file's pool must be a prefix of the new one (by sample id), and made with the same
    backbone, checkpoint, transform and dtype (COPY_IDENTITY). Returns the rows copied (0: none
    match, everything is extracted)."""
    out = Path(out)
    chunk_rows = _whole_batches(chunk_rows, batch_size)
    expected = {**dict(attrs), "dtype": dtype}
    if not attrs.get("checkpoint_sha256"):  # a random initialisation is another network every time
        return 0
    with store.open_features(previous) as old:
        if any(str(old.attrs.get(key, "")) != str(expected.get(key, "")) for key in COPY_IDENTITY):
            return 0
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in old["pool/sample_ids"][:]]
        if not ids or ids != list(pool.sample_ids[: len(ids)]) or old["pool/features"].shape[1] != feature_dim:
            return 0
        with store.open_partial(store.partial_path(out), _fingerprint(attrs, dtype, chunk_rows)) as handle:
            group = store.require_split(handle, "pool", pool.labels, pool.sample_ids, feature_dim, dtype, chunk_rows)
            for start in range(int(group.attrs["rows_done"]), len(ids), chunk_rows):
                store.write_rows(handle, group, start, old["pool/features"][start : min(start + chunk_rows, len(ids))])
    return len(ids)


def _whole_batches(chunk_rows: int, batch_size: int) -> int:
    """Rows per chunk, a multiple of the batch size so a resumed chunk starts on a batch edge."""
    return max(batch_size, (chunk_rows // batch_size) * batch_size)


def _fingerprint(attrs: Mapping[str, Any], dtype: str, chunk_rows: int) -> str:
    return json.dumps({**dict(attrs), "dtype": dtype, "chunk_rows": chunk_rows}, sort_keys=True, default=str)


def _check_count(name: str, rows: int, start: int, stop: int) -> None:
    if rows != stop - start:
        raise DataError(f"dataset for {name} yielded {rows} rows for rows {start}..{stop - 1}; "
                        "its length and its items disagree")


def _check_finite(name: str, block: np.ndarray, start: int, stop: int) -> None:
    require_finite_rows(block, f"backbone produced NaN/Inf features for {name} rows {start}..{stop - 1}: they",
                        "check the checkpoint (backbone.checkpoint) and the input images", row_numbers=slice(start, stop),
                        numbering=f"{name} row")


def _extract_rank(rank: int, world_size: int, model: torch.nn.Module, splits: Mapping[str, SplitInput], out: Path,
                  options: dict[str, Any]) -> None:
    """One rank of a data-parallel extraction: forward its part of each chunk; rank 0 writes the file.

    Chunks stay those of one process (same rows, same resume points). Only rank 0 opens the HDF5
    file (one writer) and tells the others where a resumed split starts.
    """
    device = distributed.local_device()
    main = rank == 0
    feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
    model = model.to(device).eval().to(memory_format=memory_format(model))
    dtype, batch_size = options["dtype"], options["batch_size"]
    chunk_rows = _whole_batches(options["chunk_rows"], batch_size)
    partial = store.partial_path(out)
    opened = store.open_partial(partial, _fingerprint(options["attrs"], dtype, chunk_rows)) if main else contextlib.nullcontext()
    with opened as handle:
        for name, split in splits.items():
            n = len(split.dataset)  # type: ignore[arg-type]
            group = store.require_split(handle, name, split.labels, split.sample_ids, feature_dim, dtype, chunk_rows) if main else None
            done = distributed.broadcast_int(int(group.attrs["rows_done"]) if main else 0, device)
            chunks = [(start, min(start + chunk_rows, n)) for start in range(done, n, chunk_rows)]
            parts = [np.arange(start, stop, dtype=np.int64)[distributed.part(stop - start, rank, world_size)]
                     for start, stop in chunks]
            # One stream of batches per split (one DataLoader), cut so that no batch crosses a chunk.
            rows = [part[first : first + batch_size] for part in parts for first in range(0, len(part), batch_size)]
            batches = (images for images, _ in iterate_batches(split.dataset, rows, options["num_workers"], device, seed=0))
            progress = tqdm(total=n, initial=done, desc=f"features {name}", unit="img", mininterval=5.0, disable=not main)
            for (start, stop), part in zip(chunks, parts):
                block = _part_features(model, batches, name, part, batch_size, feature_dim, device)
                # Rank r holds the r-th contiguous part: gathered in rank order, the rows are in order.
                gathered = distributed.gather_rows(block, distributed.part_sizes(stop - start, world_size))
                if main:
                    _check_finite(name, gathered, start, stop)
                    store.write_rows(handle, group, start, gathered)
                    crash_point(options["crash_name"])
                progress.update(stop - start)
            progress.close()
        if main:
            store.mark_complete(handle, options["attrs"], dtype, feature_dim)
    if main:
        os.replace(partial, out)


def _part_features(model: torch.nn.Module, batches: Iterator[torch.Tensor], name: str, part: np.ndarray,
                   batch_size: int, feature_dim: int, device: torch.device) -> torch.Tensor:
    """(len(part), D) float32 features of this rank's part of a chunk, left on `device` for the gather."""
    outputs = [_forward(model, images, device).float() for images in itertools.islice(batches, math.ceil(len(part) / batch_size))]
    block = torch.cat(outputs) if outputs else torch.zeros((0, feature_dim), device=device)
    first = int(part[0]) if len(part) else 0
    _check_count(name, len(block), first, first + len(part))
    return block
