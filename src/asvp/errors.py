"""User-facing errors.

Every error a user can cause (bad config key, missing file, corrupt image, checkpoint that does
not fit, NaN features) is raised as an `AsvpError` whose message names the file or key and says
what to do. The CLI prints such errors as one line and exits non-zero, without a traceback.
"""


class AsvpError(Exception):
    """An error caused by input the user controls; the message says what to fix."""


class ConfigError(AsvpError):
    """The workflow config is invalid (unknown key, wrong type, inconsistent values)."""


class DataError(AsvpError):
    """A dataset, label file, feature file or image is missing, malformed or unreadable."""


class CheckpointError(AsvpError):
    """A weight file is missing, has the wrong hash, or does not fit the architecture."""


def require_finite_rows(array, what: str, fix: str = "re-extract the features or drop those samples") -> None:  # type: ignore[no-untyped-def]
    """Raise a DataError counting the rows of a 2-D array that hold NaN and those that hold Inf.

    Checked in row chunks so a pool-sized array is never copied whole. A NaN that reaches
    LogME, PED or the proxy yields a silently wrong verdict or selection, never an error.
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
            f"(first bad row: {first_bad}); {fix}"
        )
