"""LogME: the log marginal evidence of a Bayesian linear classifier on fixed features.

ASVP (paper sec. 3.2 and 5) scores the labelled set's PED-moved features with LogME after every
round and updates the pre-computed features once the score stops changing by more than a
threshold of 1 between consecutive rounds. LogME (You et al., ICML 2021) fits, for every class c,
the one-vs-rest target y_c in {0, 1}^N with w ~ N(0, I/alpha), y_c | F, w ~ N(F w, I/beta), and
reports the maximised log evidence per sample, averaged over classes:

    L(alpha, beta) = D/2 log(alpha) + N/2 log(beta) - 1/2 log|A|
                     - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - N/2 log(2 pi),
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y.

Two variants are provided, both reproducing thuml/LogME (commit 56551ca) numerically:

* ``"fixed_point"`` (default) is thuml's default ``_fit_fixed_point``: MacKay fixed-point updates
  in the SVD basis of F. When N < D it sums log|A| over the k = min(N, D) singular values only and
  drops the (D - k) * log(alpha) terms of the zero eigenvalues (thuml/LogME issue #23, fix PR #24
  unmerged). That inflates the score heavily while N < D (about 50 at N = 200, D = 2048), and
  the paper's threshold of 1 was set on this scale, so this is the faithful default.
* ``"icml"`` is thuml's ``_fit_icml`` (the ICML-2021 formula): log|A| over all D eigenvalues of
  F^T F, zeros included, which is the correct evidence; lambda tolerance 0.01 and eps = 1e-5
  inside both residual terms of the evidence.

One deliberate divergence from thuml: it takes C = max(label) + 1 classes, so a class index
without any labelled sample adds an all-zero target that raises the mean score (1.16 -> 1.82 with
one of 10 classes missing). Active-learning label sets often miss classes, so we remap labels to
the classes present before scoring.
"""

from __future__ import annotations

import numpy as np

from asvp.errors import DataError, require_finite_rows

VARIANTS: tuple[str, ...] = ("fixed_point", "icml")

# Constants of thuml/LogME; changing any of them changes the score.
_MAX_ITERATIONS = 11  # "should converge after at most 10 steps"
_RANK_TOL = 1e-10  # singular values at or below this are dropped by thuml's truncated SVD
_RESIDUAL_EPS = 1e-5  # added to ||m||^2 and ||Fm - y||^2 in the alpha / beta updates
_TOL_FIXED_POINT = 1e-3  # |t_new - t| / t <= tol stops `_fit_fixed_point`
_TOL_ICML = 1e-2  # |lam_new - lam| / lam < tol stops `_fit_icml`

_ROW_CHUNK = 8192  # rows of F converted to float64 at a time (bounds memory for large N)


def logme(features: np.ndarray, labels: np.ndarray, variant: str = "fixed_point") -> float:
    """LogME score of `features` for the classification task given by `labels`.

    Args:
        features: (N, D) real array, any float or int dtype; used raw (no centring or scaling,
            as in thuml/LogME) and computed in float64.
        labels: (N,) class labels of any sortable dtype. Only the classes present count
            (see the module docstring for why this differs from thuml's max(label) + 1).
        variant: ``"fixed_point"`` (thuml default, inflated when N < D) or ``"icml"``.

    Returns:
        The evidence per sample, averaged over the classes present.

    Raises:
        ValueError: unknown `variant`.
        DataError: wrong shapes, NaN/Inf features, fewer than 2 samples or 2 classes, or
            all-zero features.
    """
    if variant not in VARIANTS:
        valid = ", ".join(VARIANTS)
        raise ValueError(f"unknown LogME variant {variant!r}; valid variants: {valid}")
    class_index, n_classes = _validate(features, labels)
    n, d = features.shape

    sigma, x = _spectrum_and_projections(features, class_index, n_classes)
    counts = np.bincount(class_index, minlength=n_classes).astype(np.float64)
    # ||y_c||^2 = count_c for a 0/1 target; thuml's r0, the part outside the column space of F.
    outside = counts - np.sum(x**2, axis=0)

    if variant == "fixed_point":
        tol, strict = _TOL_FIXED_POINT, False
    else:
        tol, strict = _TOL_ICML, True
    evidences = []
    for c in range(n_classes):
        x2 = x[:, c] ** 2
        alpha, beta, m2, res2 = _mackay(sigma, x2, outside[c], n, tol, strict)
        evidences.append(_evidence(alpha, beta, m2, res2, sigma, n, d, variant))
    return float(np.mean(evidences))


def _validate(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Check shapes and values; return (labels remapped to 0..C-1 as (N,) int64, C)."""
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        raise DataError(
            f"LogME features must be a 2-D (N, D) array, got shape {np.shape(features)}"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"LogME labels must be a 1-D (N,) array, got shape {labels.shape}")
    n = features.shape[0]
    if labels.shape[0] != n:
        raise DataError(
            f"LogME got {n} feature rows but {labels.shape[0]} labels; they must match row by row"
        )
    if n < 2:
        raise DataError(f"LogME needs at least 2 labelled samples, got {n}")
    if not np.issubdtype(features.dtype, np.number) or np.iscomplexobj(features):
        raise DataError(f"LogME features must be real numbers, got dtype {features.dtype}")
    require_finite_rows(features, "LogME features")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise DataError("LogME labels contain NaN or Inf; every labelled sample needs a class")
    classes, class_index = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise DataError(
            f"LogME needs at least 2 distinct classes, but all {n} labels are {classes[0]!r}: "
            "with a single class the one-vs-rest target is constant and the evidence says "
            "nothing about the features"
        )
    return class_index.reshape(-1).astype(np.int64), int(classes.size)


def _spectrum_and_projections(
    features: np.ndarray, class_index: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values of F and the projections of every one-hot target on them.

    Mirrors thuml's choice of decomposition, because it decides which components count:
    for N > D the "truncated SVD" (eigendecompose F^T F, keep s > 1e-10); otherwise the thin
    SVD with all min(N, D) singular values kept, however small.

    Returns:
        sigma: (k,) float64, the kept eigenvalues s_i^2 of F^T F.
        x: (k, C) float64, x[:, c] = U^T y_c with U the (N, k) left singular vectors.
    """
    n, d = features.shape
    if n > d:
        # U^T y_c = diag(1/s) V^T F^T y_c, and F^T y_c is the class-c feature sum, so neither U
        # (N x k) nor a float64 copy of F is ever built; F^T F is accumulated in row chunks.
        gram = np.zeros((d, d))
        class_sums = np.zeros((n_classes, d))
        for start in range(0, n, _ROW_CHUNK):
            block = np.asarray(features[start : start + _ROW_CHUNK], dtype=np.float64)
            gram += block.T @ block
            np.add.at(class_sums, class_index[start : start + _ROW_CHUNK], block)
        eigenvalues, vectors = np.linalg.eigh(gram)
        s = np.sqrt(np.clip(eigenvalues, 0.0, None))  # eigh may return tiny negatives
        keep = s > _RANK_TOL
        s, vectors = s[keep], vectors[:, keep]
        x = (vectors.T @ class_sums.T) / s[:, None]
    else:
        u, s, _ = np.linalg.svd(np.asarray(features, dtype=np.float64), full_matrices=False)
        sums = np.zeros((n_classes, u.shape[1]))
        np.add.at(sums, class_index, u)
        x = sums.T
    if s.size == 0 or s.max() <= _RANK_TOL:
        raise DataError(
            "LogME features are all zero (rank 0); the evidence is undefined - check the "
            "feature extraction"
        )
    return s**2, x


def _mackay(
    sigma: np.ndarray, x2: np.ndarray, outside: float, n: int, tol: float, strict: bool
) -> tuple[float, float, float, float]:
    """MacKay fixed-point updates of (alpha, beta) for one class, as both thuml fits do them.

    Args:
        sigma: (k,) eigenvalues of F^T F; x2: (k,) squared projections of y on U;
        outside: ||y||^2 - sum(x2); n: N; tol/strict: the stopping rule of the variant.

    Returns:
        (alpha, beta, ||m||^2, ||F m - y||^2). As in thuml, alpha and beta are the values after
        the last update, while ||m||^2 and ||F m - y||^2 were computed with the previous
        t = alpha / beta. The evidence is evaluated on this mix, so we keep it.
    """
    alpha = beta = 1.0
    m2 = res2 = 0.0
    for _ in range(_MAX_ITERATIONS):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
        res2 = float(np.sum(x2 / (1.0 + sigma / t) ** 2)) + outside
        alpha = gamma / (m2 + _RESIDUAL_EPS)
        beta = (n - gamma) / (res2 + _RESIDUAL_EPS)
        change = abs(alpha / beta - t) / t
        if (change < tol) if strict else (change <= tol):
            break
    return alpha, beta, m2, res2


def _evidence(
    alpha: float,
    beta: float,
    m2: float,
    res2: float,
    sigma: np.ndarray,
    n: int,
    d: int,
    variant: str,
) -> float:
    """Log evidence per sample, L(alpha, beta) / N, with the variant's log|A| and eps choice."""
    log_det = float(np.sum(np.log(alpha + beta * sigma)))
    if variant == "fixed_point":
        # thuml's default: only the k kept eigenvalues enter log|A| (the N < D inflation).
        fit = beta / 2.0 * res2 + alpha / 2.0 * m2
    else:
        # The D - k zero eigenvalues of F^T F each contribute log(alpha + beta * 0).
        log_det += (d - sigma.size) * np.log(alpha)
        fit = beta / 2.0 * (res2 + _RESIDUAL_EPS) + alpha / 2.0 * (m2 + _RESIDUAL_EPS)
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * log_det
        - fit
        - n / 2.0 * np.log(2.0 * np.pi)
    )
    return float(evidence / n)
