"""Fine-tune on a labelled set and measure test accuracy, once per distinct fine-tune.

The evaluation (final model), standard AL's per-round model and an ASVP refresh all fine-tune
through `finetune_and_evaluate`.

Three things a user reading the curves relies on live here:
  * a fine-tune is keyed by what determines it (labelled set, recipe, backbone, data, seed, test
    set), and its result is cached under `<experiment>/finetunes/<key>.json`: round 0's labelled
    set is the same for every method and strategy of a seed, and an ASVP refresh fine-tunes the
    labels its evaluation fine-tunes again, so equal inputs share one fine-tune. A lock file
    makes a second job with the same key wait for the first instead of training twice;
  * models are kept only where a later step reads them (standard AL's selection, a refresh's
    re-extraction) or the user asks (`evaluation.keep_models`);
  * a divergence guard marks a fine-tune whose loss rose or whose accuracy is near chance
    (`status: diverged`), and stops the run with `evaluation.on_divergence: fail`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asvp.atomic import atomic_path, read_json, write_json
from asvp.errors import DataError
from asvp.plan import params_excerpt
from asvp.pool import read_labelled, read_split_table
from asvp.backbones import pretrained_backbone
from asvp.checkpoints import never_trained
from asvp.data import dataset_for
from asvp.device import resolve_device
from asvp.recipes import UNTRAINED_EPOCH_FACTOR, TrainRecipe, optimizer_of, recipe_fingerprint, recipe_from_config, recipe_identity
from asvp.training import PREDICT_BATCH_SIZE, Classifier, predict, train

CACHE_VERSION = 4  # bump when training or evaluation code changes what a cached result means
LOSS_TOLERANCE = 1e-4  # relative: float noise on a converged L-BFGS objective is no divergence
CHANCE_MARGIN = 0.02  # test accuracy within this of chance (1 / classes) counts as diverged

def lr_knobs(recipe_kind: str, optimizer: str) -> str:
    """The config keys that set a diverged fine-tune's learning rates."""
    prefix = "finetune.adamw" if optimizer == "adamw" else "finetune"
    knobs = f"{prefix}.lr_backbone / {prefix}.lr_head"
    return knobs + " (or lpft.lp_weight_decay)" if recipe_kind == "lpft" else knobs


class _Relabelled(torch.utils.data.Dataset):
    """Train on the oracle's labels (labelled.csv), not whatever the dataset files say."""

    def __init__(self, dataset: torch.utils.data.Dataset, labels: np.ndarray) -> None:
        self.dataset, self.labels = dataset, torch.tensor(labels, dtype=torch.int64)  # a copy: labels may be read-only
        if hasattr(dataset, "batch"):
            self.batch = self._batch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, position: int):  # type: ignore[no-untyped-def]
        image, _, index = self.dataset[position]
        return image, self.labels[position], index

    def _batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, _, index = self.dataset.batch(positions)  # type: ignore[attr-defined]
        return images, self.labels[index], index


def training_recipe(recipe_kind: str, config: dict[str, Any]) -> TrainRecipe:
    """The recipe a fine-tune of this config runs: a longer schedule for a backbone never trained."""
    return recipe_from_config(recipe_kind, config, untrained=never_trained(config["backbone"]["checkpoint"]))


def finetune_key(config: dict[str, Any], recipe_kind: str, labelled: Any, seed: int, test_csv: str | Path) -> str:
    """What determines a fine-tune's result, hashed: equal keys give equal models and accuracies."""
    recipe = training_recipe(recipe_kind, config)
    identity = {
        "version": CACHE_VERSION,
        "recipe": recipe_identity(recipe),
        "labelled": hashlib.sha256(labelled[["pool_index", "label"]].to_numpy().tobytes()).hexdigest(),
        "seed": seed,
        "backbone": config["backbone"],
        # As a job's params hold it: keys at their neutral value left out, so a job given the
        # excerpt and a caller given the whole config compute the same key.
        "data": params_excerpt(config, "data")["data"],
        "device": resolve_device(config["device"]).type,  # cuda:1 and cuda:0 give the same model
        "test": hashlib.sha256(Path(test_csv).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock` (blocking): one process trains a key at a time."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def divergence(history: list[dict[str, Any]], accuracy: float | None, num_classes: int) -> list[str]:
    """Why a fine-tune counts as diverged (empty: it did not). Without a test set (accuracy
    None) only the loss curve can tell."""
    reasons = []
    for stage in dict.fromkeys(h["stage"] for h in history):
        losses = [h["loss"] for h in history if h["stage"] == stage]
        if len(losses) > 1 and losses[-1] > losses[0] * (1 + LOSS_TOLERANCE):
            reasons.append(f"{stage} loss rose from {losses[0]:.3f} (first epoch) to {losses[-1]:.3f} (last epoch)")
    chance = 1.0 / num_classes
    if accuracy is not None and accuracy < chance + CHANCE_MARGIN:
        reasons.append(f"test accuracy {accuracy:.3f} is within {CHANCE_MARGIN:.2f} of chance ({chance:.3f})")
    return reasons


def _train_model(config: dict[str, Any], recipe_kind: str, pool_csv: str | Path, labelled: Any, seed: int,
                 checkpoint: Path, processes: int = 1) -> tuple[Classifier, list[dict[str, Any]], int]:
    """Fine-tune the pre-trained backbone (re-initialised every time) on the labelled set."""
    pool = read_split_table(pool_csv)
    rows = labelled["pool_index"].to_numpy()
    dataset = dataset_for(config, "pool", pool["source_index"].to_numpy()[rows], train_mode=True)
    num_classes = dataset.source.num_classes
    if int(labelled["label"].max()) >= num_classes:
        raise DataError(f"labelled set: label {int(labelled['label'].max())} is outside 0..{num_classes - 1}")
    backbone, _ = pretrained_backbone(config["backbone"])
    torch.manual_seed(seed)  # the new head's initialisation is part of "same seed, same model"
    model = Classifier(backbone, num_classes)
    recipe = training_recipe(recipe_kind, config)
    if never_trained(config["backbone"]["checkpoint"]):
        print(f"backbone {config['backbone']['checkpoint']} was never trained (BatchNorm statistics at their initial "
              f"values, or random init): {UNTRAINED_EPOCH_FACTOR} x finetune.epochs and milestones")
    history = train(
        model,
        _Relabelled(dataset, labelled["label"].to_numpy()),
        recipe,
        seed=seed,
        device=resolve_device(config["device"]),
        checkpoint=checkpoint,
        fingerprint=recipe_fingerprint(recipe, seed, checkpoint.stem),
        num_workers=config["data"]["num_workers"],
        checkpoint_seconds=config["finetune"]["checkpoint_seconds"],
        world_size=processes,
    )
    return model, history, num_classes


def test_accuracy(config: dict[str, Any], model: Classifier, test_csv: str | Path) -> tuple[float | None, list[float | None]]:
    """Overall test accuracy and per-class accuracy (None for a class with no test image).

    A data source without a labelled test set writes test.csv with no rows: the accuracy is then
    None (not 0, not NaN: there is nothing to measure), and the test split is never opened.
    """
    table = read_split_table(test_csv)
    if table.empty:
        return None, [None] * int(model.head.out_features)
    dataset = dataset_for(config, "test", table["source_index"].to_numpy(), train_mode=False)
    probabilities, _ = predict(
        model, dataset, batch_size=PREDICT_BATCH_SIZE, device=resolve_device(config["device"]),
        num_workers=config["data"]["num_workers"],
    )
    truth = table["label"].to_numpy()
    correct = probabilities.argmax(axis=1) == truth
    return float(correct.mean()), per_class_accuracy(correct, truth, probabilities.shape[1])


def per_class_accuracy(correct: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float | None]:
    counts = np.bincount(truth, minlength=num_classes)
    hits = np.bincount(truth, weights=correct.astype(np.float64), minlength=num_classes)
    return [float(h / c) if c else None for h, c in zip(hits, counts)]


def finetune_and_evaluate(
    config: dict[str, Any],
    recipe_kind: str,
    pool_csv: str | Path,
    labelled_csv: str | Path,
    test_csv: str | Path,
    seed: int,
    metrics_out: str | Path,
    *,
    cache_dir: str | Path,
    model_out: str | Path | None = None,
    share_model: bool = False,
    round_index: int | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """One evaluated fine-tune: reuse the cached result for this key, or train and test once.

    metrics.json holds the accuracy, the loss curve, the final training accuracy and the
    divergence verdict. `model_out` is written only when asked (a later step reads it).
    `share_model` keeps the model in the cache too, for a fine-tune another job will want the
    model of (round 0, when standard AL selects round 1 with it).
    `processes` > 1 trains data-parallel, one process per GPU of the job. The result equals a
    single process's up to float rounding, so it shares the cache key; the metrics record it
    and the cost model charges its GPU seconds (train_seconds x processes).
    """
    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    key = finetune_key(config, recipe_kind, labelled, seed, test_csv)
    cache_dir = Path(cache_dir)
    cached_metrics, cached_model = cache_dir / f"{key}.json", cache_dir / f"{key}.pt"
    keep = config["evaluation"]["keep_models"] or share_model
    with _exclusive(cache_dir / f"{key}.lock"):
        if cached_metrics.exists() and (model_out is None or cached_model.exists()):
            metrics = {**read_json(cached_metrics), "reused": True}
            print(f"reusing fine-tune {key} (same labelled set, recipe, backbone and seed)")
            if model_out is not None:
                _link(cached_model, Path(model_out))
        else:
            started = time.perf_counter()
            model, history, num_classes = _train_model(config, recipe_kind, pool_csv, labelled, seed,
                                                       cache_dir / f"{key}.ckpt", processes)
            trained = time.perf_counter()
            accuracy, class_accuracy = test_accuracy(config, model, test_csv)
            reasons = divergence(history, accuracy, num_classes)
            metrics = {
                "accuracy": accuracy,
                "per_class_accuracy": class_accuracy,
                "n_test": len(read_split_table(test_csv)),
                "n_labelled": len(labelled),
                "num_classes": num_classes,
                "train_method": recipe_kind,
                "optimizer": optimizer_of(config),  # of the fine-tuning stage (finetune.optimizer, auto resolved)
                "device": resolve_device(config["device"]).type,  # cuda:1 and cuda:0 give the same model
                "status": "diverged" if reasons else "ok",
                "divergence": reasons,
                "final_train_accuracy": history[-1]["train_accuracy"] if history else None,
                "final_loss": history[-1]["loss"] if history else None,
                "loss_curve": history,
                # LP-FT's probe L2 strength, as cross-validation chose it (lpft.lp_weight_decay: cv) or as set.
                "lp_weight_decay": next((h["weight_decay"] for h in history if "weight_decay" in h), None),
                "finetune_key": key,
                # Compute this fine-tune cost wherever it ran (a job that reuses it costs ~nothing):
                # the cost model charges each key once, at these figures (only the part run since the
                # checkpoint when a killed fine-tune resumed from one).
                "train_seconds": trained - started,
                "processes": processes,
                "test_seconds": time.perf_counter() - trained,
                "reused": False,
            }
            # Models stay only where a later step reads them, or in the cache when asked to.
            if keep:
                _save_model(model, config, recipe_kind, labelled, history, cached_model)
            if model_out is not None:
                _link(cached_model, Path(model_out)) if keep else _save_model(
                    model, config, recipe_kind, labelled, history, Path(model_out))
            write_json(cached_metrics, {k: v for k, v in metrics.items() if k != "reused"})
            (cache_dir / f"{key}.ckpt").unlink(missing_ok=True)
    _guard(metrics, config, recipe_kind, round_index)
    write_json(metrics_out, metrics)
    return metrics


def _guard(metrics: dict[str, Any], config: dict[str, Any], recipe_kind: str, round_index: int | None) -> None:
    if metrics["status"] != "diverged":
        return
    where = f"round {round_index}" if round_index is not None else "this fine-tune"
    message = (f"fine-tune of {where} ({recipe_kind}, {metrics['n_labelled']} labels) diverged: "
               f"{'; '.join(metrics['divergence'])}. Lower {lr_knobs(recipe_kind, metrics.get('optimizer', 'sgd'))}.")
    if config["evaluation"]["on_divergence"] == "fail":
        raise DataError(message + " (evaluation.on_divergence: fail; set it to warn to record and go on)")
    print(f"WARNING: {message}")


def _save_model(model: Classifier, config: dict[str, Any], recipe_kind: str, labelled: Any,
                history: list[dict[str, Any]], out: Path) -> None:
    payload = {
        "arch": config["backbone"]["arch"],
        "num_classes": model.head.out_features,
        "recipe": recipe_kind,
        "n_labelled": len(labelled),
        "state_dict": model.cpu().state_dict(),
        "history": history,
    }
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)


def _link(source: Path, out: Path) -> None:
    """A hard link where the file system allows (no second copy on disk), else a copy; atomic."""
    with atomic_path(out) as tmp:
        try:
            tmp.unlink(missing_ok=True)
            tmp.hardlink_to(source)
        except OSError:
            shutil.copyfile(source, tmp)
