"""ActiveFT (Xie et al., CVPR 2023, "Active Finetuning"): pick the samples nearest to centroids
optimised so that they cover the pool's feature distribution.

Algorithm (paper eq. 5-7; the official `sample_tools/ActiveFT_large.py`, notes sec. 1.5):
features f are L2-normalised; K centroids c_k, of which the labelled samples' features are
FIXED and `budget` new ones are parameters (initialised from `budget` random unlabelled rows).
Each iteration draws a random batch of pool rows and minimises, with Adam,

    J = -mean_i [ s_i,k(i) - log( exp(s_i,k(i)) + balance * sum_j exp(c^_k(i) . c-bar_j / tau) ) ]

with s_ik = f_i . c^_k / tau, k(i) = argmax_k s_ik, c^ the normalised centroids and c-bar the
same detached (the sum over j includes j = k(i)). The first term pulls each centroid to the
samples it wins, the second pushes centroids apart. After optimisation each NEW centroid, in
index order, takes the highest-cosine unlabelled sample not yet taken.

Two departures from the official code, both fixes (notes sec. 1.5): only the new centroids are
matched, and only against unlabelled rows, so a labelled sample is never swapped out; and the
matching streams the pool (below) instead of sorting a K x N matrix and testing Python-list
membership. The loss is computed in log space (`logaddexp`) rather than exp-then-log, which
gives the same value without float32 overflow.

Memory: nothing of size U x K or U x D (float32) is ever built. A batch's similarity to the K
centroids is taken in row slices of at most `max_elements` entries; the repulsion term's gradient
(a softmax-weighted mean of the detached centroids, since c-bar carries no gradient) is computed
in closed form slice by slice and attached through a zero-valued surrogate, so autograd keeps
only batch x D and budget x D tensors. All randomness is drawn from the numpy `rng` (batch rows
and initial centroids; torch draws nothing), so the same rng gives the same picks, bit for bit
on the CPU.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asvp.errors import ConfigError, DataError, require_finite_rows
from asvp.features import read_rows
from asvp.strategies.base import PoolState, Strategy, check_budget, register

MAX_ELEMENTS = 1 << 24  # entries of one similarity slice: 64 MiB of float32
READ_ROWS = 16384  # pool rows read from storage at a time during matching
CANDIDATES = 64  # top-m unlabelled candidates kept per centroid during matching
ITERATIONS = 100  # Adam steps on the centroids by default (the official ASVP code's; not a config key)


def _torch_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"ActiveFT device '{device}' requested but CUDA is not available; use device 'cpu' or 'auto'")
    return torch.device(device)


def _read(array: Any, rows: np.ndarray | slice, what: str, device: Any) -> Any:
    """L2-normalised float32 tensor of array[rows], in the order of `rows`."""
    import torch
    import torch.nn.functional as F

    block = np.array(read_rows(array, rows), dtype=np.float32)  # a copy: a float32 memory map is read-only
    require_finite_rows(block, what, row_numbers=rows)
    return F.normalize(torch.from_numpy(block).to(device), dim=1)


def _read_all(array: Any, what: str, device: Any, dim: int) -> Any:
    """All rows of a (L, D) array-like, normalised, read in chunks (None or empty: (0, dim))."""
    import torch

    if array is None or array.shape[0] == 0:
        return torch.zeros((0, dim), dtype=torch.float32, device=device)
    if array.ndim != 2 or array.shape[1] != dim:
        raise DataError(f"{what} have shape {tuple(array.shape)} but the pool embeddings have {dim} columns")
    out = torch.empty((array.shape[0], dim), dtype=torch.float32, device=device)
    for start in range(0, array.shape[0], READ_ROWS):
        stop = min(start + READ_ROWS, array.shape[0])
        out[start:stop] = _read(array, slice(start, stop), what, device)
    return out


def _max_similarity(feats: Any, fixed: Any, new: Any, tau: float, max_elements: int) -> tuple[Any, Any]:
    """(B,) max_k f_i . c_k / tau and its argmax k(i) over [fixed; new] (ties: lower k)."""
    import torch

    n_fixed, k_total = fixed.shape[0], fixed.shape[0] + new.shape[0]
    step = max(1, max_elements // k_total)
    values, argmax = [], []
    for start in range(0, feats.shape[0], step):
        f = feats[start : start + step]
        best, arg = (f @ new.T).max(dim=1)
        arg = arg + n_fixed
        if n_fixed:
            best_fixed, arg_fixed = (f @ fixed.T).max(dim=1)
            use_fixed = best_fixed >= best
            best, arg = torch.where(use_fixed, best_fixed, best), torch.where(use_fixed, arg_fixed, arg)
        values.append(best / tau)
        argmax.append(arg)
    return torch.cat(values), torch.cat(argmax)


def _repulsion(rows: Any, fixed: Any, new: Any, tau: float, max_elements: int, gradient: bool) -> tuple[Any, Any]:
    """log sum_j exp(r . c-bar_j / tau) per row over [fixed; new], and (if asked) its gradient
    w.r.t. r: sum_j softmax_j c-bar_j / tau (c-bar detached, so this is the whole gradient)."""
    import torch

    n_fixed, k_total = fixed.shape[0], fixed.shape[0] + new.shape[0]
    step = max(1, max_elements // k_total)
    lse, grads = [], []
    for start in range(0, rows.shape[0], step):
        r = rows[start : start + step]
        logits = torch.cat([r @ fixed.T, r @ new.T], dim=1) / tau
        lse.append(torch.logsumexp(logits, dim=1))
        if gradient:
            weights = torch.softmax(logits, dim=1)
            grads.append((weights[:, :n_fixed] @ fixed + weights[:, n_fixed:] @ new) / tau)
    empty = rows.new_zeros((0, rows.shape[1]))
    return torch.cat(lse) if lse else rows.new_zeros(0), torch.cat(grads) if grads else empty


def _loss(feats: Any, fixed: Any, param: Any, tau: float, log_balance: float, max_elements: int) -> Any:
    """The ActiveFT objective J on one batch, differentiable w.r.t. the new centroids only."""
    import torch
    import torch.nn.functional as F

    new = F.normalize(param, dim=1)
    n_fixed = fixed.shape[0]
    with torch.no_grad():
        new_bar = new.detach()
        s_val, k = _max_similarity(feats, fixed, new_bar, tau, max_elements)
        uniq, inverse = torch.unique(k, return_inverse=True)  # sorted: fixed centroids first
        won_fixed = uniq[uniq < n_fixed]
        won_new = uniq[uniq >= n_fixed] - n_fixed
        r_fixed, _ = _repulsion(fixed[won_fixed], fixed, new_bar, tau, max_elements, gradient=False)
        r_new, g_new = _repulsion(new_bar[won_new], fixed, new_bar, tau, max_elements, gradient=True)
    # Zero-valued surrogates carry the gradients: d s_ik/d c^_k = f_i / tau, d R_k/d c^_k = g_k.
    on_new = torch.nonzero(k >= n_fixed).squeeze(1)
    pull = (feats[on_new] * new[k[on_new] - n_fixed]).sum(dim=1) / tau
    s = s_val.index_add(0, on_new, pull - pull.detach())
    push = (new[won_new] * g_new).sum(dim=1)
    new_slots = torch.arange(len(won_fixed), len(uniq), device=feats.device)
    repulsion = torch.cat([r_fixed, r_new]).index_add(0, new_slots, push - push.detach())[inverse]
    return -(s - torch.logaddexp(s, log_balance + repulsion)).mean()


def _candidates(
    embeddings: Any, centroids: Any, m: int, taken: np.ndarray | None, max_elements: int, device: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """One streaming pass: per centroid, the m highest-cosine rows not in `taken`, best first,
    as (C, m) int64 positions; and, on the first pass (taken None), each row's max cosine."""
    import torch

    n_rows, n_cent = embeddings.shape[0], centroids.shape[0]
    top_val = torch.empty((0, n_cent), device=device)
    top_idx = torch.empty((0, n_cent), dtype=torch.int64, device=device)
    best = np.empty(n_rows, dtype=np.float64) if taken is None else None
    for start in range(0, n_rows, READ_ROWS):
        stop = min(start + READ_ROWS, n_rows)
        feats = _read(embeddings, slice(start, stop), "pool embeddings", device)
        row_best = torch.full((stop - start,), -torch.inf, device=device)
        if taken is not None:
            masked = torch.from_numpy(taken[start:stop]).to(device)
        step = max(1, max_elements // (stop - start))
        for c0 in range(0, n_cent, step):
            c1 = min(c0 + step, n_cent)
            sim = feats @ centroids[c0:c1].T  # (rows, centroids in this slice)
            if taken is None:
                row_best = torch.maximum(row_best, sim.max(dim=1).values)
            else:
                sim[masked] = -torch.inf
            val, idx = sim.topk(min(m, stop - start), dim=0)
            val = torch.cat([top_val[:, c0:c1], val])
            idx = torch.cat([top_idx[:, c0:c1], idx + start])
            keep_val, order = val.topk(min(m, val.shape[0]), dim=0)
            if c0 == 0:
                new_val = torch.empty((keep_val.shape[0], n_cent), device=device)
                new_idx = torch.empty((keep_val.shape[0], n_cent), dtype=torch.int64, device=device)
            new_val[:, c0:c1], new_idx[:, c0:c1] = keep_val, idx.gather(0, order)
        top_val, top_idx = new_val, new_idx
        if best is not None:
            best[start:stop] = row_best.cpu().numpy()
    return top_idx.T.cpu().numpy(), best


def _match(embeddings: Any, centroids: Any, candidates: int, max_elements: int, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in centroid order, each to its best row not yet taken; and the scores.

    Centroid t can lose at most t candidates to earlier centroids, so keeping the top-m rows per
    centroid almost always suffices. When a centroid's list is used up, one more pass re-streams
    the pool with the taken rows masked and refreshes the lists of all centroids not yet
    matched, which keeps the result identical to an exhaustive greedy match.
    """
    n_rows, n_cent = embeddings.shape[0], centroids.shape[0]
    m = min(candidates, n_rows)
    lists, scores = _candidates(embeddings, centroids, m, None, max_elements, device)
    taken = np.zeros(n_rows, dtype=bool)
    picks = np.empty(n_cent, dtype=np.int64)
    for t in range(n_cent):
        free = np.flatnonzero(~taken[lists[t]])
        if free.size == 0:
            lists[t:], _ = _candidates(embeddings, centroids[t:], m, taken, max_elements, device)
            free = np.flatnonzero(~taken[lists[t]])
        picks[t] = lists[t, free[0]]
        taken[picks[t]] = True
    return picks, scores


def activeft_select(
    embeddings: Any,
    labelled_embeddings: Any,
    budget: int,
    rng: np.random.Generator,
    iterations: int = ITERATIONS,
    batch_size: int = 20000,
    tau: float = 0.07,
    lr: float = 1e-3,
    balance: float = 1.0,
    device: str = "cpu",
    candidates: int = CANDIDATES,
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick `budget` rows of `embeddings` with ActiveFT, the labelled rows as fixed centroids.

    embeddings: (U, D) float16/float32 array-like (numpy, memmap, h5py dataset), the candidates.
    labelled_embeddings: (L, D) array-like, None or empty: fixed centroids, never picked.
    Returns (budget,) int64 positions into `embeddings` in pick order (new-centroid order);
    (U,) float64 scores, each row's max cosine similarity to the final new centroids (-inf for
    every row when budget is 0); (iterations,) float64 loss J per iteration, on that iteration's
    batch before its Adam step.
    """
    import torch
    from tqdm import tqdm

    if iterations < 0 or batch_size < 1 or tau <= 0 or lr <= 0 or balance < 0 or candidates < 1:
        raise ConfigError(
            f"ActiveFT needs iterations >= 0, batch_size >= 1, tau > 0, lr > 0, balance >= 0 and candidates >= 1; "
            f"got {iterations}, {batch_size}, {tau}, {lr}, {balance}, {candidates}"
        )
    n_rows, dim = embeddings.shape
    if not 0 <= budget <= n_rows:
        raise ConfigError(f"ActiveFT budget {budget} is outside 0..{n_rows} (the unlabelled rows)")
    if budget == 0:
        return np.empty(0, dtype=np.int64), np.full(n_rows, -np.inf), np.empty(0)
    dev = _torch_device(device)
    fixed = _read_all(labelled_embeddings, "labelled embeddings", dev, dim)
    init = rng.choice(n_rows, size=budget, replace=False)
    param = torch.nn.Parameter(_read(embeddings, init, "pool embeddings", dev))
    optimizer = torch.optim.Adam([param], lr=lr)
    log_balance = float(np.log(balance)) if balance > 0 else -np.inf
    losses = np.empty(iterations, dtype=np.float64)
    for it in tqdm(range(iterations), desc="ActiveFT", disable=not progress, mininterval=5.0):
        rows = np.sort(rng.choice(n_rows, size=min(batch_size, n_rows), replace=False))
        loss = _loss(_read(embeddings, rows, "pool embeddings", dev), fixed, param, tau, log_balance, max_elements)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[it] = loss.item()
    centroids = torch.nn.functional.normalize(param.detach(), dim=1)
    picks, scores = _match(embeddings, centroids, candidates, max_elements, dev)
    return picks, scores, losses


@register
class ActiveFT(Strategy):
    """ActiveFT on `state.embeddings`; labelled samples are fixed centroids (incremental rounds).

    Round 0 of `activeft_pre` runs it with no labels on pre-trained features; `activeft_al` runs
    it on proxy embeddings in later rounds. Scores: each unlabelled sample's max cosine to the
    final new centroids. `last_losses` holds the loss per iteration of the last selection.
    """

    name = "activeft"
    needs = frozenset({"embeddings"})
    cold_start = True  # round 0 as the official ActiveFT(al): from the pre-trained features, not random
    uses_device = True

    def __init__(self, device: str = "cpu", iterations: int = ITERATIONS, batch_size: int = 20000, tau: float = 0.07,
                 lr: float = 1e-3, balance: float = 1.0, progress: bool = False) -> None:
        self.options = {"iterations": iterations, "batch_size": batch_size, "tau": tau, "lr": lr,
                        "balance": balance, "device": device, "progress": progress}
        self.last_losses: np.ndarray | None = None

    def select(self, state: PoolState, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_budget(state, budget)
        if state.embeddings is None:
            raise ValueError("ActiveFT needs the pool embeddings (state.embeddings)")
        if state.embeddings.shape[0] != len(state.unlabelled):
            raise DataError(
                f"ActiveFT got {state.embeddings.shape[0]} embedding rows for {len(state.unlabelled)} unlabelled "
                "samples; the embeddings must follow state.unlabelled"
            )
        if state.labelled_embeddings is not None and state.labelled_embeddings.shape[0] != len(state.labelled):
            raise DataError(
                f"ActiveFT got {state.labelled_embeddings.shape[0]} labelled embedding rows for "
                f"{len(state.labelled)} labelled samples; they must follow state.labelled"
            )
        picks, scores, self.last_losses = activeft_select(state.embeddings, state.labelled_embeddings, budget, rng,
                                                          **self.options)
        return state.unlabelled[picks], scores
