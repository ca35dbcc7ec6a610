"""Tests for asvp.strategies: uncertainty and random sampling behind one registry (paper sec. 1.5 of the notes)."""

from __future__ import annotations

import numpy as np
import pytest

from asvp.errors import ConfigError, DataError
from asvp.strategies import STRATEGIES, PoolState, get_strategy

RNG_SEED = 123


def _state(probabilities: list[list[float]] | np.ndarray, unlabelled: list[int] | None = None, labelled: list[int] | None = None) -> PoolState:
    probs = np.asarray(probabilities, dtype=np.float32)
    pool = np.arange(len(probs), dtype=np.int64) if unlabelled is None else np.asarray(unlabelled, dtype=np.int64)
    labelled_rows = np.asarray(labelled or [], dtype=np.int64)
    # Diversity strategies read embeddings: seeded ones, so every registered strategy can run here.
    embeddings = np.random.default_rng(len(pool)).normal(size=(len(pool) + len(labelled_rows), 8)).astype(np.float32)
    return PoolState(unlabelled=pool, labelled=labelled_rows, probabilities=probs,
                     embeddings=embeddings[: len(pool)], labelled_embeddings=embeddings[len(pool):])


def _select(name: str, state: PoolState, budget: int, seed: int = RNG_SEED) -> np.ndarray:
    selected, scores = get_strategy(name).select(state, budget, np.random.default_rng(seed))
    assert scores.shape == (len(state.unlabelled),)
    return selected


# Rows (unlabelled pool indices 10..14) chosen so that the three uncertainty rules disagree.
DISAGREE = _state(
    [
        [0.50, 0.49, 0.01],  # 10: margin 0.01 (smallest), max 0.50
        [0.40, 0.30, 0.30],  # 11: margin 0.10, max 0.40 (least confident), entropy 1.089 (largest)
        [0.90, 0.05, 0.05],  # 12: confident
        [0.45, 0.30, 0.25],  # 13: margin 0.15, max 0.45, entropy 1.067
        [1.00, 0.00, 0.00],  # 14: one-hot with exact zeros: entropy 0
    ],
    unlabelled=[10, 11, 12, 13, 14],
    labelled=[0, 1, 2],
)


def test_margin_picks_the_smallest_top1_minus_top2_gap() -> None:
    assert _select("margin", DISAGREE, 1).tolist() == [10]
    # margin order: 10 (0.01), 11 (0.10), 13 (0.15), 12 (0.85), 14 (1.0)
    assert _select("margin", DISAGREE, 5).tolist() == [10, 11, 13, 12, 14]


def test_margin_uses_the_two_largest_probabilities_in_any_column_order() -> None:
    state = _state([[0.1, 0.3, 0.6], [0.34, 0.33, 0.33], [0.05, 0.9, 0.05]])
    assert _select("margin", state, 3).tolist() == [1, 0, 2]


def test_confidence_picks_the_smallest_max_probability() -> None:
    assert _select("confidence", DISAGREE, 1).tolist() == [11]
    assert _select("confidence", DISAGREE, 5).tolist() == [11, 13, 10, 12, 14]


def test_entropy_picks_the_largest_entropy() -> None:
    assert _select("entropy", DISAGREE, 2).tolist() == [11, 13]


def test_entropy_with_exact_zero_probabilities_is_finite_and_not_queried_first() -> None:
    # The official code computes -sum(p log p) unclipped: 0 * log 0 = NaN, and NaN sorts as "most uncertain".
    state = _state([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.2, 0.2], [0.0, 0.0, 1.0]])
    selected, scores = get_strategy("entropy").select(state, 4, np.random.default_rng(0))
    assert np.isfinite(scores).all()
    assert scores[0] == pytest.approx(0.0, abs=1e-8)
    assert scores[1] == pytest.approx(np.log(2), rel=1e-6)
    assert selected.tolist() == [2, 1, 0, 3]


@pytest.mark.parametrize("name", ["margin", "confidence", "entropy"])
def test_ties_are_broken_by_ascending_pool_index(name: str) -> None:
    uniform = np.full((6, 4), 0.25)
    state = _state(uniform, unlabelled=[3, 7, 8, 20, 21, 40])
    assert _select(name, state, 4).tolist() == [3, 7, 8, 20]
    assert _select(name, state, 4, seed=999).tolist() == [3, 7, 8, 20]  # the rng plays no part


@pytest.mark.parametrize("name", ["margin", "confidence", "entropy"])
def test_non_finite_probabilities_raise(name: str) -> None:
    state = _state([[0.5, 0.5], [np.nan, 0.5]])
    with pytest.raises(DataError, match="NaN"):
        _select(name, state, 1)


def _random_state(n_pool: int = 50, labelled: tuple[int, ...] = (0, 5, 9, 33)) -> PoolState:
    unlabelled = np.setdiff1d(np.arange(n_pool), labelled)
    return PoolState(unlabelled=unlabelled.astype(np.int64), labelled=np.asarray(labelled, dtype=np.int64))


def test_random_is_reproducible_for_the_same_seed_and_differs_across_seeds() -> None:
    state = _random_state()
    first = _select("random", state, 10, seed=1)
    assert np.array_equal(first, _select("random", state, 10, seed=1))
    assert not np.array_equal(first, _select("random", state, 10, seed=2))


def test_random_never_repeats_and_never_returns_labelled_indices() -> None:
    state = _random_state()
    for seed in range(5):
        selected = _select("random", state, len(state.unlabelled), seed=seed)
        assert len(np.unique(selected)) == len(selected) == len(state.unlabelled)
        assert not np.isin(selected, state.labelled).any()
        assert set(selected.tolist()) == set(state.unlabelled.tolist())


def test_random_selection_is_not_biased_to_low_indices() -> None:
    state = _random_state(n_pool=1000, labelled=())
    selected = _select("random", state, 100, seed=0)
    assert 300 < selected.mean() < 700
    assert not np.array_equal(np.sort(selected), selected)  # returned in draw order, not sorted


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_budget_larger_than_the_unlabelled_pool_raises(name: str) -> None:
    state = _state(np.full((4, 3), 1 / 3), unlabelled=[1, 2, 3, 4], labelled=[0])
    with pytest.raises(ConfigError, match="budget 5 exceeds the 4 unlabelled"):
        get_strategy(name).select(state, 5, np.random.default_rng(0))


def test_unknown_strategy_raises_listing_the_available_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_strategy("badgee")
    message = str(info.value)
    assert "badgee" in message
    for name in ("margin", "confidence", "entropy", "random"):
        assert name in message


def test_registry_holds_the_strategies_the_schema_allows() -> None:
    from asvp.config import load_schema

    allowed = set(load_schema()["properties"]["strategies"]["items"]["enum"])
    assert allowed == set(STRATEGIES) == {"margin", "confidence", "entropy", "random", "coreset", "badge", "activeft"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("budget", [1, 7, 30])
def test_every_strategy_returns_exactly_budget_unique_unlabelled_indices(name: str, budget: int) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(30, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    unlabelled = np.sort(rng.choice(100, size=30, replace=False)).astype(np.int64)
    labelled = np.setdiff1d(np.arange(100), unlabelled)[:10]
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    state = PoolState(unlabelled=unlabelled, labelled=labelled, probabilities=probs.astype(np.float32),
                      embeddings=embeddings[:30], labelled_embeddings=embeddings[30:])
    selected = _select(name, state, budget)
    assert selected.dtype == np.int64
    assert len(selected) == budget
    assert len(np.unique(selected)) == budget
    assert np.isin(selected, unlabelled).all()
    assert not np.isin(selected, labelled).any()
