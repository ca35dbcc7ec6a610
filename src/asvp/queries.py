"""The per-round query steps: round 0's random query, proxy scoring, ActiveFT on the
pre-trained features (single shot), and the (simulated) oracle.

The cheap ones are kept free of torch so these many small jobs start in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asvp.atomic import write_csv, write_npy
from asvp.errors import ConfigError
from asvp.pool import label_selection, read_labelled, read_selected, read_split_table, unlabelled_indices, write_selected
from asvp.strategies import PoolState, get_strategy
from asvp.strategies.base import Strategy, check_budget, top_scores


def round_rng(seed: int, round_index: int) -> np.random.Generator:
    """One independent, reproducible random stream per (seed, round)."""
    return np.random.default_rng([seed, round_index])


def strategy_from_config(name: str, config: dict[str, Any] | None) -> Strategy:
    """The strategy with its `strategy_options.<name>`; ActiveFT also follows the `device` key."""
    config = config or {}
    options = dict(config.get("strategy_options", {}).get(name, {}))
    if name == "activeft" and "device" in config:
        options["device"] = config["device"]
    return get_strategy(name, options)


def needs_model(strategy_name: str) -> bool:
    """Whether a strategy scores with a model (proxy or network), i.e. whether it needs torch."""
    return bool({"probabilities", "embeddings"} & get_strategy(strategy_name).needs)


def _write_selection(pool, unlabelled: np.ndarray, selected: np.ndarray, scores: np.ndarray,  # type: ignore[no-untyped-def]
                     selected_out: str | Path, scores_out: str | Path) -> None:
    full_scores = np.full(len(pool), np.nan, dtype=np.float32)
    full_scores[unlabelled] = scores
    write_selected(selected_out, pool, selected, full_scores[selected])
    write_npy(scores_out, full_scores)


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
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Pick `budget` unlabelled images with a strategy; write selected.csv and (N,) float32 scores.

    `probabilities`: (U, C) float32 model outputs in the order of the unlabelled pool, and
    `embeddings` (U, D) / `labelled_embeddings` (L, D), for the strategies that need them
    (computed by `rounds.select_round`). Random needs none, so the random baseline's
    selection runs without torch.
    """
    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    unlabelled = unlabelled_indices(len(pool), labelled)
    state = PoolState(unlabelled=unlabelled, labelled=labelled["pool_index"].to_numpy(), probabilities=probabilities,
                      embeddings=embeddings, labelled_embeddings=labelled_embeddings)
    selected, scores = strategy_from_config(strategy_name, config).select(state, budget, round_rng(seed, round_index))
    _write_selection(pool, unlabelled, selected, scores, selected_out, scores_out)


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
    config: dict[str, Any] | None = None,
) -> None:
    """SVPp/ASVP selection: score the unlabelled pool with the proxy's weights (numpy, no torch).

    Uncertainty strategies score each chunk as the proxy streams the pool (never a (U, C)
    array). Diversity strategies get the proxy's hidden embeddings as memory-mapped .npy files
    next to `selected_out` (proxy_hidden.npy, proxy_labelled_hidden.npy, proxy_probabilities.npy),
    removed once the selection is written.
    """
    from asvp import features as feature_store
    from asvp.proxy_scoring import load_weights, proxy_chunks, write_proxy_outputs

    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    labelled_rows = labelled["pool_index"].to_numpy()
    unlabelled = unlabelled_indices(len(pool), labelled)
    strategy = strategy_from_config(strategy_name, config)
    batch_size = (config or {}).get("proxy", {}).get("inference_batch_size", 16384)
    weights = load_weights(weights_path)
    rng = round_rng(seed, round_index)
    check_budget(PoolState(unlabelled=unlabelled, labelled=labelled_rows), budget)
    with feature_store.open_features(features_path) as handle:
        pool_features = handle["pool/features"]
        if strategy.rowwise:
            scores = np.empty(len(unlabelled), dtype=np.float64)
            for start, probabilities, _ in proxy_chunks(weights, pool_features, unlabelled, batch_size):
                rows = unlabelled[start : start + len(probabilities)]
                scores[start : start + len(rows)] = strategy.score(
                    PoolState(unlabelled=rows, labelled=labelled_rows, probabilities=probabilities), rng)
            _write_selection(pool, unlabelled, top_scores(unlabelled, scores, budget), scores, selected_out, scores_out)
            return
        paths = write_proxy_outputs(weights, pool_features, unlabelled, labelled_rows, Path(selected_out).parent, batch_size,
                                    with_probabilities="probabilities" in strategy.needs)
    opened = {name: np.load(path, mmap_mode="r") for name, path in paths.items()}
    state = PoolState(unlabelled=unlabelled, labelled=labelled_rows, probabilities=opened.get("probabilities"),
                      embeddings=opened["hidden"], labelled_embeddings=opened["labelled_hidden"])
    selected, scores = strategy.select(state, budget, rng)
    _write_selection(pool, unlabelled, selected, scores, selected_out, scores_out)
    del state, opened
    for path in paths.values():  # recomputable from proxy.npz + features; 5 GB a round at ImageNet scale
        path.unlink()


def select_on_pretrained_features(
    budget: int,
    seed: int,
    round_index: int,
    pool_csv: str | Path,
    features_path: str | Path,
    selected_out: str | Path,
    scores_out: str | Path,
    config: dict[str, Any] | None = None,
) -> None:
    """ActiveFT with no labels on the pre-trained features of the whole pool: a single shot.

    This is the ActiveFT(pre) baseline (every evaluation point is its own single shot of that
    many labels, as in the paper, so its labelled sets are not nested) and round 0 of the
    `activeft` strategy (the official code's ActiveFT(al) starts from raw features, not random).
    The features are read from the HDF5 file in row chunks, never as one array.
    """
    from asvp import features as feature_store

    pool = read_split_table(pool_csv)
    strategy = strategy_from_config("activeft", config)
    everything = np.arange(len(pool), dtype=np.int64)
    with feature_store.open_features(features_path) as handle:
        state = PoolState(unlabelled=everything, labelled=everything[:0], embeddings=handle["pool/features"])
        selected, scores = strategy.select(state, budget, round_rng(seed, round_index))
    losses = getattr(strategy, "last_losses", None)
    if losses is not None and len(losses):
        print(f"ActiveFT: {len(losses)} iterations, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    _write_selection(pool, everything, selected, scores, selected_out, scores_out)


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
