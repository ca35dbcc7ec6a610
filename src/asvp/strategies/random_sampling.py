"""Uniform random sampling: the baseline every saving ratio is measured against."""

from __future__ import annotations

import numpy as np

from asvp.strategies.base import PoolState, Strategy, register


@register
class RandomSampling(Strategy):
    """Scores are i.i.d. uniform draws from the round's seeded generator."""

    name = "random"

    def score(self, state: PoolState, rng: np.random.Generator) -> np.ndarray:
        return rng.random(len(state.unlabelled))
