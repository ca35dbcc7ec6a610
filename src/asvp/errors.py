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
