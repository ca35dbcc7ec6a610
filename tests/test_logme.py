"""Tests for asvp.logme: both thuml/LogME variants, label remapping and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from asvp.errors import DataError
from asvp.logme import VARIANTS, logme

EPS = 1e-5


def _matrix_form_logme(features, labels, variant):
    """LogME derived directly from the Bayesian linear model, without any SVD.

    For each one-vs-rest target y: A = alpha I + beta F^T F, m = beta A^-1 F^T y,
    gamma = D - alpha tr(A^-1), then alpha <- gamma / (|m|^2 + eps),
    beta <- (N - gamma) / (|F m - y|^2 + eps), stopping on the variant's tolerance for
    alpha / beta. The evidence is evaluated with the updated (alpha, beta) and the |m|^2,
    |F m - y|^2 of the last pass (as thuml does), with log|A| from slogdet. The fixed-point
    variant drops (D - min(N, D)) log(alpha) from log|A|, the icml variant adds eps to both
    residual terms.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    gram = f.T @ f
    tol, strict = (1e-3, False) if variant == "fixed_point" else (1e-2, True)
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            a_inv = np.linalg.inv(alpha * np.eye(d) + beta * gram)
            m = beta * a_inv @ f.T @ y
            gamma = d - alpha * np.trace(a_inv)
            m2 = m @ m
            res2 = np.sum((f @ m - y) ** 2)
            alpha, beta = gamma / (m2 + EPS), (n - gamma) / (res2 + EPS)
            change = abs(alpha / beta - t) / t
            if (change < tol) if strict else (change <= tol):
                break
        log_det = np.linalg.slogdet(alpha * np.eye(d) + beta * gram)[1]
        if variant == "fixed_point":
            log_det -= (d - min(n, d)) * np.log(alpha)
            fit = beta / 2 * res2 + alpha / 2 * m2
        else:
            fit = beta / 2 * (res2 + EPS) + alpha / 2 * (m2 + EPS)
        evidence = d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - fit
        scores.append((evidence - n / 2 * np.log(2 * np.pi)) / n)
    return float(np.mean(scores))


def _clustered(rng, n, d, n_classes, spread=1.0, noise=1.0):
    labels = np.arange(n) % n_classes
    centres = spread * rng.normal(size=(n_classes, d))
    return centres[labels] + noise * rng.normal(size=(n, d)), labels


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("n", "d"), [(40, 6), (7, 12), (12, 12)])
def test_matches_evidence_derived_from_the_matrix_form(variant, n, d):
    rng = np.random.default_rng(n * 100 + d)
    features, labels = _clustered(rng, n, d, n_classes=3, spread=1.5)
    expected = _matrix_form_logme(features, labels, variant)
    assert logme(features, labels, variant) == pytest.approx(expected, rel=1e-8)


def test_variants_agree_when_more_samples_than_dimensions():
    # With N > D no eigenvalue is zero, so both compute the same log|A|; what is left are the
    # eps terms of the icml evidence, -(alpha + beta) * 1e-5 / (2 N), and a looser tolerance.
    rng = np.random.default_rng(0)
    features, labels = _clustered(rng, n=2000, d=64, n_classes=10, noise=0.3)
    fixed_point = logme(features, labels, "fixed_point")
    icml = logme(features, labels, "icml")
    assert icml < fixed_point
    assert icml == pytest.approx(fixed_point, rel=1e-4)


def test_fixed_point_is_inflated_when_fewer_samples_than_dimensions():
    # thuml/LogME issue #23: the D - N zero eigenvalues are left out of log|A|.
    rng = np.random.default_rng(1)
    features, labels = _clustered(rng, n=60, d=512, n_classes=5)
    fixed_point = logme(features, labels, "fixed_point")
    icml = logme(features, labels, "icml")
    assert fixed_point > icml + 1.0
    assert fixed_point > 1.0 > icml


def test_absent_class_indices_give_the_same_score_as_remapped_labels():
    rng = np.random.default_rng(2)
    features, labels = _clustered(rng, n=80, d=10, n_classes=2)
    for variant in VARIANTS:
        assert logme(features, np.where(labels == 1, 5, 0), variant) == logme(
            features, labels, variant
        )
    assert logme(features, np.where(labels == 1, "dog", "cat")) == logme(features, labels)


def test_score_is_deterministic():
    rng = np.random.default_rng(3)
    features, labels = _clustered(rng, n=300, d=32, n_classes=6)
    assert logme(features, labels) == logme(features.copy(), labels.copy())


def test_separated_classes_score_higher_than_noise():
    rng = np.random.default_rng(4)
    separated, labels = _clustered(rng, n=400, d=32, n_classes=4, spread=3.0)
    noise = rng.normal(size=separated.shape)
    for variant in VARIANTS:
        assert logme(separated, labels, variant) > logme(noise, labels, variant)


def test_float32_features_score_like_their_float64_copy():
    rng = np.random.default_rng(5)
    features, labels = _clustered(rng, n=200, d=16, n_classes=3)
    single = features.astype(np.float32)
    expected = logme(single.astype(np.float64), labels)
    assert logme(single, labels) == pytest.approx(expected, rel=1e-10)


def test_nan_features_raise_data_error_naming_nan_and_row_count():
    features = np.ones((10, 3))
    features[[2, 7], 1] = np.nan
    features[4, 0] = np.inf
    with pytest.raises(DataError, match=r"NaN in 2 and Inf in 1 of 10 rows \(first bad row: 2\)"):
        logme(features, np.arange(10) % 2)


def test_single_class_raises_data_error():
    with pytest.raises(DataError, match="at least 2 distinct classes"):
        logme(np.random.default_rng(6).normal(size=(20, 4)), np.full(20, 3))


def test_unknown_variant_raises_value_error_listing_valid_ones():
    with pytest.raises(ValueError, match="fixed_point, icml"):
        logme(np.ones((4, 2)), np.arange(4) % 2, variant="corrected")


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.ones(6), np.arange(6) % 2, "2-D"),
        (np.ones((6, 2)), np.ones((6, 1)), "1-D"),
        (np.ones((6, 2)), np.arange(5) % 2, "6 feature rows but 5 labels"),
        (np.ones((1, 2)), np.zeros(1), "at least 2 labelled samples"),
        (np.zeros((6, 2)), np.arange(6) % 2, "all zero"),
        (np.zeros((2, 6)), np.arange(2), "all zero"),
    ],
)
def test_malformed_inputs_raise_data_error(features, labels, message):
    with pytest.raises(DataError, match=message):
        logme(features, labels)
