"""Which rounds are evaluation points (`evaluation.at`): torch-free, read by the Snakefile.

The paper's long schedules (appendix F: 900 rounds of small budgets) select every round but
need the final-model fine-tune only at the points a curve is drawn at; selection rounds and
evaluation points are therefore separate. The last round is always an evaluation point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asvp.errors import ConfigError

At = str | int | Sequence[int]


def cumulative_labels(budgets: Sequence[int]) -> list[int]:
    """Labels after each round: round r has sum(budgets[: r + 1])."""
    return [int(n) for n in np.cumsum(budgets)]


def evaluation_rounds(budgets: Sequence[int], at: At) -> list[int]:
    """Sorted round indices that train and test the final model."""
    n_rounds = len(budgets)
    if at == "all":
        rounds = set(range(n_rounds))
    elif isinstance(at, int) and not isinstance(at, bool):
        rounds = set(range(0, n_rounds, at))
    else:
        labels = cumulative_labels(budgets)
        missing = sorted(set(at) - set(labels))  # type: ignore[arg-type]
        if missing:
            raise ConfigError(
                f"evaluation.at names label counts {missing} that no round reaches; the rounds reach "
                f"{labels} (cumulative schedule.budgets). Use some of those, an integer k, or 'all'."
            )
        rounds = {labels.index(n) for n in at}  # type: ignore[union-attr]
    rounds.add(n_rounds - 1)
    return sorted(rounds)
