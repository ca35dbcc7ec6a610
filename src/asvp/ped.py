"""PED: the potential-energy-decline model of fine-tuning dynamics (Li et al., ICCV 2023).

ASVP (paper sec. 3.2 and 5) runs PED on the labelled set's pre-computed features every round: if
PED "converges in one iteration" the features are kept; otherwise LogME is computed on the
PED-moved features and compared with the previous round. PED treats each class as a ball
(centre = class mean, radius = RMS distance to the mean) in a rescaled feature space and lets
overlapping balls repel each other, which mimics how fine-tuning pulls classes apart.

This module reproduces lixiaotong97/PED:metrics.py (commit e5af6e7, `One_Step_PED` and
`PED_Score`) step for step, with these deliberate differences:

* Memory is O(C x D) instead of two (C, C, D) float64 arrays (16 GB each for ImageNet with
  C = 1000, D = 2048). Pair distances come from the Gram matrix of the class means, processed
  in blocks of rows, and class displacements are a matrix product (see `_displacements`).
* Two classes with identical means (d_ab = 0) make the reference divide by zero. We push such
  a pair apart along the first rescaled coordinate axis instead (lower class index to -,
  higher to +), so identical classes still count as overlapping and separate deterministically.
* The reference returns NaN ratios when no pair overlaps (E_0 = 0, so 0/0); we record a ratio
  of 0.0 and stop with 0 steps, which is the reference's outcome without the NaN.
* The reference hard-codes 6 steps (its `--num_step` flag is unused); `max_steps` exposes it to tests.

With the reference defaults (step 0.1, nsigma 0.6, exit ratio 0.5), a step moves each overlap by
only 0.5 %, so with a handful of classes PED takes either 0 steps (no ball overlap at all) or all
`max_steps`. With hundreds of mutually overlapping classes (CIFAR-100, ImageNet) each class sums
hundreds of such pushes, step 0 can separate every ball, and 1 or 2 steps also occur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from asvp.errors import DataError, require_finite_rows

# ASVP runs PED with fixed settings, not config keys: the first four are the PED repository's
# command-line values (lixiaotong97/PED, metrics.py and main.py; reference notes sec. 3.3).
STEP = 0.1  # time step dt: a step moves an overlapping pair apart by dt^2/2 of its overlap
NSIGMA = 0.6  # ball radius in units of a class's RMS radius (the repository's other candidate: 0.3)
EXIT_RATIO = 0.5  # stop once a step's energy is at most this fraction of the first step's
MAX_STEPS = 6  # hard-coded in the repository (its --num_step flag is unused)
# The paper (sec. 5): features are kept when PED "converges in one iteration". With hundreds of
# classes PED often stops after 1 step despite heavy overlap.
CONVERGED_STEPS = 1
REFERENCE_ROWS = 50_000  # ours: seeded sample of unlabelled pool rows for PED's rescaling statistics

_ROW_CHUNK = 8192  # sample rows rescaled at a time
_PAIR_ROWS = 256  # class rows per block of the (rows, C) pair matrices
_GRAM_SUSPECT = 1e-6  # d^2 below this fraction of |a|^2 + |b|^2 is recomputed exactly
_COINCIDENT = 1e-12  # class means closer than this (rescaled units) have no direction


@dataclass(frozen=True)
class PEDResult:
    """Outcome of `ped`.

    Attributes:
        features: (N, D) float64, the moved features in the original (un-rescaled) space; a
            copy of the input when no step was accepted.
        n_steps: number of accepted steps (0 .. max_steps).
        energies: energy E_t of every computed step, E_0 first; it includes the rejected step
            that ended the loop, if any. E is the L1 norm of all class displacements in the
            rescaled space.
        ratios: E_t / E_0 for every computed step (0.0 when E_0 = 0).
    """

    features: np.ndarray
    n_steps: int
    energies: list[float]
    ratios: list[float]


def ped(
    features: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    step: float = STEP,
    nsigma: float = NSIGMA,
    exit_ratio: float = EXIT_RATIO,
    max_steps: int = MAX_STEPS,
    constant: float = 1.0,
    eps: float = 1e-3,
) -> PEDResult:
    """Move the classes of `features` apart as PED does and report how many steps it took.

    One step, in the space rescaled by the reference's per-dimension mean and std (std floored
    at `eps`): for every class pair with distance d between the means and radii R_a, R_b,
    overlap O = max(nsigma (R_a + R_b) - d, 0), force F = constant * O and step length
    s = min(step^2 F / 2, O); class a moves by -s and class b by +s along the unit vector
    from mean a to mean b. Every sample of a class is translated by the sum of its class's
    moves (so shapes and radii never change), and the step's energy is the L1 norm of all
    class moves. Step 0 is always accepted unless E_0 = 0; later steps are accepted while
    E_t / E_0 > `exit_ratio`, up to `max_steps`.

    Class statistics are re-derived from the moved samples each step. Because the translation
    is rigid, the moved class means are the old means plus the accepted moves and the radii are
    unchanged, so we carry the means forward instead of re-reading all N samples per step.

    Classes with one sample have radius 0. A single class has no pairs, hence E_0 = 0 and
    0 steps.

    Args:
        features: (N, D) real array, the labelled set's features (any float dtype).
        labels: (N,) class labels of any sortable dtype; only the classes present count.
        reference: (M, D) real array whose per-dimension mean/std define the rescaling. PED's
            authors used ImageNet-val features of the same backbone; in active learning the
            unlabelled pool's features are the natural choice.
        step: time step Delta t (reference CLI default 0.1).
        nsigma: ball radius in units of R_c (reference CLI default 0.6).
        exit_ratio: a step is accepted only while E_t / E_0 > exit_ratio.
        max_steps: most accepted steps (hard-coded 6 in the reference).
        constant: force constant kappa.
        eps: floor of the reference std.

    Returns:
        PEDResult with the moved (N, D) float64 features, n_steps, energies and ratios.

    Raises:
        DataError: wrong shapes, NaN/Inf in features or reference, or no samples.
        ValueError: a hyper-parameter out of range.
    """
    _check_parameters(step, nsigma, exit_ratio, max_steps, constant, eps)
    class_index, n_classes = _validate(features, labels, reference)
    center, scale = _reference_stats(reference, eps)
    means, radii = _class_stats(features, class_index, n_classes, center, scale)

    moved_by = np.zeros_like(means)  # (C, D) accepted displacement per class, rescaled space
    energies: list[float] = []
    ratios: list[float] = []
    n_steps = 0
    while n_steps < max_steps:
        shift = _displacements(means + moved_by, radii, step, nsigma, constant)
        energy = float(np.abs(shift).sum())
        energies.append(energy)
        if energy == 0.0 and len(energies) == 1:
            ratios.append(0.0)  # no overlapping pair: the reference's 0/0 = NaN, which stops
            break
        ratio = energy / energies[0]
        ratios.append(ratio)
        if not ratio > exit_ratio:
            break
        moved_by += shift
        n_steps += 1

    moved = np.array(features, dtype=np.float64, copy=True)
    if n_steps:
        # Translating in rescaled space and mapping back (z * scale + center) is a translation
        # by moved_by * scale in the original space; adding it directly avoids the round trip.
        offset = moved_by * scale
        for start in range(0, moved.shape[0], _ROW_CHUNK):
            stop = start + _ROW_CHUNK
            moved[start:stop] += offset[class_index[start:stop]]
    return PEDResult(features=moved, n_steps=n_steps, energies=energies, ratios=ratios)


def _displacements(
    means: np.ndarray, radii: np.ndarray, step: float, nsigma: float, constant: float
) -> np.ndarray:
    """Summed pairwise repulsion of every class, (C, D) float64, in O(C x D) memory.

    For class a, Delta_a = sum_b s_ab (mu_a - mu_b) / d_ab = (sum_b w_ab) mu_a - sum_b w_ab mu_b
    with w_ab = s_ab / d_ab; this equals the reference's equal-and-opposite pair updates. Rows
    are processed in blocks of `_PAIR_ROWS`, so only (rows, C) pair matrices are ever held.

    Args:
        means: (C, D) class means; radii: (C,) class radii, both in rescaled space.
    """
    n_classes = means.shape[0]
    # Centring does not change distances but shrinks |mu|^2, and with it the cancellation error
    # of d^2 = |a|^2 + |b|^2 - 2 a.b.
    mu = means - means.mean(axis=0)
    sq_norm = np.einsum("ij,ij->i", mu, mu)
    shift = np.zeros_like(mu)
    for start in range(0, n_classes, _PAIR_ROWS):
        rows = np.arange(start, min(start + _PAIR_ROWS, n_classes))
        dist = _pair_distances(mu, sq_norm, rows)
        overlap = np.maximum(nsigma * (radii[rows, None] + radii[None, :]) - dist, 0.0)
        overlap[np.arange(rows.size), rows] = 0.0  # a class does not repel itself
        length = np.minimum(0.5 * step**2 * constant * overlap, overlap)

        apart = dist > _COINCIDENT
        weight = np.where(apart, length / np.where(apart, dist, 1.0), 0.0)
        shift[rows] = weight.sum(axis=1)[:, None] * mu[rows] - weight @ mu

        # Identical means have no direction (the reference divides by zero): push the pair
        # along the first axis, the lower class index towards -, the higher towards +.
        coincident = ~apart & (length > 0.0)
        if coincident.any():
            sign = np.where(np.arange(n_classes)[None, :] > rows[:, None], -1.0, 1.0)
            shift[rows, 0] += np.sum(np.where(coincident, sign * length, 0.0), axis=1)
    return shift


def _pair_distances(mu: np.ndarray, sq_norm: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(rows), C) from the classes `rows` to every class."""
    d2 = sq_norm[rows, None] + sq_norm[None, :] - 2.0 * (mu[rows] @ mu.T)
    np.maximum(d2, 0.0, out=d2)
    d2[np.arange(rows.size), rows] = 0.0
    # Near-coincident means lose all precision in the Gram form; recompute those exactly so
    # that the coincidence test and the push direction are reliable.
    suspect = d2 <= _GRAM_SUSPECT * (sq_norm[rows, None] + sq_norm[None, :])
    suspect[np.arange(rows.size), rows] = False
    i_idx, j_idx = np.nonzero(suspect)
    for begin in range(0, i_idx.size, _PAIR_ROWS):
        i = i_idx[begin : begin + _PAIR_ROWS]
        j = j_idx[begin : begin + _PAIR_ROWS]
        diff = mu[rows[i]] - mu[j]
        d2[i, j] = np.einsum("ij,ij->i", diff, diff)
    return np.sqrt(d2)


def _class_stats(
    features: np.ndarray,
    class_index: np.ndarray,
    n_classes: int,
    center: np.ndarray,
    scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Class means (C, D) and radii (C,) in rescaled space, float64, two passes over rows.

    The radius is sqrt(sum_d Var_c,d) with the population variance (ddof 0), i.e. the RMS
    distance of a class's samples to its mean; summing squared deviations in a second pass
    avoids the cancellation of E[z^2] - E[z]^2.
    """
    counts = np.bincount(class_index, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, features.shape[1]))
    for start in range(0, features.shape[0], _ROW_CHUNK):
        z = (np.asarray(features[start : start + _ROW_CHUNK], dtype=np.float64) - center) / scale
        np.add.at(sums, class_index[start : start + _ROW_CHUNK], z)
    means = sums / counts[:, None]
    squares = np.zeros(n_classes)
    for start in range(0, features.shape[0], _ROW_CHUNK):
        index = class_index[start : start + _ROW_CHUNK]
        z = (np.asarray(features[start : start + _ROW_CHUNK], dtype=np.float64) - center) / scale
        z -= means[index]
        np.add.at(squares, index, np.einsum("ij,ij->i", z, z))
    return means, np.sqrt(squares / counts)


def _reference_stats(reference: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and population std (D,) of the reference, std floored at `eps`.

    Computed in row chunks so that a whole unlabelled pool (e.g. 1.28 M x 2048 float32) is never
    copied to float64.
    """
    n = reference.shape[0]
    total = np.zeros(reference.shape[1])
    for start in range(0, n, _ROW_CHUNK):
        total += np.asarray(reference[start : start + _ROW_CHUNK], dtype=np.float64).sum(axis=0)
    center = total / n
    squares = np.zeros_like(center)
    for start in range(0, n, _ROW_CHUNK):
        block = np.asarray(reference[start : start + _ROW_CHUNK], dtype=np.float64) - center
        squares += np.einsum("ij,ij->j", block, block)
    return center, np.maximum(np.sqrt(squares / n), eps)


def _validate(
    features: np.ndarray, labels: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, int]:
    """Check shapes and values; return (labels remapped to 0..C-1 as (N,) int64, C)."""
    for name, array in (("features", features), ("reference", reference)):
        if not isinstance(array, np.ndarray) or array.ndim != 2:
            raise DataError(f"PED {name} must be a 2-D array, got shape {np.shape(array)}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise DataError(f"PED {name} must be real numbers, got dtype {array.dtype}")
        if array.shape[0] == 0:
            raise DataError(f"PED {name} have no rows")
    if reference.shape[1] != features.shape[1]:
        raise DataError(
            f"PED reference has dimension {reference.shape[1]} but the features have "
            f"{features.shape[1]}; use features of the same backbone for both"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise DataError(
            f"PED labels must be a 1-D array with one label per feature row "
            f"({features.shape[0]}), got shape {labels.shape}"
        )
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise DataError("PED labels contain NaN or Inf; every labelled sample needs a class")
    require_finite_rows(features, "PED features")
    require_finite_rows(reference, "PED reference")
    classes, class_index = np.unique(labels, return_inverse=True)
    return class_index.reshape(-1).astype(np.int64), int(classes.size)


def _check_parameters(
    step: float, nsigma: float, exit_ratio: float, max_steps: int, constant: float, eps: float
) -> None:
    """Reject hyper-parameters for which PED is undefined or silently does nothing useful."""
    problems = []
    if not (math.isfinite(step) and step > 0):
        problems.append(f"step must be > 0, got {step}")
    if not (math.isfinite(nsigma) and nsigma >= 0):
        problems.append(f"nsigma must be >= 0, got {nsigma}")
    if not (math.isfinite(exit_ratio) and exit_ratio >= 0):
        problems.append(f"exit_ratio must be >= 0, got {exit_ratio}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        problems.append(f"max_steps must be an integer >= 0, got {max_steps!r}")
    if not (math.isfinite(constant) and constant > 0):
        problems.append(f"constant must be > 0, got {constant}")
    if not (math.isfinite(eps) and eps > 0):
        problems.append(f"eps must be > 0, got {eps}")
    if problems:
        raise ValueError("invalid PED parameters: " + "; ".join(problems))


def reference_sample(unlabelled: np.ndarray, cap: int, seed: int, round_index: int) -> np.ndarray:
    """The unlabelled pool rows whose features give PED its reference statistics: all of them, or
    a seeded sample of `cap` (sorted, so reads go in file order), the same for the same seed and
    round wherever it is drawn (the refresh decision, the backbone advisor's pilot)."""
    if len(unlabelled) <= cap:
        return unlabelled
    return np.sort(np.random.default_rng([seed, round_index, 7]).choice(unlabelled, cap, replace=False))
