"""Tests for the coreset strategy: exact k-center greedy (Sener & Savarese 2018), lazy and chunked."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import asvp.strategies.coreset  # noqa: F401  (registers "coreset")
from asvp.errors import ConfigError, DataError
from asvp.strategies import PoolState, get_strategy
from asvp.strategies.coreset import Coreset, kcenter_greedy, kcenter_greedy_reference


def brute_force_kcenter(pool: np.ndarray, labelled: np.ndarray, budget: int, first: int | None) -> tuple[list[int], np.ndarray]:
    """The textbook loop on full float64 distance matrices: (row positions in pick order, (U,)
    min squared distance to the labelled rows). `first`: the start row when nothing is labelled."""
    x, lab = pool.astype(np.float64), labelled.astype(np.float64)
    pool_sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    mind = ((x[:, None, :] - lab[None, :, :]) ** 2).sum(axis=-1).min(axis=1) if len(lab) else np.full(len(x), np.inf)
    before = mind.copy()
    picks: list[int] = []
    for _ in range(budget):
        p = first if first is not None and not picks else int(np.argmax(mind))  # first max: lowest row
        picks.append(p)
        mind = np.minimum(mind, pool_sq[p])
        mind[picks] = -np.inf
    return picks, before


def clustered_pool(seed: int, dtype: type, n_labelled: int, quantised: bool) -> tuple[PoolState, np.ndarray, np.ndarray]:
    """A pool of 5 clusters with duplicated rows, over non-contiguous pool indices.

    quantised: coordinates are multiples of 0.5, so every squared distance is exact in any
    summation order and many distinct pairs tie exactly (the tie rule is exercised, not just
    the duplicates)."""
    rng = np.random.default_rng(seed)
    n_rows, dim = int(rng.integers(150, 300)), int(rng.integers(3, 24))
    centres = rng.integers(-8, 9, size=(5, dim)).astype(np.float64)
    noise = rng.integers(-2, 3, size=(n_rows + n_labelled, dim)) * 0.5 if quantised else rng.standard_normal((n_rows + n_labelled, dim))
    points = (centres[rng.integers(0, 5, n_rows + n_labelled)] + noise).astype(dtype)
    points[rng.integers(0, n_rows, 25)] = points[rng.integers(0, n_rows, 25)]  # duplicates
    pool, labelled = points[:n_rows], points[n_rows:]
    if n_labelled:
        labelled[:2] = pool[:2]  # unlabelled rows sitting on a labelled one: distance 0
    indices = rng.permutation(n_rows + n_labelled + 40)
    state = PoolState(unlabelled=np.sort(indices[:n_rows]), labelled=indices[n_rows : n_rows + n_labelled],
                      embeddings=pool, labelled_embeddings=labelled)
    return state, pool, labelled


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("n_labelled", [0, 7])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_kcenter_pick_for_pick(seed: int, dtype: type, n_labelled: int, quantised: bool) -> None:
    state, pool, labelled = clustered_pool(seed, dtype, n_labelled, quantised)
    budget = len(pool) // 3
    first = int(np.random.default_rng(seed).integers(len(pool))) if n_labelled == 0 else None
    expected, before = brute_force_kcenter(pool, labelled, budget, first)

    # chunks and blocks far smaller than the pool, so every boundary is crossed
    selected, scores = Coreset(chunk_size=37, block_rows=16).select(state, budget, np.random.default_rng(seed))
    assert selected.dtype == np.int64 and scores.dtype == np.float64 and scores.shape == (len(pool),)
    assert selected.tolist() == state.unlabelled[expected].tolist()
    np.testing.assert_allclose(scores, np.sqrt(before), rtol=1e-12)

    reference, ref_sq = kcenter_greedy_reference(pool, labelled if n_labelled else None, budget, np.random.default_rng(seed), chunk_size=37)
    assert reference.tolist() == expected
    fast, fast_sq = kcenter_greedy(pool, labelled if n_labelled else None, budget, np.random.default_rng(seed))
    assert fast.tolist() == expected
    assert np.array_equal(fast_sq, ref_sq)  # bit-identical: both store the same exact distances


def test_fast_and_reference_agree_on_a_larger_float16_pool() -> None:
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((40, 64)) * 3
    pool = np.maximum(centres[rng.integers(0, 40, 3000)] + rng.standard_normal((3000, 64)), 0).astype(np.float16)
    labelled = pool[rng.choice(3000, 50, replace=False)] + np.float16(0.25)
    fast, fast_sq = kcenter_greedy(pool, labelled, 300, np.random.default_rng(0), chunk_size=1000, block_rows=256)
    reference, ref_sq = kcenter_greedy_reference(pool, labelled, 300, np.random.default_rng(0), chunk_size=1000)
    assert fast.tolist() == reference.tolist()
    assert np.array_equal(fast_sq, ref_sq)


@pytest.mark.parametrize("block_rows", [2, 2048])
def test_ties_go_to_the_lowest_pool_index(block_rows: int) -> None:
    # labelled at the origin; pool indices 5, 7 (a duplicate pair), 8 and 9 all lie at distance 4
    pool = np.array([[1, 0], [4, 0], [4, 0], [0, -4], [0, 4]], dtype=np.float32)
    state = PoolState(unlabelled=np.array([3, 5, 7, 8, 9]), labelled=np.array([0]),
                      embeddings=pool, labelled_embeddings=np.zeros((1, 2), dtype=np.float32))
    selected, scores = Coreset(chunk_size=3, block_rows=block_rows).select(state, 5, np.random.default_rng(0))
    # 5 first (four-way tie at 4); its duplicate 7 drops to 0; 8 and 9 still tie at 4 (both are
    # 4 * sqrt(2) from 5), so 8; then 9; then 3 (distance 1) before 7 (distance 0).
    assert selected.tolist() == [5, 8, 9, 3, 7]
    assert scores.tolist() == [1.0, 4.0, 4.0, 4.0, 4.0]


def test_without_labelled_rows_the_first_centre_is_drawn_with_rng_and_scores_are_infinite() -> None:
    pool = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    state = PoolState(unlabelled=np.arange(100, 150), labelled=np.zeros(0, dtype=np.int64), embeddings=pool)
    selected, scores = get_strategy("coreset").select(state, 3, np.random.default_rng(9))
    assert selected[0] == 100 + np.random.default_rng(9).integers(50)
    assert np.isposinf(scores).all()


def test_reads_embeddings_from_an_h5py_dataset(tmp_path: Path) -> None:
    state, pool, labelled = clustered_pool(5, np.float16, 6, quantised=False)
    path = tmp_path / "proxy_outputs.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("hidden", data=pool, chunks=(32, pool.shape[1]))
        handle.create_dataset("labelled_hidden", data=labelled)
    in_memory, memory_scores = Coreset(chunk_size=50, block_rows=20).select(state, 40, np.random.default_rng(0))
    with h5py.File(path, "r") as handle:
        on_disk = PoolState(unlabelled=state.unlabelled, labelled=state.labelled,
                            embeddings=handle["hidden"], labelled_embeddings=handle["labelled_hidden"])
        selected, scores = Coreset(chunk_size=50, block_rows=20).select(on_disk, 40, np.random.default_rng(0))
    assert selected.tolist() == in_memory.tolist()
    assert np.array_equal(scores, memory_scores)


def test_budget_larger_than_the_unlabelled_pool_raises_config_error_naming_it() -> None:
    state, pool, _ = clustered_pool(0, np.float32, 3, quantised=False)
    with pytest.raises(ConfigError, match=f"round budget {len(pool) + 1} exceeds the {len(pool)} unlabelled"):
        get_strategy("coreset").select(state, len(pool) + 1, np.random.default_rng(0))


def test_picks_are_distinct_unlabelled_and_the_same_for_the_same_inputs() -> None:
    state, pool, _ = clustered_pool(1, np.float16, 4, quantised=True)
    first, _ = get_strategy("coreset").select(state, len(pool), np.random.default_rng(0))  # the whole pool
    again, _ = get_strategy("coreset").select(state, len(pool), np.random.default_rng(123))
    assert len(set(first.tolist())) == len(pool)
    assert set(first.tolist()) == set(state.unlabelled.tolist())
    assert first.tolist() == again.tolist()  # labelled rows exist: the rng is never used


def test_nan_embeddings_raise_data_error_naming_the_row() -> None:
    pool = np.ones((10, 3), dtype=np.float32)
    pool[4, 1] = np.nan
    state = PoolState(unlabelled=np.arange(10), labelled=np.zeros(0, dtype=np.int64), embeddings=pool)
    with pytest.raises(DataError, match="row 4"):
        get_strategy("coreset").select(state, 2, np.random.default_rng(0))


def test_missing_labelled_embeddings_raise_data_error() -> None:
    state = PoolState(unlabelled=np.arange(5), labelled=np.array([7, 8]), embeddings=np.ones((5, 2), dtype=np.float32))
    with pytest.raises(DataError, match="2 labelled images"):
        get_strategy("coreset").select(state, 1, np.random.default_rng(0))


def test_registered_as_coreset_needing_embeddings() -> None:
    strategy = get_strategy("coreset")
    assert isinstance(strategy, Coreset)
    assert strategy.needs == frozenset({"embeddings"})
