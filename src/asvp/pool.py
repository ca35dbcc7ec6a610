"""The pool and test tables, and the labelled/selected files that pass between rounds.

Files are the interface between rules, so every reader here validates what it reads and names
the file and the fix when something is off (a hand-edited label file is the usual culprit).

pool.csv / test.csv  columns: index, source_index, sample_id, label
selected.csv         columns: pool_index, sample_id, score, rank
labelled.csv         columns: pool_index, sample_id, label, round
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from asvp.atomic import write_csv
from asvp.errors import DataError

SPLIT_COLUMNS = ["index", "source_index", "sample_id", "label"]
SELECTED_COLUMNS = ["pool_index", "sample_id", "score", "rank"]
LABELLED_COLUMNS = ["pool_index", "sample_id", "label", "round"]
NON_INTEGER_COLUMNS = frozenset({"sample_id", "score"})  # every other column must hold integers


def subset_indices(source_size: int, subset: int | None, seed: int) -> np.ndarray:
    """Sorted source indices of a seeded random subset (all indices when subset is None)."""
    if subset is None or subset >= source_size:
        return np.arange(source_size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(source_size, size=subset, replace=False)).astype(np.int64)


def split_table(source_indices: np.ndarray, sample_ids: list[str], labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": np.arange(len(source_indices), dtype=np.int64),
            "source_index": source_indices,
            "sample_id": sample_ids,
            "label": np.asarray(labels, dtype=np.int64),
        }
    )


def _read_csv(path: str | Path, columns: list[str], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; rerun the workflow to recreate it")
    try:
        frame = pd.read_csv(path, dtype={"sample_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} is not a readable CSV ({exc}); delete it and rerun") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{what} file {path}: missing column(s) {missing}; expected columns {columns}. "
            "Fix the header or delete the file and rerun."
        )
    for column in (c for c in columns if c not in NON_INTEGER_COLUMNS):
        if frame.empty:  # a header alone (a source without a test set) reads as text columns
            frame[column] = frame[column].astype(np.int64)
        elif frame[column].isna().any() or not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(f"{what} file {path}: column '{column}' must hold integers only (found empty or non-integer values)")
    return frame[columns]


def read_split_table(path: str | Path) -> pd.DataFrame:
    frame = _read_csv(path, SPLIT_COLUMNS, "pool/test table")
    if not np.array_equal(frame["index"].to_numpy(), np.arange(len(frame))):
        raise DataError(f"pool/test table {path}: column 'index' must be 0..N-1 in order; delete it and rerun")
    return frame


def _check_pool_indices(frame: pd.DataFrame, path: Path, pool_size: int, what: str) -> None:
    indices = frame["pool_index"].to_numpy()
    bad = indices[(indices < 0) | (indices >= pool_size)]
    if len(bad):
        raise DataError(
            f"{what} file {path}: id {int(bad[0])} is not in the pool (pool has 0..{pool_size - 1}). "
            "Fix or remove that row."
        )
    duplicated = frame["pool_index"][frame["pool_index"].duplicated()]
    if len(duplicated):
        raise DataError(f"{what} file {path}: id {int(duplicated.iloc[0])} appears more than once. Remove the duplicate row.")


def read_labelled(path: str | Path, pool_size: int, num_classes: int | None = None) -> pd.DataFrame:
    """Read and validate a labelled-set file against the pool size and class count."""
    path = Path(path)
    frame = _read_csv(path, LABELLED_COLUMNS, "labels")
    _check_pool_indices(frame, path, pool_size, "labels")
    if num_classes is not None:
        labels = frame["label"].to_numpy()
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise DataError(
                f"labels file {path}: label {int(bad[0])} is outside 0..{num_classes - 1}. Fix that row."
            )
    return frame


def read_selected(path: str | Path, pool_size: int) -> pd.DataFrame:
    path = Path(path)
    frame = _read_csv(path, SELECTED_COLUMNS, "selection")
    _check_pool_indices(frame, path, pool_size, "selection")
    return frame


def write_selected(path: str | Path, pool: pd.DataFrame, selected: np.ndarray, scores: np.ndarray) -> None:
    """selected: (k,) pool indices in selection order; scores: (k,) their acquisition scores."""
    frame = pd.DataFrame(
        {
            "pool_index": np.asarray(selected, dtype=np.int64),
            "sample_id": pool["sample_id"].to_numpy()[selected],
            "score": np.asarray(scores, dtype=np.float64),
            "rank": np.arange(len(selected), dtype=np.int64),
        }
    )
    write_csv(path, frame)


def label_selection(
    selected: pd.DataFrame, pool: pd.DataFrame, previous: pd.DataFrame | None, round_index: int
) -> pd.DataFrame:
    """The oracle step: attach labels to a selection and append it to the labelled set.

    The oracle is simulated from the dataset's own labels (pool.csv), as in the paper's
    experiments. A selection that repeats an already-labelled image is refused: it would be
    paid for twice.
    """
    new = pd.DataFrame(
        {
            "pool_index": selected["pool_index"].to_numpy(np.int64),
            "sample_id": pool["sample_id"].to_numpy()[selected["pool_index"].to_numpy()],
            "label": pool["label"].to_numpy(np.int64)[selected["pool_index"].to_numpy()],
            "round": np.full(len(selected), round_index, dtype=np.int64),
        }
    )
    if (new["label"] < 0).any():
        raise DataError("the pool has no labels for some selected images (label -1): provide them before labelling")
    if previous is None:
        return new
    overlap = np.intersect1d(previous["pool_index"].to_numpy(), new["pool_index"].to_numpy())
    if len(overlap):
        raise DataError(f"round {round_index} selected already-labelled pool ids {overlap[:5].tolist()}")
    return pd.concat([previous, new], ignore_index=True)


def unlabelled_indices(pool_size: int, labelled: pd.DataFrame) -> np.ndarray:
    """(U,) ascending pool indices without a label."""
    mask = np.ones(pool_size, dtype=bool)
    mask[labelled["pool_index"].to_numpy()] = False
    return np.flatnonzero(mask).astype(np.int64)
