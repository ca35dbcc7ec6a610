"""BADGE (Ash et al., ICLR 2020): diverse and uncertain samples via k-means++ seeding on the
proxy's gradient embeddings. The seeding (exact, pruned, and the approximate variant) lives in
`asvp.strategies.kmeanspp`, whose docstring explains why the pruned version picks exactly what
the reference does."""

from __future__ import annotations

import numpy as np

from asvp.strategies.base import PoolState, Strategy, check_budget, register
from asvp.strategies.kmeanspp import CHUNK_ROWS, kmeanspp_approximate, prepare, pruned_seeding


@register
class Badge(Strategy):
    """BADGE: diverse and uncertain samples via k-means++ on gradient embeddings (module doc)."""

    name = "badge"
    needs = frozenset({"probabilities", "embeddings"})
    chunk_rows: int = CHUNK_ROWS

    def __init__(self, candidates: int | None = None, projection_dim: int | None = None) -> None:
        """Both None (the default): exact BADGE. Either set: `kmeanspp_approximate`."""
        self.candidates, self.projection_dim = candidates, projection_dim

    def select(self, state: PoolState, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return (pool indices in pick order, (U,) float64 |g| per unlabelled sample)."""
        check_budget(state, budget)
        pool = prepare(state.probabilities, state.embeddings, self.chunk_rows, n_rows=len(state.unlabelled))
        if self.candidates is None and self.projection_dim is None:
            order = pruned_seeding(pool, budget, rng, self.chunk_rows, None)
        else:
            order = kmeanspp_approximate(state.probabilities, state.embeddings, budget, rng, self.candidates,
                                         self.projection_dim, self.chunk_rows)
        return np.asarray(state.unlabelled, dtype=np.int64)[order], np.sqrt(pool.s)
