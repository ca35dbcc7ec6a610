"""The one interface every selection strategy shares (LabelBench-style registry).

`select(state, budget, rng) -> np.ndarray` of pool indices, in selection order. A strategy
declares which model outputs it needs (`needs`), so the caller computes only those: softmax
probabilities for uncertainty sampling, hidden embeddings for diversity sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from asvp.errors import ConfigError


@dataclass(frozen=True)
class PoolState:
    """What a strategy may look at in one round.

    unlabelled: (U,) int64 pool indices not yet labelled, ascending.
    labelled: (L,) int64 pool indices already labelled.
    probabilities: (U, C) float32 softmax of the selection model on `unlabelled`, or None.
    embeddings: (U, D) array-like (numpy array, memmap or h5py dataset) in the order of
        `unlabelled`: the proxy's hidden embedding (post-ReLU) or the backbone features; read in
        row chunks by strategies that must stay in bounded memory at ImageNet scale.
    labelled_embeddings: (L, D) array-like in the order of `labelled`.
    """

    unlabelled: np.ndarray
    labelled: np.ndarray
    probabilities: np.ndarray | None = None
    embeddings: Any = None
    labelled_embeddings: Any = None


class Strategy:
    """Base class: score the unlabelled pool, take the `budget` highest scores.

    Ties are broken by ascending pool index (stable sort), so selections are bit-identical
    across runs with the same inputs.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    # True when a row's score depends on that row's model outputs only: the pool can then be
    # scored chunk by chunk as the proxy streams it (uncertainty sampling), in bounded memory.
    rowwise: ClassVar[bool] = False
    # True when the strategy picks round 0 itself, without labels, on the pre-trained features;
    # every other strategy starts from the seeded random draw, as in the paper.
    cold_start: ClassVar[bool] = False
    # True when it computes with torch on the configured `device` (which then is one of its options).
    uses_device: ClassVar[bool] = False

    def score(self, state: PoolState, rng: np.random.Generator) -> np.ndarray:
        """(U,) float64 informativeness of each unlabelled sample: higher is queried first."""
        raise NotImplementedError

    def select(self, state: PoolState, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return (selected pool indices in order, (U,) scores)."""
        check_budget(state, budget)
        scores = self.score(state, rng)
        return top_scores(state.unlabelled, scores, budget), scores


def top_scores(unlabelled: np.ndarray, scores: np.ndarray, budget: int) -> np.ndarray:
    """The `budget` highest-scoring pool indices, ties to the lowest index (stable sort)."""
    return unlabelled[np.argsort(-scores, kind="stable")[:budget]]


def check_budget(state: PoolState, budget: int) -> None:
    """Every strategy refuses a budget the unlabelled pool cannot fill, with the fix."""
    if budget > len(state.unlabelled):
        raise ConfigError(
            f"round budget {budget} exceeds the {len(state.unlabelled)} unlabelled images left; "
            "lower schedule.budgets or enlarge the pool"
        )


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy selectable by its `name` in the config."""
    STRATEGIES[cls.name] = cls
    return cls


def configured_strategy(name: str, config: dict[str, Any] | None) -> Strategy:
    """The strategy with its `strategy_options.<name>` (and the `device`, if it computes on one)."""
    config = config or {}
    options = dict(config.get("strategy_options", {}).get(name, {}))
    if name in STRATEGIES and STRATEGIES[name].uses_device and "device" in config:
        options["device"] = config["device"]
    return get_strategy(name, options)


def get_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The strategy called `name`, built with its `strategy_options.<name>` from the config."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; available: {', '.join(sorted(STRATEGIES))}")
    try:
        return STRATEGIES[name](**(options or {}))
    except TypeError as error:
        raise ConfigError(f"strategy_options.{name}: {error}; see rules/schemas/config.schema.yaml") from None

