"""Backbone features for the whole pool and the test set, in one HDF5 file (paper stage 1).

Layout of features.h5:
  /pool/features  (N, D) float16|float32, chunked by `chunk_rows` rows
  /pool/labels    (N,) int64
  /pool/sample_ids (N,) utf-8 strings
  /test/...       same for the test set
  attrs: backbone, checkpoint, checkpoint_sha256, transform, dtype, resolution, num_classes, ...

Extraction is streamed chunk by chunk into `<out>.partial`; each finished chunk is flushed and
recorded in the split's `rows_done` attribute, so a killed job resumes from the last complete
chunk. Only a complete file is renamed to its final name. A partial file written with other
settings (its `fingerprint` differs) is discarded rather than mixed with new rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from asvp.errors import DataError

SPLITS = ("pool", "test")


@dataclass(frozen=True)
class SplitInput:
    """One split to extract: a dataset yielding (image, label, position) and its metadata."""

    dataset: Dataset
    labels: np.ndarray  # (N,) int64
    sample_ids: list[str]


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _open_partial(path: Path, fingerprint: str) -> h5py.File:
    if path.exists():
        try:
            handle = h5py.File(path, "a")
            if handle.attrs.get("fingerprint") == fingerprint:
                return handle
            handle.close()
        except OSError:
            pass  # a partial file torn by a crash mid-write: start over
        path.unlink()
    handle = h5py.File(path, "w")
    handle.attrs["fingerprint"] = fingerprint
    return handle


@torch.inference_mode()
def _forward(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    images = images.to(device, non_blocking=True)
    if images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return model(images).float().cpu().numpy()


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
) -> None:
    """Write features of every split to `out` (HDF5), resumably and atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
    model = model.to(device).eval()
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    # Rows per chunk must be a multiple of the batch size so a resumed chunk starts on a batch edge.
    chunk_rows = max(batch_size, (chunk_rows // batch_size) * batch_size)
    fingerprint = json.dumps({**dict(attrs), "dtype": dtype, "chunk_rows": chunk_rows}, sort_keys=True, default=str)
    partial = partial_path(out)
    with _open_partial(partial, fingerprint) as handle:
        for name, split in splits.items():
            n = len(split.dataset)
            group = handle.require_group(name)
            if "features" not in group:
                group.create_dataset(
                    "features", shape=(n, feature_dim), dtype=dtype, chunks=(min(chunk_rows, max(n, 1)), feature_dim)
                )
                group.create_dataset("labels", data=np.asarray(split.labels, dtype=np.int64))
                group.create_dataset("sample_ids", data=np.asarray(split.sample_ids, dtype=object), dtype=h5py.string_dtype())
                group.attrs["rows_done"] = 0
            done = int(group.attrs["rows_done"])
            progress = tqdm(total=n, initial=done, desc=f"features {name}", unit="img", mininterval=5.0)
            for start in range(done, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                loader = DataLoader(
                    Subset(split.dataset, range(start, stop)),
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=num_workers,
                    pin_memory=device.type == "cuda",
                )
                block = np.concatenate([_forward(model, images, device) for images, *_ in loader])
                if not np.isfinite(block).all():
                    raise DataError(
                        f"backbone produced NaN/Inf features for {name} rows {start}..{stop - 1}; "
                        "check the checkpoint (backbone.checkpoint) and the input images"
                    )
                group["features"][start:stop] = block.astype(dtype)
                group.attrs["rows_done"] = stop
                handle.flush()
                progress.update(stop - start)
            progress.close()
        for key, value in attrs.items():
            handle.attrs[key] = value if value is not None else ""
        handle.attrs["dtype"] = dtype
        handle.attrs["feature_dim"] = feature_dim
        handle.attrs["complete"] = True
    os.replace(partial, out)


def read_attrs(path: str | Path) -> dict[str, Any]:
    with open_features(path) as handle:
        return dict(handle.attrs)


def open_features(path: str | Path) -> h5py.File:
    """Open a complete features file for reading, with a clear error when it is not one."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"features file {path} does not exist; run the workflow to extract it")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"features file {path} is not a readable HDF5 file ({exc}); delete it and rerun") from exc
    if not handle.attrs.get("complete", False) or any(s not in handle for s in SPLITS):
        handle.close()
        raise DataError(f"features file {path} is incomplete; delete it and rerun the extraction")
    return handle


def load_rows(path: str | Path, split: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, D) float32 and labels (n,) of `rows` (all rows when None), in the given order."""
    with open_features(path) as handle:
        group = handle[split]
        if rows is None:
            features = group["features"][:]
            labels = group["labels"][:]
        else:
            rows = np.asarray(rows, dtype=np.int64)
            order = np.argsort(rows)
            inverse = np.argsort(order)
            features = group["features"][rows[order]][inverse]
            labels = group["labels"][rows[order]][inverse]
    features = features.astype(np.float32)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise DataError(
            f"features file {path}: {int(bad.sum())} {split} rows contain NaN or Inf; "
            "delete the file and rerun the extraction"
        )
    return features, labels.astype(np.int64)


def link_features(previous: str | Path, out: str | Path) -> None:
    """Reuse the previous round's features without copying gigabytes.

    The link points at the real file (never at another link): a run of 40+ rounds without a
    refresh would otherwise hit the kernel's symlink-chain limit (ELOOP). The link is relative,
    so a moved results/ folder stays valid. Hardlinks are not used: Snakemake touches outputs,
    which would change the shared inode's mtime and make earlier rounds look stale.
    """
    out = Path(out)
    target = os.path.realpath(previous)
    if not os.path.exists(target):
        raise DataError(f"features file {previous} does not exist; rerun the workflow to recreate it")
    tmp = out.with_name(f".{out.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, start=os.path.dirname(os.path.abspath(out))), tmp)
    os.replace(tmp, out)
