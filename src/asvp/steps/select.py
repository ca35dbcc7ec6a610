"""A round's queries (rules/select.smk): pick the batch, then have the oracle label it.

Round 0 is a seeded random draw, or a pick on the pre-trained features (schedule.cold_start,
or the strategy's own cold start: ActiveFT), or the labels you already have
(data.initial_labels). Later rounds score the unlabelled pool with the method's selection
model: the MLP proxy on pre-computed features (SVPp, ASVP), the fine-tuned network on the
images (standard AL), nothing (random); ActiveFT(pre) selects each evaluation point afresh, without labels.
Random, proxy scoring and labelling run without torch, so these many small jobs start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asvp.atomic import write_csv, write_npy
from asvp.crash import crash_point
from asvp.errors import ConfigError, DataError
from asvp.pool import label_selection, read_labelled, read_selected, read_split_table, unlabelled_indices, write_selected
from asvp.strategies import PoolState, configured_strategy, get_strategy
from asvp.strategies.base import check_budget, top_scores

@dataclass(frozen=True)
class Query:
    """One round's selection: which run and round, how many images, and its files.

    pool: pool.csv; labelled: the labelled set so far (None when nothing is labelled yet);
    selected_out: selected.csv to write; scores_out: (N,) float32 scores of the whole pool
    (NaN where not scored) to write.
    """

    strategy: str
    budget: int
    seed: int
    round: int
    pool: str
    labelled: str | None
    selected_out: str
    scores_out: str


def round_rng(seed: int, round_index: int) -> np.random.Generator:
    """One independent, reproducible random stream per (seed, round)."""
    return np.random.default_rng([seed, round_index])


def _write_selection(pool: Any, unlabelled: np.ndarray, selected: np.ndarray, scores: np.ndarray, query: Query) -> None:
    full_scores = np.full(len(pool), np.nan, dtype=np.float32)
    full_scores[unlabelled] = scores
    write_selected(query.selected_out, pool, selected, full_scores[selected])
    write_npy(query.scores_out, full_scores)


def _pool_state(query: Query) -> tuple[Any, np.ndarray, np.ndarray]:
    """(pool table, labelled pool indices, unlabelled pool indices ascending) of the query's round."""
    pool = read_split_table(query.pool)
    if query.labelled is None:
        return pool, np.zeros(0, dtype=np.int64), np.arange(len(pool), dtype=np.int64)
    labelled = read_labelled(query.labelled, len(pool))
    return pool, labelled["pool_index"].to_numpy(), unlabelled_indices(len(pool), labelled)


def select_initial(query: Query) -> None:
    """Round 0: a seeded uniform draw (every strategy starts from random labels, as in the
    paper), unless the strategy has a cold start of its own (select_single_shot runs that)."""
    if get_strategy(query.strategy).cold_start:
        raise ValueError(f"strategy {query.strategy} starts on the pre-trained features: run select-single-shot")
    pool = read_split_table(query.pool)
    if query.budget > len(pool):
        raise ConfigError(f"schedule.budgets[0] = {query.budget} exceeds the pool of {len(pool)} images; lower it")
    selected = round_rng(query.seed, 0).choice(len(pool), size=query.budget, replace=False)
    write_selected(query.selected_out, pool, selected, np.full(query.budget, np.nan))
    write_npy(query.scores_out, np.full(len(pool), np.nan, dtype=np.float32))


def initial_labels(config: dict[str, Any], labels: str, pool: str, dataset_json: str, selected_out: str,
                   scores_out: str, labelled_out: str) -> None:
    """Round 0 from labels you already have (data.initial_labels): selected.csv lists their images
    in the file's order, labelled.csv holds their classes; no oracle is asked. Validated in full
    (as a person's answers) before anything is written."""
    from asvp.atomic import read_json
    from asvp.data.unlabelled import pool_root, read_initial_labels
    from asvp.pool import label_selection

    table = read_split_table(pool)
    classes = read_json(dataset_json)["classes"]
    rows, labels = read_initial_labels(labels, table["sample_id"].tolist(), pool_root(config["data"]), classes)
    given = table.copy()
    truth = given["label"].to_numpy(np.int64).copy()
    truth[rows] = labels
    given["label"] = truth
    write_selected(selected_out, table, rows, np.full(len(rows), np.nan))
    write_npy(scores_out, np.full(len(table), np.nan, dtype=np.float32))
    labelled = label_selection(read_selected(selected_out, len(table)), given, None, 0)
    labelled["class_name"] = np.asarray(classes, dtype=object)[labelled["label"].to_numpy(np.int64)]
    write_csv(labelled_out, labelled)
    print(f"round 0: {len(rows)} images labelled in {labels}")


def select_single_shot(query: Query, features: str, config: dict[str, Any] | None = None) -> None:
    """A pick with no labels on the pre-trained features of the whole pool: a single shot.

    The ActiveFT(pre) baseline (every evaluation point is its own single shot of that many
    labels, as in the paper, so its labelled sets are not nested), and round 0 on the features:
    schedule.cold_start when `config` holds it (`coreset`: k-center greedy from a seeded first
    centre; `activeft`; asvp.plan.round0_params_json), else the `activeft` strategy's own cold
    start. The features are read in row chunks, never whole.
    """
    from asvp import features as feature_store

    pool = read_split_table(query.pool)
    cold_start = (config or {}).get("schedule", {}).get("cold_start") if query.round == 0 else None
    strategy = configured_strategy(cold_start or query.strategy, config)
    everything = np.arange(len(pool), dtype=np.int64)
    with feature_store.open_features(features) as handle:
        feature_store.check_sample_ids(handle, everything, pool["sample_id"].tolist(), query.pool)
        state = PoolState(unlabelled=everything, labelled=everything[:0], embeddings=handle["pool/features"])
        selected, scores = strategy.select(state, query.budget, round_rng(query.seed, query.round))
    losses = getattr(strategy, "last_losses", None)
    if losses is not None and len(losses):
        print(f"ActiveFT: {len(losses)} iterations, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    _write_selection(pool, everything, selected, scores, query)


def select_random(query: Query) -> None:
    """The random baseline's later rounds: a seeded uniform draw from the unlabelled pool."""
    pool, labelled, unlabelled = _pool_state(query)
    state = PoolState(unlabelled=unlabelled, labelled=labelled)
    selected, scores = get_strategy(query.strategy).select(state, query.budget, round_rng(query.seed, query.round))
    _write_selection(pool, unlabelled, selected, scores, query)


def train_proxy(config: dict[str, Any], features: str, labelled: str, seed: int, round: int, weights_out: str) -> None:
    """Train a fresh MLP proxy on the labelled samples' features; write its weights as arrays
    (proxy.npz), which the scoring step reads without torch.

    The features file's attributes are checked first against what the config's data and
    backbone sections imply, when it has them."""
    from asvp import features as feature_store
    from asvp.proxy import ProxyRecipe, save_weights
    from asvp.proxy import train_proxy as fit_proxy
    from asvp.steps.features import features_identity

    attrs = feature_store.read_attrs(features)
    num_classes = int(attrs["num_classes"])
    with feature_store.open_features(features) as handle:
        feature_store.check_identity(handle, features_identity(config) if {"data", "backbone"} <= config.keys() else {})
        pool_size = handle["pool/labels"].shape[0]
        table = read_labelled(labelled, pool_size, num_classes)
        rows = table["pool_index"].to_numpy()
        feature_store.check_sample_ids(handle, rows, table["sample_id"].tolist(), labelled)
    x, _ = feature_store.load_rows(features, "pool", rows)
    model = fit_proxy(x, table["label"].to_numpy(), num_classes, ProxyRecipe.from_config(config["proxy"]),
                      seed=seed * 1000 + round)
    save_weights(model, weights_out)
    print(f"proxy trained on {len(rows)} labelled samples of {features}")


def select_proxy(query: Query, features: str, proxy_weights: str, config: dict[str, Any] | None = None) -> None:
    """SVPp/ASVP selection: score the unlabelled pool with the proxy's weights (numpy, no torch).

    Uncertainty strategies score each chunk as the proxy streams the pool (never a (U, C)
    array). Diversity strategies get the proxy's hidden embeddings as memory-mapped .npy files
    next to the selection (proxy_hidden.npy, proxy_labelled_hidden.npy, proxy_probabilities.npy),
    removed once the selection is written.
    """
    from asvp import features as feature_store
    from asvp import proxy_scoring
    from asvp.proxy_scoring import load_weights, proxy_chunks, write_proxy_outputs

    batch = proxy_scoring.INFERENCE_BATCH_SIZE
    pool, labelled_rows, unlabelled = _pool_state(query)
    strategy = configured_strategy(query.strategy, config)
    weights = load_weights(proxy_weights)
    rng = round_rng(query.seed, query.round)
    check_budget(PoolState(unlabelled=unlabelled, labelled=labelled_rows), query.budget)
    with feature_store.open_features(features) as handle:
        feature_store.check_sample_ids(handle, np.arange(len(pool)), pool["sample_id"].tolist(), query.pool)
        pool_features = handle["pool/features"]
        if strategy.rowwise:
            scores = np.empty(len(unlabelled), dtype=np.float64)
            for start, probabilities, _ in proxy_chunks(weights, pool_features, unlabelled, batch):
                rows = unlabelled[start : start + len(probabilities)]
                scores[start : start + len(rows)] = strategy.score(
                    PoolState(unlabelled=rows, labelled=labelled_rows, probabilities=probabilities), rng)
            _write_selection(pool, unlabelled, top_scores(unlabelled, scores, query.budget), scores, query)
            return
        paths = write_proxy_outputs(weights, pool_features, unlabelled, labelled_rows, Path(query.selected_out).parent,
                                    batch, with_probabilities="probabilities" in strategy.needs)
    opened = {name: np.load(path, mmap_mode="r") for name, path in paths.items()}
    state = PoolState(unlabelled=unlabelled, labelled=labelled_rows, probabilities=opened.get("probabilities"),
                      embeddings=opened["hidden"], labelled_embeddings=opened["labelled_hidden"])
    selected, scores = strategy.select(state, query.budget, rng)
    _write_selection(pool, unlabelled, selected, scores, query)
    del state, opened
    for path in paths.values():  # recomputable from proxy.npz + features; 5 GB a round at ImageNet scale
        path.unlink()


def select_model(query: Query, model: str, config: dict[str, Any]) -> None:
    """Standard AL: score the unlabelled images with the fine-tuned network itself, its softmax
    and its backbone features (what coreset / BADGE / ActiveFT work on)."""
    import torch

    from asvp.data import dataset_for
    from asvp.device import resolve_device
    from asvp.training import PREDICT_BATCH_SIZE, classifier_from, predict

    pool, labelled_rows, unlabelled = _pool_state(query)
    strategy = configured_strategy(query.strategy, config)
    want_embeddings = "embeddings" in strategy.needs
    payload = torch.load(model, map_location="cpu", weights_only=False)
    network = classifier_from(payload)
    # The images as this network's backbone takes them (its preprocessing follows from its arch).
    seen_as = {**config, "backbone": {"arch": payload["arch"]}}

    def outputs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dataset = dataset_for(seen_as, "pool", pool["source_index"].to_numpy()[rows], train_mode=False)
        return predict(network, dataset, batch_size=PREDICT_BATCH_SIZE,
                       device=resolve_device(config["device"]), num_workers=config["data"]["num_workers"])

    state = PoolState(unlabelled=unlabelled, labelled=labelled_rows)
    if strategy.needs:  # a random strategy needs no model outputs
        probabilities, embeddings = outputs(unlabelled)
        state = PoolState(unlabelled=unlabelled, labelled=labelled_rows, probabilities=probabilities,
                          embeddings=embeddings if want_embeddings else None,
                          labelled_embeddings=outputs(labelled_rows)[1] if want_embeddings else None)
    selected, scores = strategy.select(state, query.budget, round_rng(query.seed, query.round))
    _write_selection(pool, unlabelled, selected, scores, query)


def request_labels(config: dict[str, Any], selected: str, pool: str, dataset_json: str, out: str, sheet: str,
                   proxy_weights: str | None = None, features: str | None = None) -> None:
    """Human oracle: write to_label.csv, its contact sheet and the Label Studio import files for
    the round's selection (torch-free); with `oracle: label_studio` also send the tasks to the
    server. The proxy's predicted class (and its probability) is the hint when the round
    selected with a proxy."""
    from asvp import label_studio
    from asvp.atomic import read_json
    from asvp.data.sources import open_data
    from asvp.oracle import answers_path, export_path, write_request

    table = read_split_table(pool)
    chosen = read_selected(selected, len(table))
    classes = read_json(dataset_json)["classes"]
    predicted, confidence = None, None
    if proxy_weights is not None and features is not None:
        from asvp import features as feature_store
        from asvp.proxy_scoring import INFERENCE_BATCH_SIZE, load_weights, proxy_chunks

        rows = chosen["pool_index"].to_numpy(np.int64)
        predicted, confidence = np.empty(len(rows), dtype=np.int64), np.empty(len(rows), dtype=np.float64)
        with feature_store.open_features(features) as handle:
            for start, probabilities, _ in proxy_chunks(load_weights(proxy_weights), handle["pool/features"], rows,
                                                        INFERENCE_BATCH_SIZE):
                predicted[start : start + len(probabilities)] = probabilities.argmax(axis=1)
                confidence[start : start + len(probabilities)] = probabilities.max(axis=1)
    source = open_data(config["data"], "train")
    request = write_request(chosen, table, source, classes, predicted, out, sheet)
    settings = config["label_studio"]
    round_dir = Path(out).parent
    tasks = label_studio.write_files(request, classes, confidence, round_dir,
                                     label_studio.document_root(settings["document_root"]))
    run_dir, round_index = round_dir.parent, int(round_dir.name.removeprefix("round"))
    if config["oracle"] == "label_studio":
        record = label_studio.push_round(settings, round_dir, tasks, classes, request["image_path"].tolist())
        print(f"{len(chosen)} images sent to Label Studio ({settings['url']}, project {record['project']}); annotate "
              "them there and rerun.")
        return
    print(f"{len(chosen)} images to label: {out} lists them, {sheet} shows them. "
          f"Write {answers_path(run_dir, round_index)} (sample_id,class) and rerun, or import "
          f"{round_dir / label_studio.TASKS_FILE} into Label Studio and save its JSON export as "
          f"{export_path(run_dir, round_index)}.")


def label(selected: str, pool: str, round: int, out: str, previous: str | None = None, dataset_json: str | None = None,
          answers: str | None = None, request: str | None = None) -> None:
    """Ask the oracle for the selected images' labels; append them to the labelled set.

    Without `answers` the oracle is simulated from the dataset's labels (pool.csv); with them,
    a person's answers (asvp.oracle) are validated against `request` (to_label.csv) in full
    before anything is written. `dataset_json` adds each label's class name to labelled.csv.
    """
    from asvp.atomic import read_json

    classes = read_json(dataset_json)["classes"] if dataset_json else None
    label_round(selected, pool, previous, round, out, classes, answers, request)


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
    """`label` with the class names given: the oracle's answers appended to the labelled set."""
    pool = read_split_table(pool_csv)
    chosen = read_selected(selected_csv, len(pool))
    previous = read_labelled(previous_csv, len(pool)) if previous_csv else None
    if answers is not None:
        from asvp.oracle import read_answers, read_request

        if classes is None or request_csv is None:
            raise ValueError("a person's answers need the class names and the round's to_label.csv")
        request = read_request(request_csv)
        if request["pool_index"].tolist() != chosen["pool_index"].tolist():
            raise DataError(f"{request_csv} does not list this round's selection ({selected_csv}); delete it and rerun "
                            "to write it again")
        pool = pool.copy()
        truth = pool["label"].to_numpy(np.int64).copy()
        truth[chosen["pool_index"].to_numpy(np.int64)] = read_answers(answers, request, classes)
        pool["label"] = truth
    labelled = label_selection(chosen, pool, previous, round_index)
    if classes is not None:
        labelled["class_name"] = np.asarray(classes, dtype=object)[labelled["label"].to_numpy(np.int64)]
    write_csv(out, labelled)
    crash_point("labelled")
