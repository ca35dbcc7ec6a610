"""The feature store: backbone features of the pool and the test set in one HDF5 file.

Layout of features.h5:
  /pool/features  (N, D) float16|float32, chunked by `chunk_rows` rows
  /pool/labels    (N,) int64
  /pool/sample_ids (N,) utf-8 strings
  /pool.attrs["rows_done"]  rows written so far (only meaningful while the file is partial)
  /test/...       same for the test set
  attrs: backbone, checkpoint, checkpoint_sha256, transform, dtype, num_classes, the effective
         preprocessing (resolution, resize, interpolation, mean, std: JSON lists) and the configured
         one (preprocessing_config: JSON of the data.* keys, null = the backbone's own), ...

A file is written as `<out>.partial` and renamed only when complete; a partial file written
with other settings (its `fingerprint` differs) is discarded rather than mixed with new rows.
The streaming writer that fills it from a backbone lives in `asvp.extraction`.

This module imports neither torch nor torchvision: the cheap per-round jobs (`decide`, a
pass-through `refresh-features`) read and link features through it and must start in well
under a second, where `import torch` alone costs 3-5 s on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from asvp.errors import DataError, require_finite_rows

SPLITS = ("pool", "test")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def open_partial(path: Path, fingerprint: str) -> h5py.File:
    """The partial file to (re)fill: kept when written with the same settings, else started over."""
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


def require_split(
    handle: h5py.File, name: str, labels: np.ndarray, sample_ids: Sequence[str], feature_dim: int, dtype: str, chunk_rows: int
) -> h5py.Group:
    """The split's group, created empty (rows_done = 0) unless a resumed partial file has it."""
    group = handle.require_group(name)
    if "features" not in group:
        n = len(labels)
        # An empty split (no test set) cannot be chunked: HDF5 refuses a chunk larger than the data.
        chunks = (min(chunk_rows, n), feature_dim) if n else None
        group.create_dataset("features", shape=(n, feature_dim), dtype=dtype, chunks=chunks)
        group.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        group.create_dataset("sample_ids", data=np.asarray(sample_ids, dtype=object), dtype=h5py.string_dtype())
        group.attrs["rows_done"] = 0
    return group


def write_rows(handle: h5py.File, group: h5py.Group, start: int, block: np.ndarray) -> None:
    """Store rows start..start+len(block) and record them as done (flushed: a kill keeps them)."""
    stop = start + len(block)
    group["features"][start:stop] = block.astype(group["features"].dtype)
    group.attrs["rows_done"] = stop
    handle.flush()


def mark_complete(handle: h5py.File, attrs: Mapping[str, Any], dtype: str, feature_dim: int) -> None:
    for key, value in attrs.items():
        handle.attrs[key] = value if value is not None else ""
    handle.attrs["dtype"] = dtype
    handle.attrs["feature_dim"] = feature_dim
    handle.attrs["complete"] = True


def check_sample_ids(handle: h5py.File, rows: np.ndarray, sample_ids: Sequence[str], source: str | Path) -> None:
    """Refuse a features file made for another pool: its sample ids at `rows` must be `sample_ids`
    (from pool.csv or labelled.csv, `source`). A stale or copied file would otherwise give
    every row the wrong image's features without any error."""
    rows = np.asarray(rows, dtype=np.int64)
    path = handle.filename
    stored = handle["pool/sample_ids"]
    if len(rows) and int(rows.max()) >= len(stored):
        raise DataError(f"features file {path} holds {len(stored)} pool rows but {source} refers to row {int(rows.max())}: "
                        f"it was made for another pool. Delete {path} and rerun to extract this pool's features.")
    found = np.empty(len(rows), dtype=object)
    for start in range(0, len(rows), 1 << 18):
        values = read_rows(stored, rows[start : start + (1 << 18)])
        found[start : start + len(values)] = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    expected = np.asarray(sample_ids, dtype=object)
    bad = np.flatnonzero(found != expected)
    if len(bad):
        k = int(bad[0])
        raise DataError(f"features file {path} was made for another pool: pool row {int(rows[k])} is {found[k]!r} there "
                        f"but {expected[k]!r} in {source} ({len(bad)} of {len(rows)} rows differ). Delete {path} and rerun "
                        "to extract this pool's features.")


IDENTITY_ATTRS = ("backbone", "dataset", "resolution", "preprocessing_config")  # what a features file must agree with the config on
_CONFIG_KEYS = {"backbone": "backbone.arch", "dataset": "data.dataset", "resolution": "data.resolution"}


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value.item() if isinstance(value, np.generic) else value


def check_identity(handle: h5py.File, expected: Mapping[str, Any]) -> None:
    """Refuse a features file whose backbone, dataset or preprocessing is not the config's (a file
    copied in, or kept by `--rerun-triggers mtime` after the config changed)."""
    for key in IDENTITY_ATTRS:
        if key not in expected or key not in handle.attrs:
            continue
        found = _text(handle.attrs[key])
        if str(found) == str(expected[key]):
            continue
        if key == "preprocessing_config":
            _preprocessing_mismatch(handle, str(found), str(expected[key]))
        config_key = _CONFIG_KEYS[key]
        raise DataError(f"features file {handle.filename} was extracted with {key} {found!r}, but the config has "
                        f"{config_key} {expected[key]!r}. Delete {handle.filename} and rerun to extract it again "
                        f"(or set {config_key} back).")


def _preprocessing_mismatch(handle: h5py.File, found: str, expected: str) -> None:
    """DataError naming the first data.* preprocessing key the file was made with otherwise."""
    was, now = json.loads(found), json.loads(expected)
    key = next(k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))

    def shown(value: Any) -> str:
        return "null (the backbone's own)" if value is None else json.dumps(value)

    raise DataError(f"features file {handle.filename} was extracted with data.{key} {shown(was.get(key))}, but the config "
                    f"has data.{key} {shown(now.get(key))}: its features are of other images. Delete {handle.filename} "
                    f"and rerun to extract it again (or set data.{key} back).")


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


def read_rows(dataset: Any, rows: np.ndarray | slice) -> np.ndarray:
    """dataset[rows] in the caller's order, from an h5py dataset or a numpy array (or memory map).

    rows: a slice, or (n,) distinct row indices in any order. Consecutive ascending rows are read
    as one slice (no gather copy); a numpy array gathers any order itself. h5py gathers only
    increasing indices, and slowly (tens of microseconds a row), so other rows are read sorted
    and put back in order: rows dense in their span (a quarter of it or more) as that one slice,
    picked in memory, which is tens of times faster than h5py's gather; sparser ones by h5py's
    gather. The result may be a view of a numpy `dataset`: copy it before writing to it.
    """
    if isinstance(rows, slice):
        return np.asarray(dataset[rows])
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.asarray(dataset[0:0])
    if np.all(np.diff(rows) == 1):
        return np.asarray(dataset[int(rows[0]) : int(rows[-1]) + 1])
    if isinstance(dataset, np.ndarray):
        return dataset[rows]
    order = np.argsort(rows, kind="stable")
    ascending = rows[order]
    lo, hi = int(ascending[0]), int(ascending[-1]) + 1
    block = np.asarray(dataset[lo:hi])[ascending - lo] if hi - lo <= 4 * len(rows) else np.asarray(dataset[ascending])
    out = np.empty_like(block)
    out[order] = block
    return out


def load_rows(path: str | Path, split: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, D) float32 and labels (n,) of `rows` (all rows when None), in the given order."""
    with open_features(path) as handle:
        group = handle[split]
        if rows is None:
            features = group["features"][:]
            labels = group["labels"][:]
        else:
            rows = np.asarray(rows, dtype=np.int64)
            features = read_rows(group["features"], rows)
            labels = read_rows(group["labels"], rows)
    features = features.astype(np.float32)
    require_finite_rows(features, f"features file {path} holds NaN or Inf: its {split} rows read",
                        "delete the file and rerun the extraction", row_numbers=rows, numbering=f"{split} row")
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
