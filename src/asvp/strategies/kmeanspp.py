"""k-means++ seeding on gradient embeddings, exact and pruned: the selection inside BADGE.

Gradient embedding of an unlabelled sample: g_i = a_i (x) h_i with a_i = p_i - onehot(argmax p_i)
(the proxy's softmax, C values) and h_i its hidden embedding (D values). We use p - onehot
directly: the official code's mean-reduced loss scales each g by 1/batch, differently for the
last batch (notes sec. 1.5, bug 5). No C x D vector and no U x U matrix is ever built: with
s_i = |g_i|^2 = |a_i|^2 |h_i|^2, ||a(x)b - c(x)d||^2 = |a|^2|b|^2 + |c|^2|d|^2 - 2(a.c)(b.d)
(LabelBench's identity), computed in float64 from rows read chunk by chunk.

Selection (k-means++ seeding, as in the BADGE paper, not the official ASVP code's random start):
the first centre is the largest |g| (ties: lowest pool index); each next one is drawn with
probability proportional to its squared distance to the nearest chosen centre (D^2 sampling).
The draw is defined exactly so that any implementation with the same rng picks the same points:
u = rng.random() * total, and the pick is the first point, in pool-index order, whose running
sum of weights exceeds u. The running sums are taken hierarchically (`_D2Sampler`: sums over
blocks of 64 points, then over blocks of 64 blocks, each a sequential `cumsum`) so a draw costs
O(U/4096 + 128) and the rounding of every sum is fixed by the weights alone. Points at distance
0 (picked, or duplicates: a computed distance within the rounding allowance of 0 counts as 0)
have weight 0 and are never drawn; if every weight is 0 the lowest unpicked pool index is taken
without a draw. Scores returned are |g_i|, the norm BADGE's first centre maximises.

Why the fast version is exact. `kmeanspp_reference` recomputes the distance from each new centre
c to all U points (a full read of the pool per pick). `kmeanspp` skips every point whose distance
provably cannot drop below its current minimum dmin_i, and recomputes the rest with the same
row-wise float64 arithmetic, so every minimum is bit-identical and so is every draw. With
x = |g|, two lower bounds on d(i, c) = |g_i - g_c|^2 are used:
  * norms: d >= (x_i - x_c)^2 (reverse triangle inequality);
  * classes (every p in [0, 1]): for argmax classes y_i != y_c, with t = 1 - p[y],
    a_i.a_c = R - p_c[y_i] t_i - p_i[y_c] t_c, R = sum_{k != y_i, y_c} p_i[k] p_c[k] >= 0, and
    R <= min(m_i |p_c off y_c, y_i|, l_i max_{k != y_i, y_c} p_c[k]) (Cauchy-Schwarz, Hoelder;
    m_i, l_i the L2, L1 norms of p_i off y_i), so a_i.a_c <= ub_i. When every h >= 0,
    h_i.h_c >= 0 and the cross term 2(a_i.a_c)(h_i.h_c) <= 2 max(ub_i, 0)|h_i||h_c|; otherwise
    |a_i.a_c| <= max(ub_i, p_c[y_i] t_i + p2_i t_c), p2_i the largest p_i off y_i. Either way
    d >= (x_i - x_c)^2 + 2|h_i||h_c| max(0, |a_i||a_c| - bound).
Gradient embeddings of different predicted classes are nearly orthogonal, so once a class has
centres nearby a new centre can only reach points of its own class and similar norm. Points
are sorted by (class, norm) and cut into blocks of 64 with per-block extremes of the quantities
above, so one vectorised test per block (O(U/64) per pick) discards whole blocks whose bound
exceeds their largest current minimum; the rest get the per-point test, then the exact distance.
A point is skipped only if bound > max(dmin_i, tol) + 2 tol, tol = 1e-9 (s_i + s_c): float64 dot
products of C, D <= 10^4 terms err by < 1e-11 (s_i + s_c), so the distance the reference would
compute is > dmin_i and > tol (not clamped to 0): min(dmin_i, d) = dmin_i exactly. Dot products use
`einsum` row by row, whose result does not depend on which rows share the call (BLAS gemv's
does: remainder rows take another kernel), so both versions compute the same bits.

Cost per pick: O(U/64) block tests plus the surviving rows' reads and dot products, versus U
rows for the reference (2-core CPU, U = 100k, C = 100, D = 256, synthetic class-clustered proxy
outputs: 1.3k rows and 7 ms per pick over 1000 picks, against 100k rows and 150 ms). Memory: 11 float64 per point plus one chunk of rows (chunk_rows x
(C + D) float64); the probabilities and embeddings stay where they are (array, memmap, h5py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from asvp.errors import ConfigError, DataError, require_finite_rows
from asvp.features import read_rows

CHUNK_ROWS = 4096  # rows per read: 4096 x (1000 + 2048) float64 = 100 MB at ImageNet scale
KAPPA = 1e-9  # rounding allowance on a squared distance, relative to s_i + s_c
FANOUT = 64  # sampler tree fan-out and pruning block size


@dataclass(frozen=True)
class _Pool:
    """Per-point scalars from one chunked pass; the (U, C) and (U, D) arrays stay where they are."""

    probabilities: Any
    embeddings: Any
    y: np.ndarray  # (U,) int64 argmax class
    t: np.ndarray  # (U,) 1 - p[y]
    m: np.ndarray  # (U,) L2 norm of p off its argmax
    l1: np.ndarray  # (U,) L1 norm of p off its argmax
    p2: np.ndarray  # (U,) largest p off its argmax
    anorm: np.ndarray  # (U,) |a|
    hnorm: np.ndarray  # (U,) |h|
    s: np.ndarray  # (U,) |g|^2
    probs_ok: bool  # every p in [0, 1]: the cross-class bound holds
    h_nonneg: bool  # every h >= 0: h_i.h_c >= 0, a sharper cross-class bound

    @property
    def size(self) -> int:
        return len(self.s)


def prepare(probabilities: Any, embeddings: Any, chunk_rows: int, n_rows: int | None = None) -> _Pool:
    """Validate the inputs and compute the per-point norms, chunk by chunk (never U x C at once)."""
    if probabilities is None or embeddings is None:
        raise ValueError("BADGE needs the selection model's probabilities and hidden embeddings")
    n = len(probabilities)
    if len(embeddings) != n or (n_rows is not None and n != n_rows):
        raise DataError(
            f"BADGE: {n} probability rows, {len(embeddings)} embedding rows and {n_rows} unlabelled "
            "samples must match; recompute the proxy outputs for this round's pool"
        )
    y, t, m2, l1, p2, hn2 = (np.empty(n, dtype=np.int64), *(np.empty(n) for _ in range(5)))
    probs_ok = h_nonneg = True
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        p = np.array(probabilities[start:stop], dtype=np.float64)  # a copy: zeroed below
        h = np.asarray(embeddings[start:stop], dtype=np.float64)
        for what, block in (("probabilities", p), ("embeddings", h)):
            require_finite_rows(block, f"BADGE: the selection model's {what} hold NaN/Inf values: unlabelled rows "
                                f"{start}..{stop - 1}", "check the features and proxy settings",
                                row_numbers=slice(start, stop), numbering="unlabelled row")
        rows = np.arange(stop - start)
        y[start:stop] = p.argmax(axis=1)
        top = p[rows, y[start:stop]]
        t[start:stop] = 1.0 - top
        probs_ok &= bool(p.min(initial=0.0) >= 0.0 and top.max(initial=0.0) <= 1.0)
        h_nonneg &= bool(h.min(initial=0.0) >= 0.0)
        p[rows, y[start:stop]] = 0.0
        m2[start:stop] = np.einsum("ij,ij->i", p, p)
        l1[start:stop] = p.sum(axis=1)
        p2[start:stop] = p.max(axis=1)
        hn2[start:stop] = np.einsum("ij,ij->i", h, h)
    an2 = t * t + m2
    return _Pool(
        probabilities, embeddings, y, t, np.sqrt(m2), l1, p2, np.sqrt(an2), np.sqrt(hn2), an2 * hn2, probs_ok, h_nonneg
    )


@dataclass(frozen=True)
class _Centre:
    pos: int
    a: np.ndarray  # (C,) float64 p - onehot
    h: np.ndarray  # (D,) float64
    p: np.ndarray  # (C,) float64
    s: float


def _centre(pool: _Pool, pos: int) -> _Centre:
    p = np.asarray(pool.probabilities[pos], dtype=np.float64).ravel()
    a = p.copy()
    a[pool.y[pos]] -= 1.0
    h = np.asarray(pool.embeddings[pos], dtype=np.float64).ravel()
    return _Centre(pos, a, h, p, float(pool.s[pos]))


def _distances(pool: _Pool, pos: np.ndarray, centre: _Centre, chunk_rows: int) -> np.ndarray:
    """(len(pos),) float64 squared distances g_pos to g_centre (factorised); pos ascending.

    Each value depends only on its own row (row-wise einsum), so the reference and the pruned
    version compute identical bits. Values within the rounding allowance of 0 are set to 0.
    """
    out = np.empty(len(pos))
    for k in range(0, len(pos), chunk_rows):
        rows = pos[k : k + chunk_rows]
        a = read_rows(pool.probabilities, rows).astype(np.float64)
        a[np.arange(len(rows)), pool.y[rows]] -= 1.0
        h = read_rows(pool.embeddings, rows).astype(np.float64)
        cross = np.einsum("ij,j->i", a, centre.a) * np.einsum("ij,j->i", h, centre.h)
        total = pool.s[rows] + centre.s
        d = total - 2.0 * cross
        d[d <= KAPPA * total] = 0.0
        out[k : k + len(rows)] = d
    return out


def _block_sums(x2d: np.ndarray) -> np.ndarray:
    return np.cumsum(x2d, axis=1)[:, -1]


class _D2Sampler:
    """Weights w (the current minimum distances) with two levels of block sums for O(1)-ish draws."""

    def __init__(self, n: int) -> None:
        n0 = -(-(n + 1) // FANOUT) * FANOUT  # one spare zero: index n pads the pruning blocks
        n1 = -(-(n0 // FANOUT) // FANOUT) * FANOUT
        self.w = np.zeros(n0)
        self.s1 = np.zeros(n1)
        self.s2 = np.zeros(n1 // FANOUT)

    def rebuild(self) -> None:
        self.s1[: len(self.w) // FANOUT] = _block_sums(self.w.reshape(-1, FANOUT))
        self.s2[:] = _block_sums(self.s1.reshape(-1, FANOUT))

    def update(self, changed: np.ndarray) -> None:
        b1 = np.unique(changed // FANOUT)
        self.s1[b1] = _block_sums(self.w.reshape(-1, FANOUT)[b1])
        b2 = np.unique(b1 // FANOUT)
        self.s2[b2] = _block_sums(self.s1.reshape(-1, FANOUT)[b2])

    def draw(self, rng: np.random.Generator, picked: np.ndarray) -> int:
        """First index whose running weight sum exceeds u = rng.random() * total (module doc)."""
        total = np.cumsum(self.s2)[-1]
        if not total > 0.0:
            return int(np.flatnonzero(~picked)[0])
        u = rng.random() * total
        j2, u = _first_exceeding(self.s2, u)
        j1, u = _first_exceeding(self.s1[j2 * FANOUT : (j2 + 1) * FANOUT], u)
        j1 += j2 * FANOUT
        j0, _ = _first_exceeding(self.w[j1 * FANOUT : (j1 + 1) * FANOUT], u)
        return j1 * FANOUT + j0


def _first_exceeding(x: np.ndarray, u: float) -> tuple[int, float]:
    """First j with cumsum(x)[j] > u, and u minus the sum before j (within x's block)."""
    cs = np.cumsum(x)
    j = int(np.searchsorted(cs, u, side="right"))
    if j == len(cs):  # u rounded past this block's sum: take its last positive weight
        j = int(np.flatnonzero(x > 0.0)[-1])
    return j, (u - float(cs[j - 1]) if j else u)


def kmeanspp_reference(
    probabilities: Any, embeddings: Any, budget: int, rng: np.random.Generator, chunk_rows: int = CHUNK_ROWS
) -> np.ndarray:
    """(budget,) int64 row positions picked by plain BADGE k-means++: one full pass per pick.

    The yardstick for `kmeanspp` (same picks for the same rng) and for benchmarks.
    """
    return _reference(prepare(probabilities, embeddings, chunk_rows), budget, rng, chunk_rows)


def _reference(pool: _Pool, budget: int, rng: np.random.Generator, chunk_rows: int) -> np.ndarray:
    n = pool.size
    sampler, picked = _D2Sampler(n), np.zeros(n, dtype=bool)
    dmin = sampler.w[:n]
    dmin[:] = np.inf
    everything = np.arange(n)
    order = []
    for step in range(budget):
        c = int(np.argmax(pool.s)) if step == 0 else sampler.draw(rng, picked)
        order.append(c)
        picked[c] = True
        if step == budget - 1:
            break
        np.minimum(dmin, _distances(pool, everything, _centre(pool, c), chunk_rows), out=dmin)
        dmin[c] = 0.0
        sampler.rebuild()
    return np.asarray(order, dtype=np.int64)


@dataclass(frozen=True)
class _Ranges:
    """Per group of points (a block, or one point each): the extremes the lower bound needs."""

    y: np.ndarray  # the group's class
    xlo: np.ndarray  # lowest and highest |g|
    xhi: np.ndarray
    anorm: np.ndarray  # lowest |a|, |h|
    hnorm: np.ndarray
    m: np.ndarray  # highest m, l1, p2
    l1: np.ndarray
    p2: np.ndarray
    tlo: np.ndarray  # lowest and highest t
    thi: np.ndarray


def _point_ranges(pool: _Pool, rows: np.ndarray) -> _Ranges:
    x, t = np.sqrt(pool.s[rows]), pool.t[rows]
    return _Ranges(pool.y[rows], x, x, pool.anorm[rows], pool.hnorm[rows], pool.m[rows], pool.l1[rows], pool.p2[rows], t, t)


def _lower_bound(pool: _Pool, c: _Centre, r: _Ranges) -> np.ndarray:
    """Lower bound on d(i, c) over each group's points: norms + classes (module doc)."""
    i = c.pos
    yc, xc, ac, hc, mc, tc = int(pool.y[i]), np.sqrt(c.s), pool.anorm[i], pool.hnorm[i], pool.m[i], pool.t[i]
    lb = np.square(np.clip(xc, r.xlo, r.xhi) - xc)
    if not pool.probs_ok:
        return lb
    ranked = np.argsort(-c.p, kind="stable")
    ranked = ranked[ranked != yc][:2]  # the largest two of p_c off its argmax
    k1 = int(ranked[0]) if len(ranked) else -1
    v1, v2 = (float(c.p[ranked[j]]) if len(ranked) > j else 0.0 for j in (0, 1))
    q = c.p[r.y]
    rest = np.sqrt(np.maximum(mc * mc - q * q, 0.0) + 1e-10 * mc * mc)  # |p_c off y_c, y|, rounded up
    ub = np.maximum(np.minimum(r.m * rest, r.l1 * np.where(r.y == k1, v2, v1)) - q * r.tlo, 0.0)
    if not pool.h_nonneg:  # h_i.h_c may be < 0: also a_i.a_c >= -(q t_i + p_i[y_c] t_c)
        ub = np.maximum(ub, q * r.thi + r.p2 * tc)
    return lb + np.where(r.y == yc, 0.0, 2.0 * r.hnorm * hc * np.maximum(r.anorm * ac - ub, 0.0))


class _Pruner:
    """Points sorted by (class, |g|), cut into blocks of FANOUT, with per-block extremes."""

    def __init__(self, pool: _Pool, dmin_ext: np.ndarray) -> None:
        n = pool.size
        order = np.lexsort((pool.s, pool.y))
        first = np.r_[0, np.flatnonzero(np.diff(pool.y[order])) + 1]
        counts = np.diff(np.r_[first, n])
        rank = np.arange(n) - np.repeat(first, counts)
        block = np.repeat(np.r_[0, np.cumsum(-(-counts // FANOUT))[:-1]], counts) + rank // FANOUT
        self.layout = np.full((int(block[-1]) + 1, FANOUT), n, dtype=np.int64)  # n pads: dmin_ext[n] = 0
        self.layout[block, rank % FANOUT] = order
        self.block_of = np.empty(n, dtype=np.int64)
        self.block_of[order] = block
        self.pool, self.dmin_ext = pool, dmin_ext

        def low(values: np.ndarray) -> np.ndarray:
            return np.append(values, np.inf)[self.layout].min(axis=1)

        def high(values: np.ndarray) -> np.ndarray:
            return np.append(values, 0.0)[self.layout].max(axis=1)

        x = np.sqrt(pool.s)
        self.ranges = _Ranges(
            pool.y[self.layout[:, 0]], low(x), high(x), low(pool.anorm), low(pool.hnorm),
            high(pool.m), high(pool.l1), high(pool.p2), low(pool.t), high(pool.t),
        )  # fmt: skip
        self.smax = np.square(self.ranges.xhi)
        self.dmax = dmin_ext[self.layout].max(axis=1)

    def refresh(self, changed: np.ndarray) -> None:
        """Update the blocks' largest minimum distance after the minima of `changed` dropped."""
        touched = np.unique(self.block_of[changed])
        self.dmax[touched] = self.dmin_ext[self.layout[touched]].max(axis=1)

    def survivors(self, c: _Centre) -> np.ndarray:
        """Ascending positions whose distance to c may fall below their current minimum."""

        def open_(lb: np.ndarray, dmax: np.ndarray, smax: np.ndarray) -> np.ndarray:
            tol = KAPPA * (smax + c.s)
            return (dmax > 0.0) & ~(lb > np.maximum(dmax, tol) + 2.0 * tol)

        cand = self.layout[open_(_lower_bound(self.pool, c, self.ranges), self.dmax, self.smax)].ravel()
        cand = cand[cand < self.pool.size]
        lb = _lower_bound(self.pool, c, _point_ranges(self.pool, cand))
        return np.sort(cand[open_(lb, self.dmin_ext[cand], self.pool.s[cand])])


def kmeanspp(
    probabilities: Any,
    embeddings: Any,
    budget: int,
    rng: np.random.Generator,
    chunk_rows: int = CHUNK_ROWS,
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """(budget,) int64 row positions: the same picks as `kmeanspp_reference`, with pruning.

    stats, if given, receives 'distance_rows': how many point-to-centre distances were computed
    (the reference computes U per pick).
    """
    return pruned_seeding(prepare(probabilities, embeddings, chunk_rows), budget, rng, chunk_rows, stats)


def pruned_seeding(pool: _Pool, budget: int, rng: np.random.Generator, chunk_rows: int, stats: dict[str, int] | None) -> np.ndarray:
    n = pool.size
    sampler, picked = _D2Sampler(n), np.zeros(n, dtype=bool)
    dmin = sampler.w[:n]
    order: list[int] = []
    computed = 0
    pruner: _Pruner | None = None
    for step in range(budget):
        c = int(np.argmax(pool.s)) if step == 0 else sampler.draw(rng, picked)
        order.append(c)
        picked[c] = True
        if step == budget - 1:
            break
        centre = _centre(pool, c)
        if pruner is None:  # first centre: every minimum is still infinite
            dmin[:] = _distances(pool, np.arange(n), centre, chunk_rows)
            dmin[c] = 0.0
            sampler.rebuild()
            pruner = _Pruner(pool, sampler.w)
            computed += n
            continue
        dmin[c] = 0.0
        rows = pruner.survivors(centre)
        d = _distances(pool, rows, centre, chunk_rows)
        computed += len(rows)
        closer = d < dmin[rows]
        dmin[rows[closer]] = d[closer]
        changed = np.append(rows[closer], c)
        pruner.refresh(changed)
        sampler.update(changed)
    if stats is not None:
        stats["distance_rows"] = stats.get("distance_rows", 0) + computed
    return np.asarray(order, dtype=np.int64)


def _gather(array: Any, rows: np.ndarray, chunk_rows: int, projection: np.ndarray | None = None) -> np.ndarray:
    """array[rows] (ascending) in memory, read chunk by chunk; times `projection` if given."""
    width = array.shape[1] if projection is None else projection.shape[1]
    dtype = np.float32 if projection is not None else np.result_type(array.dtype, np.float16)
    out = np.empty((len(rows), width), dtype=dtype)
    for k in range(0, len(rows), chunk_rows):
        block = read_rows(array, rows[k : k + chunk_rows])
        out[k : k + len(block)] = block if projection is None else block.astype(np.float32) @ projection
    return out


def kmeanspp_approximate(
    probabilities: Any,
    embeddings: Any,
    budget: int,
    rng: np.random.Generator,
    candidates: int | None = None,
    projection_dim: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """(budget,) int64 row positions: exact k-means++ (`kmeanspp`) on a cheaper problem.

    The official code's large-pool BADGE draws a random candidate subset (320k) and splits it
    into 20 parts of budget/20 picks each; here the pruned exact search makes the split
    unnecessary, so only its two savings remain, each optional:
      * candidates: a uniform draw of this many rows (from `rng`, before any pick) is the only
        set picked from: memory and time scale with it instead of U;
      * projection_dim: the hidden embeddings h are multiplied by a Gaussian matrix
        (D x k, scaled by 1/sqrt(k), from `rng`), which keeps |g| and the distances of the
        gradient embeddings to within a few 1/sqrt(k) (Johnson-Lindenstrauss) while the rows read
        per distance shrink from C + D to C + k.
    Neither keeps the exact picks; benchmarks/strategies.py measures the overlap with them.
    """
    n = len(probabilities)
    if candidates is not None and not budget <= candidates:
        raise ConfigError(f"BADGE candidates ({candidates}) must be at least the round budget ({budget})")
    if projection_dim is not None and projection_dim < 1:
        raise ConfigError(f"BADGE projection_dim must be >= 1, got {projection_dim}")
    rows = np.arange(n, dtype=np.int64)
    if candidates is not None and candidates < n:
        rows = np.sort(rng.choice(n, size=candidates, replace=False))
    projection = None
    if projection_dim is not None:
        dim = embeddings.shape[1]
        projection = (rng.standard_normal((dim, projection_dim)) / np.sqrt(projection_dim)).astype(np.float32)
    p = probabilities if len(rows) == n else _gather(probabilities, rows, chunk_rows)
    h = embeddings if len(rows) == n and projection is None else _gather(embeddings, rows, chunk_rows, projection)
    return rows[pruned_seeding(prepare(p, h, chunk_rows), budget, rng, chunk_rows, None)]
