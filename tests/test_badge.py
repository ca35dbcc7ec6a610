"""Tests for BADGE (asvp.strategies.badge): factorised distances, exact pruned k-means++, D^2 draws.

The module is imported by a fixture, at test time: importing it registers "badge", and
test_strategies.py parametrises over the registry when it is collected, with pools that have no
embeddings.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest

from asvp.errors import ConfigError, DataError
from asvp.strategies import kmeanspp
from asvp.strategies.base import STRATEGIES, PoolState, get_strategy


@pytest.fixture
def badge() -> ModuleType:
    return importlib.import_module("asvp.strategies.badge")


def _clustered(n: int, classes: int = 8, dim: int = 16, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (n, classes) float32 and embeddings (n, dim) float32 with class clusters.

    shift > 0 makes the embeddings signed (like backbone features), which turns off the sharper
    cross-class bound that needs h >= 0.
    """
    rng = np.random.default_rng(seed)
    means = np.maximum(rng.standard_normal((classes, dim)), 0.0) * 2.0
    truth = rng.integers(0, classes, n)
    h = np.maximum(means[truth] + 0.5 * rng.standard_normal((n, dim)), 0.0) - shift
    logits = 1.5 * (h @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32), h.astype(np.float32)


def _gradient_embeddings(p: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The (n, C*D) gradient embeddings, materialised: only for tiny pools in tests."""
    a = p.astype(np.float64)
    a[np.arange(len(a)), a.argmax(axis=1)] -= 1.0
    return np.einsum("ic,id->icd", a, h.astype(np.float64)).reshape(len(a), -1)


def _state(p: np.ndarray, h: object, unlabelled: np.ndarray | None = None) -> PoolState:
    pool = np.arange(len(p), dtype=np.int64) if unlabelled is None else unlabelled
    return PoolState(unlabelled=pool, labelled=np.zeros(0, dtype=np.int64), probabilities=p, embeddings=h)


def test_factorised_distances_equal_explicit_outer_product_distances(badge: ModuleType) -> None:
    p, h = _clustered(40, classes=5, dim=7, seed=3)
    g = _gradient_embeddings(p, h)
    pool = kmeanspp.prepare(p, h, chunk_rows=16)
    np.testing.assert_allclose(pool.s, (g * g).sum(axis=1), rtol=1e-10)
    for c in (0, 17, 39):
        d = kmeanspp._distances(pool, np.arange(40), kmeanspp._centre(pool, c), chunk_rows=16)
        np.testing.assert_allclose(d, ((g - g[c]) ** 2).sum(axis=1), rtol=1e-5, atol=1e-5)
        assert d[c] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shift", [0.0, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_selection_equals_the_reference_pick_for_pick(badge: ModuleType, seed: int, shift: float, dtype: type) -> None:
    p, h = _clustered(1500, seed=seed, shift=shift)
    h = h.astype(dtype)
    stats: dict[str, int] = {}
    fast = kmeanspp.kmeanspp(p, h, 120, np.random.default_rng(seed), chunk_rows=256, stats=stats)
    reference = kmeanspp.kmeanspp_reference(p, h, 120, np.random.default_rng(seed), chunk_rows=333)
    assert fast.tolist() == reference.tolist()
    assert stats["distance_rows"] < 0.5 * 119 * 1500  # the pruning does prune


def _sparse(n: int, signed: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Adversarial pool with 4 classes and 3 embedding dimensions, where the cross-class bound is
    attained: rows 0-3 put their off-argmax mass on one shared class with parallel embeddings
    (Cauchy-Schwarz tight), rows 4-7 are mirrored two-class rows such as (0.6, 0.4, 0, 0) and
    (0.3, 0.7, 0, 0) with orthogonal (h >= 0) or opposite (signed) embeddings; the rest are
    random probabilities with exact zeros."""
    rng = np.random.default_rng(seed)
    p = np.zeros((n, 4))
    for i in range(n):
        support = rng.choice(4, size=rng.integers(1, 4), replace=False)
        p[i, support] = rng.dirichlet(np.full(len(support), 0.5))
    p[:8] = [
        [0.6, 0, 0.4, 0], [0, 0.7, 0.3, 0], [0, 0, 0.35, 0.65], [0, 0.8, 0.2, 0],
        [0.6, 0.4, 0, 0], [0.3, 0.7, 0, 0], [0, 0, 0.55, 0.45], [0, 0, 0.2, 0.8],
    ]  # fmt: skip
    h = rng.standard_normal((n, 3)) if signed else rng.exponential(size=(n, 3)) * (rng.random((n, 3)) < 0.7)
    h[:4] = np.outer([1.0, 2.0, 0.5, 3.0], h[0] if signed else [1.0, 0.5, 2.0])
    h[4:8] = [[1, -2, 0.5], [-1, 2, -0.5], [0.3, 1, 1], [-0.6, -2, -2]] if signed else [[1, 0, 0], [0, 2, 0], [0, 0, 1], [3, 1, 0]]
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32), h.astype(np.float32)


@pytest.mark.parametrize("signed", [False, True])
def test_lower_bounds_never_exceed_the_true_distance(badge: ModuleType, signed: bool) -> None:
    p, h = _sparse(240, signed)
    pool = kmeanspp.prepare(p, h, chunk_rows=64)
    assert pool.probs_ok and pool.h_nonneg is not signed
    g = _gradient_embeddings(p, h)
    every = np.arange(len(p))
    pruner = kmeanspp._Pruner(pool, np.zeros(len(p) + 1))
    tight = 0
    for c in range(len(p)):
        centre = kmeanspp._centre(pool, c)
        true = ((g - g[c]) ** 2).sum(axis=1)
        lb = kmeanspp._lower_bound(pool, centre, kmeanspp._point_ranges(pool, every))
        slack = 1e-9 * (pool.s + pool.s[c])
        assert (lb <= true + slack).all(), np.flatnonzero(lb > true + slack)[:5]
        assert (kmeanspp._lower_bound(pool, centre, pruner.ranges)[pruner.block_of] <= lb + slack).all()
        tight += int((np.abs(lb - true) <= slack)[pool.y != pool.y[c]].sum())
    assert tight > 100  # the cross-class bound is attained, so any tightening would be caught


def test_pruned_points_could_not_have_come_closer(badge: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stronger than equal picks: at every step, each skipped point's exact distance to the new
    # centre is >= its current minimum, so min() would have left it unchanged bit for bit.
    p, h = _clustered(800, seed=5)
    survivors = kmeanspp._Pruner.survivors
    checked = []

    def checking(self: Any, c: Any) -> np.ndarray:
        rows = survivors(self, c)
        skipped = np.setdiff1d(np.arange(self.pool.size), rows)
        d = kmeanspp._distances(self.pool, skipped, c, chunk_rows=128)
        dmin = self.dmin_ext[skipped]
        assert (np.minimum(dmin, d) == dmin).all()
        checked.append(len(skipped))
        return rows

    monkeypatch.setattr(kmeanspp._Pruner, "survivors", checking)
    kmeanspp.kmeanspp(p, h, 80, np.random.default_rng(0), chunk_rows=100)
    assert len(checked) == 78 and sum(checked) > 0


def test_same_seed_same_picks_different_seed_different_picks(badge: ModuleType) -> None:
    p, h = _clustered(600, seed=1)
    strategy = get_strategy("badge")
    first, _ = strategy.select(_state(p, h), 30, np.random.default_rng(7))
    again, _ = strategy.select(_state(p, h), 30, np.random.default_rng(7))
    other, _ = strategy.select(_state(p, h), 30, np.random.default_rng(8))
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    assert first[0] == other[0]  # the first centre is deterministic: the largest |g|


def test_first_pick_is_the_max_norm_point_and_picks_are_distinct_unlabelled_indices(badge: ModuleType) -> None:
    p, h = _clustered(500, seed=2)
    unlabelled = np.arange(500, dtype=np.int64) * 3 + 11
    selected, scores = get_strategy("badge").select(_state(p, h, unlabelled), 60, np.random.default_rng(0))
    norms = np.linalg.norm(_gradient_embeddings(p, h), axis=1)
    assert selected.dtype == np.int64 and scores.dtype == np.float64 and scores.shape == (500,)
    np.testing.assert_allclose(scores, norms, rtol=1e-10)
    assert selected[0] == unlabelled[np.argmax(norms)]
    assert len(set(selected.tolist())) == 60 and set(selected.tolist()) <= set(unlabelled.tolist())


def test_max_norm_ties_go_to_the_lowest_pool_index(badge: ModuleType) -> None:
    p, h = _clustered(50, seed=4)
    top = int(np.argmax(np.linalg.norm(_gradient_embeddings(p, h), axis=1)))
    p[[20, 30]] = p[top]
    h[[20, 30]] = h[top] * 10.0  # rows 20 and 30: the same, largest |g|
    selected, _ = get_strategy("badge").select(_state(p, h), 1, np.random.default_rng(0))
    assert selected.tolist() == [20]


def test_duplicates_of_a_picked_point_are_never_drawn(badge: ModuleType) -> None:
    p, h = _clustered(10, seed=6)
    p, h = np.repeat(p, 5, axis=0), np.repeat(h, 5, axis=0)  # 10 distinct points, 5 copies each
    for seed in range(5):
        selected, _ = get_strategy("badge").select(_state(p, h), 10, np.random.default_rng(seed))
        assert sorted((selected // 5).tolist()) == list(range(10))


def test_float64_inputs_are_not_modified(badge: ModuleType) -> None:
    p, h = _clustered(300, seed=9)
    p64, h64 = p.astype(np.float64), h.astype(np.float64)
    picks = kmeanspp.kmeanspp(p64, h64, 20, np.random.default_rng(0), chunk_rows=64)
    assert np.array_equal(p64, p.astype(np.float64)) and np.array_equal(h64, h.astype(np.float64))
    assert picks.tolist() == kmeanspp.kmeanspp_reference(p64, h64, 20, np.random.default_rng(0)).tolist()


def test_when_every_distance_is_zero_the_lowest_unpicked_indices_follow(badge: ModuleType) -> None:
    p = np.tile(np.float32([0.7, 0.2, 0.1]), (6, 1))
    h = np.ones((6, 4), dtype=np.float32)
    fast = kmeanspp.kmeanspp(p, h, 4, np.random.default_rng(0))
    assert fast.tolist() == [0, 1, 2, 3] == kmeanspp.kmeanspp_reference(p, h, 4, np.random.default_rng(0)).tolist()


def test_draw_is_the_first_index_whose_running_sum_exceeds_u(badge: ModuleType) -> None:
    rng = np.random.default_rng(0)
    sampler = kmeanspp._D2Sampler(10_000)
    sampler.w[:10_000] = rng.exponential(size=10_000) * (rng.random(10_000) < 0.3)
    sampler.rebuild()
    picked = np.zeros(10_000, dtype=bool)
    draws, twin = np.random.default_rng(1), np.random.default_rng(1)
    running = np.cumsum(sampler.w[:10_000])
    for _ in range(200):
        expected = int(np.searchsorted(running, twin.random() * running[-1], side="right"))
        assert sampler.draw(draws, picked) == expected


def test_draws_follow_the_d2_distribution_and_updates_keep_the_sums_exact(badge: ModuleType) -> None:
    sampler = kmeanspp._D2Sampler(5000)
    sampler.w[:5000] = 0.0
    sampler.w[[3, 100, 4999]] = [1.0, 3.0, 6.0]
    sampler.rebuild()
    sampler.w[100] = 0.0
    sampler.w[2500] = 3.0
    sampler.update(np.array([100, 2500]))
    rng, picked = np.random.default_rng(0), np.zeros(5000, dtype=bool)
    counts = np.bincount([sampler.draw(rng, picked) for _ in range(4000)], minlength=5000)
    assert set(np.flatnonzero(counts)) == {3, 2500, 4999}
    np.testing.assert_allclose(counts[[3, 2500, 4999]] / 4000, [0.1, 0.3, 0.6], atol=0.03)


def test_h5py_inputs_give_the_same_picks_as_arrays(badge: ModuleType, tmp_path: Path) -> None:
    p, h = _clustered(700, seed=8)
    with h5py.File(tmp_path / "proxy.h5", "w") as f:
        f["p"], f["h"], f["h16"] = p, h, h.astype(np.float16)
    with h5py.File(tmp_path / "proxy.h5", "r") as f:
        from_h5 = kmeanspp.kmeanspp(f["p"], f["h"], 40, np.random.default_rng(3), chunk_rows=128)
        from_h5_16 = kmeanspp.kmeanspp(f["p"], f["h16"], 40, np.random.default_rng(3), chunk_rows=128)
        selected, _ = get_strategy("badge").select(_state(f["p"], f["h"]), 40, np.random.default_rng(3))
    assert from_h5.tolist() == selected.tolist() == kmeanspp.kmeanspp(p, h, 40, np.random.default_rng(3)).tolist()
    assert from_h5_16.tolist() == kmeanspp.kmeanspp(p, h.astype(np.float16), 40, np.random.default_rng(3)).tolist()


def test_budget_larger_than_the_unlabelled_pool_raises_config_error(badge: ModuleType) -> None:
    p, h = _clustered(20)
    with pytest.raises(ConfigError, match="exceeds the 20 unlabelled"):
        get_strategy("badge").select(_state(p, h), 21, np.random.default_rng(0))


@pytest.mark.parametrize("which", ["probabilities", "embeddings"])
def test_nan_inputs_raise_data_error_naming_the_row(badge: ModuleType, which: str) -> None:
    p, h = _clustered(30)
    (p if which == "probabilities" else h)[12, 1] = np.nan
    with pytest.raises(DataError, match=f"{which} hold NaN/Inf .*row 12"):
        get_strategy("badge").select(_state(p, h), 3, np.random.default_rng(0))


def test_mismatched_rows_raise_data_error(badge: ModuleType) -> None:
    p, h = _clustered(30)
    with pytest.raises(DataError, match="must match"):
        get_strategy("badge").select(_state(p, h[:29]), 3, np.random.default_rng(0))


def test_registered_under_badge_with_its_needs(badge: ModuleType) -> None:
    assert "badge" in STRATEGIES
    strategy = get_strategy("badge")
    assert isinstance(strategy, badge.Badge)
    assert strategy.needs == frozenset({"probabilities", "embeddings"})


def test_approximate_mode_picks_only_candidates_and_is_seeded(badge: ModuleType) -> None:
    p, h = _clustered(2000, seed=9)
    picks = kmeanspp.kmeanspp_approximate(p, h, 30, np.random.default_rng(4), candidates=300)
    again = kmeanspp.kmeanspp_approximate(p, h, 30, np.random.default_rng(4), candidates=300)
    assert picks.tolist() == again.tolist() and len(set(picks.tolist())) == 30
    # The candidates are the first draw of the rng: every pick is one of them.
    candidates = np.sort(np.random.default_rng(4).choice(2000, size=300, replace=False))
    assert set(picks.tolist()) <= set(candidates.tolist())
    # Exact BADGE on those candidates alone picks the same rows.
    rng = np.random.default_rng(4)
    rng.choice(2000, size=300, replace=False)
    assert picks.tolist() == candidates[kmeanspp.kmeanspp(p[candidates], h[candidates], 30, rng)].tolist()


def test_projection_keeps_gradient_norms_close_and_runs_on_h5py(badge: ModuleType, tmp_path: Path) -> None:
    p, h = _clustered(600, dim=256, seed=10)
    with h5py.File(tmp_path / "proxy.h5", "w") as f:
        f["p"], f["h"] = p, h
    with h5py.File(tmp_path / "proxy.h5", "r") as f:
        picks = kmeanspp.kmeanspp_approximate(f["p"], f["h"], 20, np.random.default_rng(5), projection_dim=64)
    assert picks.tolist() == kmeanspp.kmeanspp_approximate(p, h, 20, np.random.default_rng(5), projection_dim=64).tolist()
    projection = np.random.default_rng(5).standard_normal((256, 64)) / 8.0
    ratio = np.linalg.norm(h @ projection, axis=1) / np.linalg.norm(h, axis=1)
    assert np.all(np.abs(ratio - 1.0) < 0.5) and abs(np.median(ratio) - 1.0) < 0.1  # Johnson-Lindenstrauss, 64 dims


def test_strategy_options_select_the_approximate_mode_and_bad_ones_are_config_errors(badge: ModuleType) -> None:
    p, h = _clustered(500, seed=11)
    unlabelled = np.arange(100, 600, dtype=np.int64)
    selected, scores = get_strategy("badge", {"candidates": 80}).select(_state(p, h, unlabelled), 10, np.random.default_rng(6))
    expected = kmeanspp.kmeanspp_approximate(p, h, 10, np.random.default_rng(6), candidates=80)
    assert selected.tolist() == (unlabelled[expected]).tolist() and scores.shape == (500,)
    with pytest.raises(ConfigError, match="candidates .* at least the round budget"):
        get_strategy("badge", {"candidates": 5}).select(_state(p, h, unlabelled), 10, np.random.default_rng(6))
    with pytest.raises(ConfigError, match="strategy_options.badge"):
        get_strategy("badge", {"candidate": 80})


def _kmeans_cost(g: np.ndarray, picks: np.ndarray) -> float:
    """Mean squared distance of every row to its nearest pick (explicit embeddings)."""
    centres = g[picks]
    d = (g * g).sum(1)[:, None] + (centres * centres).sum(1)[None, :] - 2.0 * g @ centres.T
    return float(np.maximum(d.min(axis=1), 0.0).mean())


def test_picks_cover_a_clustered_pool_as_plain_kmeanspp_does_and_better_than_uniform_picks(badge: ModuleType) -> None:
    # The property BADGE is chosen for, on explicit (C x D) gradient embeddings: exact and
    # approximate BADGE seed k-means as well as a plain k-means++ over the materialised
    # embeddings, and clearly better than uniform random picks. Averages over seeds: each run
    # is a random draw.
    p, h = _clustered(1200, classes=6, dim=8, seed=3)
    g = _gradient_embeddings(p, h)
    sq = (g * g).sum(1)

    def plain_kmeanspp(k: int, rng: np.random.Generator) -> np.ndarray:
        picks, dmin = [int(np.argmax(sq))], ((g - g[int(np.argmax(sq))]) ** 2).sum(1)
        for _ in range(k - 1):
            picks.append(int(rng.choice(len(g), p=dmin / dmin.sum())))
            dmin = np.minimum(dmin, ((g - g[picks[-1]]) ** 2).sum(1))
        return np.asarray(picks)

    k, seeds = 80, range(6)
    ours = np.mean([_kmeans_cost(g, kmeanspp.kmeanspp(p, h, k, np.random.default_rng(s))) for s in seeds])
    approximate = np.mean([_kmeans_cost(g, kmeanspp.kmeanspp_approximate(p, h, k, np.random.default_rng(s), candidates=600))
                           for s in seeds])
    plain = np.mean([_kmeans_cost(g, plain_kmeanspp(k, np.random.default_rng(100 + s))) for s in seeds])
    uniform = np.mean([_kmeans_cost(g, np.random.default_rng(200 + s).choice(len(g), k, replace=False)) for s in seeds])
    assert ours <= 1.15 * plain and approximate <= 1.3 * plain, (ours, approximate, plain)
    assert ours < 0.85 * uniform, (ours, uniform)
