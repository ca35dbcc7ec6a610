"""Tests for asvp.ped: PED class repulsion (lixiaotong97/PED behaviour, O(C x D) memory)."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

import asvp.ped
from asvp.errors import DataError
from asvp.ped import PEDResult, ped

STANDARD_2D = np.array([[-1.0, -1.0], [1.0, 1.0]])  # per-dimension mean 0 and std 1


def _literal_ped(x, y, ref, step=0.1, nsigma=0.6, exit_ratio=0.5, max_steps=6, constant=1.0):
    """Straightforward PED as the reference code does it: stats recomputed from the moved
    samples every step, pair by pair (O(C^2 D) time, fine for tiny cases)."""
    center = ref.mean(axis=0)
    scale = np.maximum(ref.std(axis=0), 1e-3)
    z = (x - center) / scale
    classes = np.unique(y)
    energies, e0, n_steps = [], None, 0
    while n_steps < max_steps:
        means = np.stack([z[y == c].mean(axis=0) for c in classes])
        radii = np.array([np.sqrt(z[y == c].var(axis=0).sum()) for c in classes])
        delta = np.zeros_like(means)
        for a in range(len(classes)):
            for b in range(a + 1, len(classes)):
                direction = means[b] - means[a]
                dist = np.linalg.norm(direction)
                overlap = max(nsigma * radii[a] + nsigma * radii[b] - dist, 0.0)
                length = min(0.5 * step**2 * constant * overlap, overlap)
                delta[a] -= length * direction / dist
                delta[b] += length * direction / dist
        energy = np.abs(delta).sum()
        energies.append(energy)
        if e0 is None:
            e0 = energy
        if not (e0 > 0 and energy / e0 > exit_ratio):
            break
        for i, c in enumerate(classes):
            z[y == c] += delta[i]
        n_steps += 1
    return z * scale + center, n_steps, energies


def _blobs(rng, n_classes, per_class, dim, spread, noise):
    centres = spread * rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    return centres[labels] + noise * rng.normal(size=(labels.size, dim)), labels


def _class_mean(x, labels, c):
    return x[labels == c].mean(axis=0)


def test_well_separated_classes_take_zero_steps_and_leave_features_unchanged():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, n_classes=4, per_class=20, dim=8, spread=50.0, noise=0.1)
    result = ped(x, y, x)
    assert isinstance(result, PEDResult)
    assert result.n_steps == 0
    assert result.energies == [0.0] and result.ratios == [0.0]
    assert np.array_equal(result.features, x)
    assert result.features.dtype == np.float64 and result.features is not x


def test_overlapping_classes_run_all_six_default_steps():
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, n_classes=5, per_class=30, dim=16, spread=0.5, noise=1.0)
    result = ped(x, y, x)
    # Each default step shrinks an overlap by ~1 %, so E_t / E_0 stays near 1 > 0.5.
    assert result.n_steps == 6
    assert len(result.energies) == 6 and len(result.ratios) == 6
    assert result.ratios[0] == 1.0
    assert all(0.5 < r <= 1.0 for r in result.ratios)


def test_overlapping_pair_of_classes_moves_means_further_apart():
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, n_classes=2, per_class=40, dim=6, spread=0.5, noise=1.0)
    result = ped(x, y, x)
    before = np.linalg.norm(_class_mean(x, y, 1) - _class_mean(x, y, 0))
    after = np.linalg.norm(_class_mean(result.features, y, 1) - _class_mean(result.features, y, 0))
    assert result.n_steps > 0
    assert after > before


def test_every_class_is_translated_rigidly():
    rng = np.random.default_rng(3)
    x, y = _blobs(rng, n_classes=4, per_class=25, dim=10, spread=0.5, noise=1.0)
    result = ped(x, y, x)
    assert result.n_steps > 0
    for c in range(4):
        offsets = result.features[y == c] - x[y == c]
        np.testing.assert_allclose(offsets, np.broadcast_to(offsets[0], offsets.shape), atol=1e-12)
        assert np.linalg.norm(offsets[0]) > 0


@pytest.mark.parametrize(("pair_rows", "row_chunk"), [(256, 8192), (2, 7)])
def test_matches_literal_pairwise_loop_that_recomputes_class_stats_each_step(
    monkeypatch, pair_rows, row_chunk
):
    # Small block sizes exercise the blocked pair matrices and the chunked sample passes.
    monkeypatch.setattr(asvp.ped, "_PAIR_ROWS", pair_rows)
    monkeypatch.setattr(asvp.ped, "_ROW_CHUNK", row_chunk)
    rng = np.random.default_rng(4)
    x, y = _blobs(rng, n_classes=5, per_class=12, dim=7, spread=0.7, noise=1.0)
    y = np.array([3, 10, 11, 42, 7])[y]  # arbitrary, non-contiguous label values
    ref = rng.normal(loc=0.3, scale=2.0, size=(200, 7))
    for kwargs in ({}, {"step": 0.7, "nsigma": 1.0, "exit_ratio": 0.1}):
        expected, n_steps, energies = _literal_ped(x, y, ref, **kwargs)
        result = ped(x, y, ref, **kwargs)
        assert result.n_steps == n_steps
        np.testing.assert_allclose(result.energies, energies, rtol=1e-10)
        np.testing.assert_allclose(result.features, expected, rtol=1e-10, atol=1e-12)


def test_hand_checked_single_step_in_two_dimensions():
    # Reference: mean (1, -2), std (2, 0.5). In rescaled space class 0 = {(-0.5, 0), (0.5, 0)}
    # (mean (0, 0), R = 0.5) and class 1 = {(0.3, -0.1), (0.3, 0.9)} (mean (0.3, 0.4), R = 0.5).
    # d = 0.5, O = 0.6 * 0.5 + 0.6 * 0.5 - 0.5 = 0.1, s = 0.5 * 0.1^2 * 0.1 = 5e-4 along
    # e = (0.6, 0.8): class 0 moves by (-3e-4, -4e-4), class 1 by (+3e-4, +4e-4), E = 1.4e-3.
    # In original units (times the std): class 0 by (-6e-4, -2e-4), class 1 by (6e-4, 2e-4).
    reference = np.array([[-1.0, -2.5], [3.0, -1.5]])
    center, scale = np.array([1.0, -2.0]), np.array([2.0, 0.5])
    z = np.array([[-0.5, 0.0], [0.5, 0.0], [0.3, -0.1], [0.3, 0.9]])
    x = z * scale + center
    y = np.array([0, 0, 1, 1])
    result = ped(x, y, reference, max_steps=1)
    assert result.n_steps == 1
    np.testing.assert_allclose(result.energies, [1.4e-3], rtol=1e-9)
    assert result.ratios == [1.0]
    expected_shift = np.array([[-6e-4, -2e-4], [-6e-4, -2e-4], [6e-4, 2e-4], [6e-4, 2e-4]])
    np.testing.assert_allclose(result.features - x, expected_shift, rtol=1e-9, atol=1e-15)


def test_large_step_stops_after_exactly_one_accepted_step():
    # step = 1.5 gives s = min(1.125 O, O) = O: each ball moves by the whole overlap, the gap
    # grows by 2 O, no pair overlaps any more, E_1 = 0 and the ratio 0 <= 0.5 rejects step 1.
    z = np.array([[-0.5, 0.0], [0.5, 0.0], [0.3, -0.1], [0.3, 0.9]])
    y = np.array([0, 0, 1, 1])
    result = ped(z, y, STANDARD_2D, step=1.5)
    assert result.n_steps == 1
    assert result.ratios == [1.0, 0.0]
    np.testing.assert_allclose(result.energies, [2 * 0.1 * 1.4, 0.0], atol=1e-12)
    gap = np.linalg.norm(_class_mean(result.features, y, 1) - _class_mean(result.features, y, 0))
    np.testing.assert_allclose(gap, 0.5 + 2 * 0.1, rtol=1e-12)


def test_exit_ratio_comparison_is_strict_so_ratio_one_rejects_even_step_zero():
    # The reference accepts a step only while E_t / E_0 > exit_ratio; step 0 has ratio 1.
    z = np.array([[-0.5, 0.0], [0.5, 0.0], [0.3, -0.1], [0.3, 0.9]])
    result = ped(z, np.array([0, 0, 1, 1]), STANDARD_2D, exit_ratio=1.0)
    assert result.n_steps == 0 and result.ratios == [1.0]
    assert np.array_equal(result.features, z)


def test_identical_class_means_are_pushed_apart_along_first_axis_without_nan():
    # Two differently shaped classes centred on the same point: the reference divides by zero.
    z = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 2.0], [0.0, 1.0, -2.0]])
    y = np.array([0, 0, 1, 1])
    reference = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    result = ped(z, y, reference, max_steps=1)
    assert np.all(np.isfinite(result.features)) and np.all(np.isfinite(result.energies))
    assert result.n_steps == 1
    # O = 0.6 * (1 + sqrt(5)), s = 0.005 * O: class 0 to -x, class 1 to +x, nothing else moves.
    s = 0.005 * 0.6 * (1.0 + np.sqrt(5.0))
    np.testing.assert_allclose(_class_mean(result.features, y, 0), [-s, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(_class_mean(result.features, y, 1), [s, 0.0, 0.0], atol=1e-15)


def test_nearly_identical_means_far_from_the_rest_get_exact_distance_and_direction():
    # A far third class makes |mu|^2 ~ 1e5 while the close pair is 1e-6 apart: the Gram form
    # |a|^2 + |b|^2 - 2 a.b would lose d^2 = 1e-12 entirely, so such pairs are recomputed.
    x = np.array(
        [[0.0, -1.0], [0.0, 1.0], [-1.0, 1e-6], [1.0, 1e-6], [1000.0, 0.0], [1000.0, 0.0]]
    )
    y = np.array([0, 0, 1, 1, 2, 2])
    result = ped(x, y, STANDARD_2D, max_steps=1)
    s = 0.005 * (0.6 * 2.0 - 1e-6)
    np.testing.assert_allclose(_class_mean(result.features, y, 0), [0.0, -s], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        _class_mean(result.features, y, 1), [0.0, 1e-6 + s], rtol=1e-9, atol=1e-15
    )
    np.testing.assert_array_equal(result.features[4:], x[4:])


def test_constant_reference_dimension_is_floored_by_eps():
    rng = np.random.default_rng(5)
    x, y = _blobs(rng, n_classes=3, per_class=10, dim=4, spread=0.3, noise=1.0)
    reference = rng.normal(size=(50, 4))
    reference[:, 2] = 7.0  # zero std: rescaled by eps instead of dividing by zero
    result = ped(x, y, reference)
    assert np.all(np.isfinite(result.features)) and result.n_steps == 6


def test_single_class_has_no_pairs_and_takes_zero_steps():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 5))
    result = ped(x, np.zeros(20, dtype=int), x)
    assert result.n_steps == 0 and result.energies == [0.0]
    assert np.array_equal(result.features, x)


def test_nan_features_raise_data_error_counting_rows():
    x = np.ones((6, 3))
    x[1, 0] = np.nan
    x[4, 2] = np.nan
    with pytest.raises(DataError, match=r"features contain NaN in 2 and Inf in 0 of 6 rows"):
        ped(x, np.arange(6) % 2, np.ones((4, 3)))


def test_infinite_reference_raises_data_error():
    reference = np.ones((4, 3))
    reference[2, 1] = np.inf
    with pytest.raises(DataError, match=r"reference contain NaN in 0 and Inf in 1"):
        ped(np.ones((6, 3)), np.arange(6) % 2, reference)


@pytest.mark.parametrize(
    ("features", "labels", "reference", "message"),
    [
        (np.ones(6), np.zeros(6), np.ones((2, 1)), "features must be a 2-D array"),
        (np.ones((6, 3)), np.zeros(5), np.ones((2, 3)), "one label per feature row"),
        (np.ones((6, 3)), np.zeros(6), np.ones((2, 4)), "reference has dimension 4"),
        (np.ones((0, 3)), np.zeros(0), np.ones((2, 3)), "features have no rows"),
    ],
)
def test_malformed_inputs_raise_data_error(features, labels, reference, message):
    with pytest.raises(DataError, match=message):
        ped(features, labels, reference)


@pytest.mark.parametrize(
    "kwargs", [{"step": 0.0}, {"nsigma": -1.0}, {"max_steps": -1}, {"max_steps": 2.5}, {"eps": 0.0}]
)
def test_invalid_parameters_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="invalid PED parameters"):
        ped(np.ones((4, 2)), np.arange(4) % 2, np.ones((4, 2)), **kwargs)


def test_many_overlapping_classes_can_stop_after_one_default_step():
    # The reference notes' "0 or all 6 steps" holds for ~10 classes. With hundreds of mutually
    # overlapping classes each class sums hundreds of 0.5 % pushes, step 0 already separates all
    # balls (E_1 ~ 0) and PED stops after exactly one step even with the default step 0.1.
    rng = np.random.default_rng(8)
    y = np.arange(1500) % 500
    x = rng.standard_normal((1500, 128))
    result = ped(x, y, x)
    assert result.n_steps == 1
    assert len(result.ratios) == 2 and result.ratios[1] < 0.01


def test_imagenet_sized_class_count_runs_in_order_c_times_d_memory():
    # C = 1000, D = 2048: the reference's two (C, C, D) float64 arrays would need 2 x 16.8 GB.
    # step = 0.01 keeps every ratio above 0.5 so that all 6 steps are computed (worst case).
    rng = np.random.default_rng(7)
    n_classes, dim = 1000, 2048
    y = np.arange(3000) % n_classes
    x = rng.standard_normal((3000, dim), dtype=np.float32)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = ped(x, y, x, step=0.01)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.n_steps == 6
    assert peak < 1e9, f"peak {peak / 1e9:.2f} GB; C*C*D*8 = {n_classes**2 * dim * 8 / 1e9:.1f} GB"
    assert elapsed < 60.0
