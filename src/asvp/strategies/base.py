"""The one interface every selection strategy shares (LabelBench-style registry).

`select(state, budget, rng) -> np.ndarray` of pool indices, in selection order. A strategy
declares which model outputs it needs (`needs`), so the caller computes only those: softmax
probabilities for uncertainty sampling, hidden embeddings for diversity sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from asvp.errors import ConfigError


@dataclass(frozen=True)
class PoolState:
    """What a strategy may look at in one round.

    unlabelled: (U,) int64 pool indices not yet labelled, ascending.
    labelled: (L,) int64 pool indices already labelled.
    probabilities: (U, C) float32 softmax of the selection model on `unlabelled`, or None.
    """

    unlabelled: np.ndarray
    labelled: np.ndarray
    probabilities: np.ndarray | None = None


class Strategy:
    """Base class: score the unlabelled pool, take the `budget` highest scores.

    Ties are broken by ascending pool index (stable sort), so selections are bit-identical
    across runs with the same inputs.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, state: PoolState, rng: np.random.Generator) -> np.ndarray:
        """(U,) float64 informativeness of each unlabelled sample: higher is queried first."""
        raise NotImplementedError

    def select(self, state: PoolState, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return (selected pool indices in order, (U,) scores)."""
        if budget > len(state.unlabelled):
            raise ConfigError(
                f"round budget {budget} exceeds the {len(state.unlabelled)} unlabelled images left; "
                "lower schedule.budgets or enlarge the pool"
            )
        scores = self.score(state, rng)
        order = np.argsort(-scores, kind="stable")[:budget]
        return state.unlabelled[order], scores


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy selectable by its `name` in the config."""
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()

