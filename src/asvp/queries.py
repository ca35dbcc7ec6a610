"""The cheap per-round file steps: round 0's random query and the (simulated) oracle.

Kept free of torch so these many small jobs start in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asvp.atomic import write_csv, write_npy
from asvp.errors import ConfigError
from asvp.pool import label_selection, read_labelled, read_selected, read_split_table, unlabelled_indices, write_selected
from asvp.strategies import PoolState, get_strategy


def round_rng(seed: int, round_index: int) -> np.random.Generator:
    """One independent, reproducible random stream per (seed, round)."""
    return np.random.default_rng([seed, round_index])


def needs_model(strategy_name: str) -> bool:
    """Whether a strategy scores with a model (proxy or network), i.e. whether it needs torch."""
    return "probabilities" in get_strategy(strategy_name).needs


def apply_strategy(
    strategy_name: str,
    budget: int,
    seed: int,
    round_index: int,
    pool_csv: str | Path,
    labelled_csv: str | Path,
    selected_out: str | Path,
    scores_out: str | Path,
    probabilities: np.ndarray | None = None,
) -> None:
    """Pick `budget` unlabelled images with a strategy; write selected.csv and (N,) float32 scores.

    `probabilities`: (U, C) float32 model outputs in the order of the unlabelled pool, for the
    strategies that need them (computed by `rounds.select_round`). Random needs none, so the
    random baseline's selection runs without torch.
    """
    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    unlabelled = unlabelled_indices(len(pool), labelled)
    state = PoolState(unlabelled=unlabelled, labelled=labelled["pool_index"].to_numpy(), probabilities=probabilities)
    selected, scores = get_strategy(strategy_name).select(state, budget, round_rng(seed, round_index))
    full_scores = np.full(len(pool), np.nan, dtype=np.float32)
    full_scores[unlabelled] = scores
    write_selected(selected_out, pool, selected, full_scores[selected])
    write_npy(scores_out, full_scores)


def select_with_proxy(
    strategy_name: str,
    budget: int,
    seed: int,
    round_index: int,
    pool_csv: str | Path,
    labelled_csv: str | Path,
    features_path: str | Path,
    weights_path: str | Path,
    selected_out: str | Path,
    scores_out: str | Path,
    batch_size: int = 16384,
) -> None:
    """SVPp/ASVP selection: score the unlabelled pool with the proxy's weights (numpy, no torch)."""
    from asvp import features as feature_store
    from asvp.proxy_scoring import load_weights, proxy_probabilities

    pool = read_split_table(pool_csv)
    unlabelled = unlabelled_indices(len(pool), read_labelled(labelled_csv, len(pool)))
    with feature_store.open_features(features_path) as handle:
        probabilities = proxy_probabilities(load_weights(weights_path), handle["pool/features"], unlabelled, batch_size)
    apply_strategy(strategy_name, budget, seed, round_index, pool_csv, labelled_csv, selected_out, scores_out, probabilities)


def select_initial(pool_csv: str | Path, budget: int, seed: int, out: str | Path) -> None:
    """Round 0: a seeded uniform draw (every strategy starts from random labels, as in the paper)."""
    pool = read_split_table(pool_csv)
    if budget > len(pool):
        raise ConfigError(f"schedule.budgets[0] = {budget} exceeds the pool of {len(pool)} images; lower it")
    selected = round_rng(seed, 0).choice(len(pool), size=budget, replace=False)
    write_selected(out, pool, selected, np.full(budget, np.nan))


def label_round(
    selected_csv: str | Path, pool_csv: str | Path, previous_csv: str | Path | None, round_index: int, out: str | Path
) -> None:
    """Ask the (simulated) oracle for the selected images' labels; append them to the labelled set."""
    pool = read_split_table(pool_csv)
    selected = read_selected(selected_csv, len(pool))
    previous = read_labelled(previous_csv, len(pool)) if previous_csv else None
    write_csv(out, label_selection(selected, pool, previous, round_index))
