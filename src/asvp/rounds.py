"""What each workflow rule does, as plain functions over files (paper Figure 10's boxes).

Each function reads its input files, calls the library, and writes its outputs atomically. The
CLI (`asvp.cli`) is a thin argument parser over these; the Snakemake rules only wire files to
them. Nothing here knows about Snakemake.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asvp import features as feature_store
from asvp.atomic import atomic_path, read_json, write_csv, write_json, write_npy
from asvp.backbones import build_backbone, file_sha256, resolve_checkpoint
from asvp.data import ImageDataset, build_transform, open_source
from asvp.errors import ConfigError, DataError
from asvp.pool import read_labelled, read_split_table, split_table, subset_indices, unlabelled_indices, write_selected
from asvp.queries import round_rng
from asvp.proxy import ProxyRecipe, load_proxy, proxy_outputs, save_proxy, train_proxy
from asvp.strategies import PoolState, get_strategy
from asvp.training import Classifier, predict, recipe_fingerprint, recipe_from_config, train


def resolve_device(name: str) -> torch.device:
    """'auto' uses CUDA when present, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is visible; set device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- pool definition
def define_pool(config: dict[str, Any], pool_out: str | Path, test_out: str | Path, info_out: str | Path) -> None:
    """Fix which train images form the pool and which test images are evaluated (seeded subsets).

    Depends on the `data` section only, so editing budgets or methods never rewrites the pool
    (which would make every downstream file look stale).
    """
    data = config["data"]
    sizes = {}
    num_classes = 0
    for split, subset, out, salt in (("train", data["pool_subset"], pool_out, 0), ("test", data["test_subset"], test_out, 1)):
        source = open_source(data["dataset"], data["root"], split)
        indices = subset_indices(len(source), subset, data["subset_seed"] + salt)
        write_csv(out, split_table(indices, [source.sample_id(int(i)) for i in indices], source.labels[indices]))
        sizes[split] = len(indices)
        num_classes = source.num_classes
    write_json(info_out, {"dataset": data["dataset"], "num_classes": num_classes, "pool_size": sizes["train"], "test_size": sizes["test"]})


def _pretrained_backbone(config: dict[str, Any]) -> tuple[torch.nn.Module, Path | None]:
    bb = config["backbone"]
    checkpoint = resolve_checkpoint(bb["checkpoint"])
    return build_backbone(bb["arch"], checkpoint, prefix=bb["prefix"], sha256_prefix=bb["sha256_prefix"]), checkpoint


def _dataset(config: dict[str, Any], split: str, source_indices: np.ndarray, train_mode: bool) -> ImageDataset:
    data = config["data"]
    source = open_source(data["dataset"], data["root"], "train" if split == "pool" else "test")
    transform = build_transform(train_mode, data["resolution"], resize=data["resize"])
    return ImageDataset(source, source_indices, transform)


# --------------------------------------------------------------------------- features
def extract(
    config: dict[str, Any], pool_csv: str | Path, test_csv: str | Path, out: str | Path, *, model_path: str | Path | None = None
) -> None:
    """Write features of the pool and test images: pre-trained backbone, or a fine-tuned one."""
    data = config["data"]
    if model_path is None:
        backbone, checkpoint = _pretrained_backbone(config)
        origin = {"checkpoint": str(checkpoint or "random-init"), "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else ""}
    else:
        backbone = load_finetuned(model_path).backbone
        origin = {"checkpoint": str(model_path), "checkpoint_sha256": file_sha256(model_path)}
    splits = {}
    num_classes = 0
    for split, csv in (("pool", pool_csv), ("test", test_csv)):
        table = read_split_table(csv)
        dataset = _dataset(config, split, table["source_index"].to_numpy(), train_mode=False)
        num_classes = dataset.source.num_classes
        splits[split] = feature_store.SplitInput(dataset, table["label"].to_numpy(), table["sample_id"].tolist())
    attrs = {
        "backbone": config["backbone"]["arch"],
        **origin,
        "dataset": data["dataset"],
        "resolution": data["resolution"],
        "transform": repr(build_transform(False, data["resolution"], resize=data["resize"])),
        "num_classes": num_classes,
    }
    feature_store.extract_features(
        backbone,
        splits,
        out,
        attrs=attrs,
        dtype=config["features"]["dtype"],
        batch_size=config["features"]["batch_size"],
        chunk_rows=config["features"]["chunk_rows"],
        num_workers=data["num_workers"],
        device=resolve_device(config["device"]),
    )


# --------------------------------------------------------------------------- selection
def train_proxy_round(
    features_path: str | Path, labelled_csv: str | Path, proxy_config: dict[str, Any], seed: int, round_index: int, out: str | Path
) -> None:
    """Train a fresh MLP proxy on the labelled samples' features."""
    attrs = feature_store.read_attrs(features_path)
    num_classes = int(attrs["num_classes"])
    with feature_store.open_features(features_path) as handle:
        pool_size = handle["pool/labels"].shape[0]
    labelled = read_labelled(labelled_csv, pool_size, num_classes)
    rows = labelled["pool_index"].to_numpy()
    x, _ = feature_store.load_rows(features_path, "pool", rows)
    recipe = ProxyRecipe.from_config(proxy_config)
    model = train_proxy(x, labelled["label"].to_numpy(), num_classes, recipe, seed=seed * 1000 + round_index)
    save_proxy(model, out, recipe, {"n_labelled": len(rows), "features": str(features_path)})


def select_round(
    strategy_name: str,
    budget: int,
    seed: int,
    round_index: int,
    pool_csv: str | Path,
    labelled_csv: str | Path,
    selected_out: str | Path,
    scores_out: str | Path,
    *,
    features_path: str | Path | None = None,
    proxy_path: str | Path | None = None,
    model_path: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Score the unlabelled pool with the selection model and pick `budget` images.

    The selection model is either the proxy on pre-computed features (SVPp/ASVP) or the whole
    fine-tuned network on images (standard AL, `model_path`). `scores_out` holds (N,) float32
    scores for the whole pool, NaN for labelled images.
    """
    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    unlabelled = unlabelled_indices(len(pool), labelled)
    strategy = get_strategy(strategy_name)
    probabilities = None
    if "probabilities" in strategy.needs:
        if proxy_path is not None and features_path is not None:
            proxy = load_proxy(proxy_path)
            batch = (config or {}).get("proxy", {}).get("inference_batch_size", 16384)
            with feature_store.open_features(features_path) as handle:
                probabilities, _ = proxy_outputs(proxy, handle["pool/features"], unlabelled, batch)
        elif model_path is not None and config is not None:
            model = load_finetuned(model_path)
            dataset = _dataset(config, "pool", pool["source_index"].to_numpy()[unlabelled], train_mode=False)
            probabilities, _ = predict(
                model, dataset, batch_size=config["evaluation"]["batch_size"], device=resolve_device(config["device"]),
                num_workers=config["data"]["num_workers"],
            )
        else:
            raise ValueError(f"strategy {strategy_name} needs a proxy with features, or a fine-tuned model")
    state = PoolState(unlabelled=unlabelled, labelled=labelled["pool_index"].to_numpy(), probabilities=probabilities)
    selected, scores = strategy.select(state, budget, round_rng(seed, round_index))
    full_scores = np.full(len(pool), np.nan, dtype=np.float32)
    full_scores[unlabelled] = scores
    write_selected(selected_out, pool, selected, full_scores[selected])
    write_npy(scores_out, full_scores)


# --------------------------------------------------------------------------- fine-tuning
class _Relabelled(torch.utils.data.Dataset):
    """Train on the oracle's labels (labelled.csv), not whatever the dataset files say."""

    def __init__(self, dataset: ImageDataset, labels: np.ndarray) -> None:
        self.dataset, self.labels = dataset, torch.tensor(labels, dtype=torch.int64)  # a copy: labels may be read-only

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int):  # type: ignore[no-untyped-def]
        image, _, index = self.dataset[position]
        return image, self.labels[position], index


def finetune(
    config: dict[str, Any],
    recipe_kind: str,
    pool_csv: str | Path,
    labelled_csv: str | Path,
    seed: int,
    out: str | Path,
) -> dict[str, Any]:
    """Fine-tune the pre-trained backbone (re-initialised every time) on the labelled set."""
    pool = read_split_table(pool_csv)
    labelled = read_labelled(labelled_csv, len(pool))
    rows = labelled["pool_index"].to_numpy()
    dataset = _dataset(config, "pool", pool["source_index"].to_numpy()[rows], train_mode=True)
    num_classes = dataset.source.num_classes
    if int(labelled["label"].max()) >= num_classes:
        raise DataError(f"labels file {labelled_csv}: label {int(labelled['label'].max())} is outside 0..{num_classes - 1}")
    backbone, _ = _pretrained_backbone(config)
    torch.manual_seed(seed)  # the new head's initialisation is part of "same seed, same model"
    model = Classifier(backbone, num_classes)
    recipe = recipe_from_config(recipe_kind, config)
    digest = hashlib.sha256(labelled[["pool_index", "label"]].to_numpy().tobytes()).hexdigest()
    out = Path(out)
    checkpoint = out.with_name(out.name + ".ckpt")
    history = train(
        model,
        _Relabelled(dataset, labelled["label"].to_numpy()),
        recipe,
        seed=seed,
        device=resolve_device(config["device"]),
        checkpoint=checkpoint,
        fingerprint=recipe_fingerprint(recipe, seed, digest),
        num_workers=config["data"]["num_workers"],
    )
    payload = {
        "arch": config["backbone"]["arch"],
        "num_classes": num_classes,
        "recipe": recipe_kind,
        "n_labelled": len(rows),
        "labelled_sha256": digest,
        "state_dict": model.cpu().state_dict(),
        "history": history,
    }
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    checkpoint.unlink(missing_ok=True)
    return payload


def finetune_and_evaluate(
    config: dict[str, Any],
    recipe_kind: str,
    pool_csv: str | Path,
    labelled_csv: str | Path,
    test_csv: str | Path,
    seed: int,
    model_out: str | Path,
    metrics_out: str | Path,
) -> float:
    """One evaluated round: fine-tune on the labelled set, then test accuracy (one job, one import)."""
    finetune(config, recipe_kind, pool_csv, labelled_csv, seed, model_out)
    return evaluate(config, model_out, test_csv, metrics_out)


def _classifier_from(payload: dict[str, Any]) -> Classifier:
    model = Classifier(build_backbone(payload["arch"], None), payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_finetuned(path: str | Path) -> Classifier:
    return _classifier_from(torch.load(path, map_location="cpu", weights_only=False))


def evaluate(config: dict[str, Any], model_path: str | Path, test_csv: str | Path, out: str | Path) -> float:
    """Test accuracy of a fine-tuned model; writes metrics.json."""
    payload = torch.load(model_path, map_location="cpu", weights_only=False)
    model = _classifier_from(payload)
    table = read_split_table(test_csv)
    dataset = _dataset(config, "test", table["source_index"].to_numpy(), train_mode=False)
    probabilities, _ = predict(
        model, dataset, batch_size=config["evaluation"]["batch_size"], device=resolve_device(config["device"]),
        num_workers=config["data"]["num_workers"],
    )
    accuracy = float((probabilities.argmax(axis=1) == table["label"].to_numpy()).mean())
    write_json(out, {"accuracy": accuracy, "n_test": len(table), "n_labelled": payload["n_labelled"], "train_method": payload["recipe"]})
    return accuracy


# --------------------------------------------------------------------------- ASVP feature refresh
def refresh_features(
    config: dict[str, Any],
    decision_path: str | Path,
    pool_csv: str | Path,
    test_csv: str | Path,
    labelled_csv: str | Path,
    previous_features: str | Path,
    seed: int,
    out: str | Path,
) -> bool:
    """Apply a round's decision: fine-tune + re-extract when it says refresh, else link.

    The fine-tune restarts from the pre-trained weights on the labels so far (paper sec. 5; the
    official scripts likewise re-initialise every time) with the FT recipe, and is kept next to
    the features as `refresh_model.pt` (its own epoch checkpoints make it resumable).
    """
    decision = read_json(decision_path)
    if not decision["refresh_features"]:
        feature_store.link_features(previous_features, out)
        return False
    model_path = Path(out).with_name("refresh_model.pt")
    if not model_path.exists():
        finetune(config, "ft", pool_csv, labelled_csv, seed, model_path)
    extract(config, pool_csv, test_csv, out, model_path=model_path)
    return True


def recipe_for(recipe: str, decision_path: str | Path | None) -> str:
    """'auto' (ASVP) takes the training method the round's decision chose."""
    if recipe != "auto":
        return recipe
    if decision_path is None:
        raise ValueError("recipe 'auto' needs the round's decision.json")
    return str(read_json(decision_path)["train_method"])
