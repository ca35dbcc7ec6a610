"""The per-round query steps: round 0's random query, proxy scoring, ActiveFT on the
pre-trained features (single shot), and the (simulated) oracle.

The cheap ones are kept free of torch so these many small jobs start in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asvp.atomic import write_csv, write_npy
from asvp.crash import crash_point
from asvp.errors import ConfigError, DataError
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
    from asvp.proxy_scoring import INFERENCE_BATCH_SIZE, load_weights, proxy_chunks, write_proxy_outputs

    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    labelled_rows = labelled["pool_index"].to_numpy()
    unlabelled = unlabelled_indices(len(pool), labelled)
    strategy = strategy_from_config(strategy_name, config)
    batch_size = INFERENCE_BATCH_SIZE
    weights = load_weights(weights_path)
    rng = round_rng(seed, round_index)
    check_budget(PoolState(unlabelled=unlabelled, labelled=labelled_rows), budget)
    with feature_store.open_features(features_path) as handle:
        feature_store.check_sample_ids(handle, np.arange(len(pool)), pool["sample_id"].tolist(), pool_csv)
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
        feature_store.check_sample_ids(handle, everything, pool["sample_id"].tolist(), pool_csv)
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


def request_labels(
    selected_csv: str | Path,
    pool_csv: str | Path,
    dataset_json: str | Path,
    data_config: dict[str, Any],
    out_csv: str | Path,
    sheet_png: str | Path,
    weights_path: str | Path | None = None,
    features_path: str | Path | None = None,
) -> None:
    """Human oracle: write to_label.csv and its contact sheet for the round's selection; the
    proxy's predicted class is the hint when the round selected with a proxy (torch-free)."""
    from asvp.atomic import read_json
    from asvp.data.sources import open_source
    from asvp.oracle import answers_path, write_request

    pool = read_split_table(pool_csv)
    selected = read_selected(selected_csv, len(pool))
    classes = read_json(dataset_json)["classes"]
    predicted = None
    if weights_path is not None and features_path is not None:
        from asvp import features as feature_store
        from asvp.proxy_scoring import load_weights, proxy_chunks

        rows = selected["pool_index"].to_numpy(np.int64)
        predicted = np.empty(len(rows), dtype=np.int64)
        with feature_store.open_features(features_path) as handle:
            for start, probabilities, _ in proxy_chunks(load_weights(weights_path), handle["pool/features"], rows, 16384):
                predicted[start : start + len(probabilities)] = probabilities.argmax(axis=1)
    source = open_source(data_config["dataset"], data_config["root"], "train")
    write_request(selected, pool, source, classes, predicted, out_csv, sheet_png)
    run_dir = Path(out_csv).parent.parent
    round_index = int(Path(out_csv).parent.name.removeprefix("round"))
    print(f"{len(selected)} images to label: {out_csv} lists them, {sheet_png} shows them. "
          f"Write {answers_path(run_dir, round_index)} (sample_id,class) and rerun.")


def label_round(
    selected_csv: str | Path,
    pool_csv: str | Path,
    previous_csv: str | Path | None,
    round_index: int,
    out: str | Path,
    classes: list[str] | None = None,
    answers: str | Path | None = None,
    request_csv: str | Path | None = None,
) -> None:
    """Ask the oracle for the selected images' labels; append them to the labelled set.

    Without `answers` the oracle is simulated from the dataset's labels (pool.csv); with them,
    a person's answers (asvp.oracle) are validated against `request_csv` (to_label.csv) in full
    before anything is written. `classes` adds each label's class name to labelled.csv.
    """
    pool = read_split_table(pool_csv)
    selected = read_selected(selected_csv, len(pool))
    previous = read_labelled(previous_csv, len(pool)) if previous_csv else None
    if answers is not None:
        from asvp.oracle import read_answers, read_request

        if classes is None or request_csv is None:
            raise ValueError("a person's answers need the class names and the round's to_label.csv")
        request = read_request(request_csv)
        if request["pool_index"].tolist() != selected["pool_index"].tolist():
            raise DataError(f"{request_csv} does not list this round's selection ({selected_csv}); delete it and rerun "
                            "to write it again")
        pool = pool.copy()
        truth = pool["label"].to_numpy(np.int64).copy()
        truth[selected["pool_index"].to_numpy(np.int64)] = read_answers(answers, request, classes)
        pool["label"] = truth
    labelled = label_selection(selected, pool, previous, round_index)
    if classes is not None:
        labelled["class_name"] = np.asarray(classes, dtype=object)[labelled["label"].to_numpy(np.int64)]
    write_csv(out, labelled)
    crash_point("labelled")
