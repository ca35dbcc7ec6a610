"""What each workflow rule does, as plain functions over files (paper Figure 10's boxes).

Each function reads its input files, calls the library, and writes its outputs atomically. The
CLI (`asvp.cli`) is a thin argument parser over these; the Snakemake rules only wire files to
them. Nothing here knows about Snakemake.
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

import numpy as np
import torch

from asvp import extraction
from asvp import features as feature_store
from asvp.atomic import write_csv, write_json
from asvp.backbones import build_backbone, file_sha256, resolve_checkpoint
from asvp.data import ImageDataset, build_transform, open_source
from asvp.errors import ConfigError, DataError
from asvp.pool import read_labelled, read_split_table, split_table, subset_indices, unlabelled_indices
from asvp.queries import apply_strategy
from asvp.proxy import ProxyRecipe, load_proxy, proxy_outputs, save_proxy, save_weights, train_proxy
from asvp.strategies import get_strategy
from asvp.proxy_scoring import INFERENCE_BATCH_SIZE
from asvp.training import PREDICT_BATCH_SIZE, classifier_from, predict


def resolve_device(name: str) -> torch.device:
    """'auto' uses CUDA when present, else the CPU.

    With several GPUs visible, the one with the most free memory: jobs that Snakemake runs side
    by side (profiles/local-gpu, one `gpu` resource each) would otherwise all land on cuda:0.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is visible; set device: auto or cpu")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        if torch.cuda.device_count() > 1:
            from asvp.distributed import gpus_by_free_memory

            return torch.device(f"cuda:{gpus_by_free_memory()[0]}")
        return torch.device("cuda")
    return torch.device(name)


# --------------------------------------------------------------------------- pool definition
def define_pool(config: dict[str, Any], pool_out: str | Path, test_out: str | Path, info_out: str | Path) -> None:
    """Fix which train images form the pool and which test images are evaluated (seeded subsets).

    Depends on the `data` section only, so editing budgets or methods never rewrites the pool
    (which would make every downstream file look stale).
    """
    data = config["data"]
    sizes: dict[str, int] = {}
    skipped: list[dict[str, Any]] = []
    num_classes = 0
    tables = {}
    for split, subset, out, salt in (("train", data["pool_subset"], pool_out, 0), ("test", data["test_subset"], test_out, 1)):
        source = open_source(data["dataset"], data["root"], split)
        indices = subset_indices(len(source), subset, data["subset_seed"] + salt)
        if data.get("bad_images", "stop") == "skip":
            bad = undecodable(source, indices)
            skipped += [{"split": split, "sample_id": source.sample_id(int(i)), "error": error} for i, error in bad.items()]
            indices = indices[~np.isin(indices, list(bad))]
        tables[out] = split_table(indices, [source.sample_id(int(i)) for i in indices], source.labels[indices])
        sizes[split] = len(indices)
        num_classes = source.num_classes
        classes = class_names(source)
    for out, table in tables.items():
        write_csv(out, table)
    if skipped:
        print(f"skipped {len(skipped)} images that do not decode (data.bad_images: skip), listed in {info_out}:")
        for entry in skipped[:20]:
            print(f"  {entry['split']} {entry['sample_id']}: {entry['error']}")
    print(f"classes, in label order: {', '.join(f'{i}={name}' for i, name in enumerate(classes))}")
    write_json(info_out, {"dataset": data["dataset"], "num_classes": num_classes, "classes": classes,
                          "pool_size": sizes["train"], "test_size": sizes["test"], "skipped_images": skipped})


def undecodable(source: Any, indices: np.ndarray, threads: int = 4) -> dict[int, str]:
    """{source index: error} of the images among `indices` that do not decode (files only: array
    datasets are decoded already). Decoding runs in threads (PIL releases the GIL)."""
    if getattr(source, "paths", None) is None:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    def check(index: int) -> str | None:
        try:
            source.load_image(index)
        except DataError as error:
            return str(error)
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        errors = list(pool.map(check, (int(i) for i in indices)))
    return {int(i): e for i, e in zip(indices, errors) if e is not None}


def class_names(source: Any) -> list[str]:
    """Class names in label order (index i names label i), so reports speak of "Bag", not 7.

    A split whose listing lacks its highest classes (a small custom Pets split) gets "class <i>"."""
    names = [str(c) for c in source.classes][: source.num_classes]
    return names + [f"class {i}" for i in range(len(names), source.num_classes)]


def _pretrained_backbone(config: dict[str, Any]) -> tuple[torch.nn.Module, Path | None]:
    bb = config["backbone"]
    checkpoint = resolve_checkpoint(bb["checkpoint"])
    return build_backbone(bb["arch"], checkpoint, prefix=bb["prefix"]), checkpoint


def _dataset(config: dict[str, Any], split: str, source_indices: np.ndarray, train_mode: bool) -> ImageDataset:
    from asvp.data import make_dataset  # in-memory datasets decode once and augment whole batches

    data = config["data"]
    source = open_source(data["dataset"], data["root"], "train" if split == "pool" else "test")
    return make_dataset(source, source_indices, train_mode, data["resolution"], data["resize"])


# --------------------------------------------------------------------------- features
def extract(
    config: dict[str, Any], pool_csv: str | Path, test_csv: str | Path, out: str | Path, *,
    model_path: str | Path | None = None, processes: int = 1,
) -> None:
    """Write features of the pool and test images: pre-trained backbone, or a fine-tuned one.

    processes > 1: one per GPU of the job (asvp.distributed.job_processes), sharing each chunk.
    """
    data = config["data"]
    if model_path is None:
        backbone, checkpoint = _pretrained_backbone(config)
        origin = {"checkpoint": str(checkpoint or "random-init"), "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else ""}
    else:
        backbone = classifier_from(torch.load(model_path, map_location="cpu", weights_only=False)).backbone
        origin = {"checkpoint": str(model_path), "checkpoint_sha256": file_sha256(model_path)}
    splits = {}
    num_classes = 0
    for split, csv in (("pool", pool_csv), ("test", test_csv)):
        table = read_split_table(csv)
        dataset = _dataset(config, split, table["source_index"].to_numpy(), train_mode=False)
        num_classes = dataset.source.num_classes
        splits[split] = extraction.SplitInput(dataset, table["label"].to_numpy(), table["sample_id"].tolist())
    prefix = getattr(backbone, "checkpoint_prefix", "")
    classes = class_names(dataset.source)
    print(f"backbone {config['backbone']['arch']} from {origin['checkpoint']}: checkpoint prefix {prefix!r} stripped "
          f"(backbone.prefix: {config['backbone']['prefix']})")
    print(f"classes, in label order: {', '.join(f'{i}={name}' for i, name in enumerate(classes))}")
    attrs = {
        "backbone": config["backbone"]["arch"],
        **origin,
        "checkpoint_prefix": prefix,
        "classes": json.dumps(classes),
        "dataset": data["dataset"],
        "resolution": data["resolution"],
        "transform": repr(build_transform(False, data["resolution"], resize=data["resize"])),
        "num_classes": num_classes,
    }
    extraction.extract_features(
        backbone,
        splits,
        out,
        attrs=attrs,
        dtype=config["features"]["dtype"],
        batch_size=config["features"]["batch_size"],
        chunk_rows=extraction.CHUNK_ROWS,
        num_workers=data["num_workers"],
        device=resolve_device(config["device"]),
        crash_name="extract_chunk" if model_path is None else "refresh_chunk",
        world_size=processes,
    )


# --------------------------------------------------------------------------- selection
def features_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a features file's attributes must say for this config (features.check_identity)."""
    return {"backbone": config["backbone"]["arch"], "dataset": config["data"]["dataset"],
            "resolution": config["data"]["resolution"]}


def train_proxy_round(
    features_path: str | Path, labelled_csv: str | Path, proxy_config: dict[str, Any], seed: int, round_index: int,
    out: str | Path, weights_out: str | Path | None = None, expected: dict[str, Any] | None = None,
) -> None:
    """Train a fresh MLP proxy on the labelled samples' features (and its weights as arrays).

    expected: the features identity the config implies (`features_identity`), checked first."""
    attrs = feature_store.read_attrs(features_path)
    num_classes = int(attrs["num_classes"])
    with feature_store.open_features(features_path) as handle:
        feature_store.check_identity(handle, expected or {})
        pool_size = handle["pool/labels"].shape[0]
        labelled = read_labelled(labelled_csv, pool_size, num_classes)
        rows = labelled["pool_index"].to_numpy()
        feature_store.check_sample_ids(handle, rows, labelled["sample_id"].tolist(), labelled_csv)
    x, _ = feature_store.load_rows(features_path, "pool", rows)
    recipe = ProxyRecipe.from_config(proxy_config)
    model = train_proxy(x, labelled["label"].to_numpy(), num_classes, recipe, seed=seed * 1000 + round_index)
    save_proxy(model, out, recipe, {"n_labelled": len(rows), "features": str(features_path)})
    if weights_out is not None:
        save_weights(model, weights_out)


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
    outputs: dict[str, np.ndarray | None] = {"probabilities": None, "embeddings": None, "labelled_embeddings": None}
    if strategy.needs & {"probabilities", "embeddings"}:
        labelled_rows = labelled["pool_index"].to_numpy()
        want_embeddings = "embeddings" in strategy.needs
        if proxy_path is not None and features_path is not None:
            proxy = load_proxy(proxy_path)
            batch = INFERENCE_BATCH_SIZE
            with feature_store.open_features(features_path) as handle:
                outputs["probabilities"], outputs["embeddings"] = proxy_outputs(
                    proxy, handle["pool/features"], unlabelled, batch, want_embeddings=want_embeddings)
                if want_embeddings:
                    _, outputs["labelled_embeddings"] = proxy_outputs(
                        proxy, handle["pool/features"], labelled_rows, batch, want_embeddings=True)
        elif model_path is not None and config is not None:
            # Standard AL: the fine-tuned network's softmax and its backbone features (the embedding
            # coreset / BADGE / ActiveFT work on), over the images themselves.
            model = classifier_from(torch.load(model_path, map_location="cpu", weights_only=False))
            for key, rows in (("probabilities", unlabelled), ("labelled_embeddings", labelled_rows if want_embeddings else None)):
                if rows is None:
                    continue
                dataset = _dataset(config, "pool", pool["source_index"].to_numpy()[rows], train_mode=False)
                probabilities, embeddings = predict(
                    model, dataset, batch_size=PREDICT_BATCH_SIZE, device=resolve_device(config["device"]),
                    num_workers=config["data"]["num_workers"],
                )
                if key == "probabilities":
                    outputs["probabilities"], outputs["embeddings"] = probabilities, embeddings if want_embeddings else None
                else:
                    outputs["labelled_embeddings"] = embeddings
        else:
            raise ValueError(f"strategy {strategy_name} needs a proxy with features, or a fine-tuned model")
    apply_strategy(strategy_name, budget, seed, round_index, pool_csv, labelled_csv, selected_out, scores_out, **outputs,
                   config=config)
