"""User-facing errors.

Every error a user can cause (bad config key, missing file, corrupt image, checkpoint that does
not fit, NaN features) is raised as an `AsvpError` whose message names the file or key and says
what to do. The CLI prints such errors as one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where it is used: importing this module stays free
    import numpy as np


class AsvpError(Exception):
    """An error caused by input the user controls; the message says what to fix."""


class ConfigError(AsvpError):
    """The workflow config is invalid (unknown key, wrong type, inconsistent values)."""


class DataError(AsvpError):
    """A dataset, label file, feature file or image is missing, malformed or unreadable."""


class CheckpointError(AsvpError):
    """A weight file is missing, has the wrong hash, or does not fit the architecture."""


def require_finite_rows(array: Any, what: str, fix: str = "re-extract the features or drop those samples", *,
                        row_numbers: slice | np.ndarray | None = None, numbering: str = "") -> None:
    """Raise a DataError counting the rows of a 2-D array that hold NaN and those that hold Inf.

    Checked in row chunks so a pool-sized array is never copied whole. A NaN that reaches
    LogME, PED or the proxy yields a silently wrong verdict or selection, never an error.
    row_numbers: when `array` holds rows read from a larger array (a slice, or (n,) indices),
    the message numbers the first bad row as that array does, so the user can find it.
    numbering: what the row numbers count ("pool row", "unlabelled row"), said before the number.
    """
    import numpy as np

    nan_rows = inf_rows = 0
    first_bad = -1
    for start in range(0, array.shape[0], 65536):
        block = np.asarray(array[start : start + 65536])
        finite = np.isfinite(block).all(axis=1)
        if finite.all():
            continue
        nan_rows += int(np.isnan(block).any(axis=1).sum())
        inf_rows += int(np.isinf(block).any(axis=1).sum())
        if first_bad < 0:
            first_bad = start + int(np.argmin(finite))
    if nan_rows or inf_rows:
        raise DataError(
            f"{what} contain NaN in {nan_rows} and Inf in {inf_rows} of {array.shape[0]} rows "
            f"(first bad row: {numbering + ' ' if numbering else ''}{_row_number(row_numbers, first_bad)}); {fix}"
        )


def _row_number(row_numbers: slice | np.ndarray | None, k: int) -> int:
    """The number of row k of a block read as `row_numbers` (a slice or indices; None: k itself)."""
    if row_numbers is None:
        return k
    if isinstance(row_numbers, slice):
        return (row_numbers.start or 0) + k * (row_numbers.step or 1)
    return int(row_numbers[k])
