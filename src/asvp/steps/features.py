"""Stage 1 (rules/features.smk): fix the pool and test images, pre-compute backbone features once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from asvp.atomic import write_csv, write_json, write_text
from asvp.errors import DataError
from asvp.pool import read_split_table, split_table, subset_indices


def define_pool(config: dict[str, Any], pool: str, test: str, info: str) -> None:
    """Fix which train images form the pool and which test images are evaluated (seeded subsets).

    Depends on the `data` section only, so editing budgets or methods never rewrites the pool
    (which would make every downstream file look stale).
    """
    from asvp.data import open_data
    from asvp.data.unlabelled import UNLABELLED

    data = config["data"]
    sizes: dict[str, int] = {}
    skipped: list[dict[str, Any]] = []
    num_classes = 0
    tables = {}
    classes: list[str] = []
    kept = 0  # pool rows of an earlier pool of your own images, which must keep their indices
    for split, subset, out, salt in (("train", data["pool_subset"], pool, 0), ("test", data["test_subset"], test, 1)):
        source = open_data(data, split)
        if split == "train" and data["dataset"] == UNLABELLED:
            indices, kept = grown_pool(source, Path(pool))
        else:
            indices = subset_indices(len(source), subset, data["subset_seed"] + salt)
        if data.get("bad_images", "stop") == "skip":
            bad = undecodable(source, indices)
            broken = [int(i) for i in indices[:kept] if int(i) in bad] if split == "train" else []
            if broken:
                raise DataError(f"{len(broken)} image(s) of the existing pool no longer decode: {bad[broken[0]]} "
                                "Restore them: their labels and features refer to them.")
            skipped += [{"split": split, "sample_id": source.sample_id(int(i)), "error": error} for i, error in bad.items()]
            indices = indices[~np.isin(indices, list(bad))]
        tables[out] = split_table(indices, [source.sample_id(int(i)) for i in indices], source.labels[indices])
        sizes[split] = len(indices)
        num_classes = source.num_classes
        classes = class_names(source)
    for out, table in tables.items():
        write_csv(out, table)
    if data["dataset"] == UNLABELLED:
        write_text(pool_order_path(pool), "".join(f"{sample_id}\n" for sample_id in tables[pool]["sample_id"]))
        if kept:
            print(f"pool grown: {kept} images kept at their pool indices, {sizes['train'] - kept} new")
    if skipped:
        print(f"skipped {len(skipped)} images that do not decode (data.bad_images: skip), listed in {info}:")
        for entry in skipped[:20]:
            print(f"  {entry['split']} {entry['sample_id']}: {entry['error']}")
    print(f"classes, in label order: {', '.join(f'{i}={name}' for i, name in enumerate(classes))}")
    write_json(info, {"dataset": data["dataset"], "num_classes": num_classes, "classes": classes,
                      "pool_size": sizes["train"], "test_size": sizes["test"], "skipped_images": skipped})


def pool_order_path(pool_csv: str | Path) -> Path:
    """The record of a pool of your own images, one sample id a line in pool-index order: it
    outlives pool.csv, which Snakemake deletes before it reruns define_pool."""
    return Path(pool_csv).with_name("pool_order.txt")


def grown_pool(source: Any, pool_csv: Path) -> tuple[np.ndarray, int]:
    """(source indices in pool order, how many of them are the previous pool's): the previous
    pool (pool.csv, else its record) keeps its indices, new images follow in sorted order."""
    from asvp.data.unlabelled import pool_order

    record = pool_order_path(pool_csv)
    previous: list[str] = []
    where = ""
    if pool_csv.is_file():
        previous, where = read_split_table(pool_csv)["sample_id"].tolist(), str(pool_csv)
    elif record.is_file():
        previous, where = record.read_text(encoding="utf-8").splitlines(), str(record)
    position = {source.sample_id(i): i for i in range(len(source))}
    order = pool_order(previous, list(position), where)
    return np.array([position[sample_id] for sample_id in order], dtype=np.int64), len(previous)


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


def extract(config: dict[str, Any], pool: str, test: str, out: str, model: str | None = None, gpus: int = 0) -> None:
    """Write features of the pool and test images: the pre-trained backbone's, or (`model`) a
    fine-tuned one's (an ASVP refresh). On CUDA, one data-parallel process per GPU of the job."""
    import torch

    from asvp import extraction
    from asvp.backbones import preprocessing_for, pretrained_backbone
    from asvp.checkpoints import file_sha256
    from asvp.data.unlabelled import UNLABELLED
    from asvp.data import dataset_for, transform_for
    from asvp.device import job_processes, resolve_device
    from asvp.training import classifier_from

    data = config["data"]
    preprocessing = preprocessing_for(config)
    if model is None:
        backbone, checkpoint = pretrained_backbone(config["backbone"], image_size=preprocessing.resolution)
        origin = {"checkpoint": str(checkpoint or "random-init"), "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else ""}
    else:
        backbone = classifier_from(torch.load(model, map_location="cpu", weights_only=False)).backbone
        origin = {"checkpoint": str(model), "checkpoint_sha256": file_sha256(model)}
    splits = {}
    num_classes = 0
    for split, csv in (("pool", pool), ("test", test)):
        table = read_split_table(csv)
        dataset = dataset_for(config, split, table["source_index"].to_numpy(), train_mode=False)
        check_listing(table, dataset.source, csv)
        num_classes = dataset.source.num_classes
        splits[split] = extraction.SplitInput(dataset, table["label"].to_numpy(), table["sample_id"].tolist())
    prefix = getattr(backbone, "checkpoint_prefix", "")
    classes = class_names(dataset.source)
    print(f"backbone {config['backbone']['arch']} from {origin['checkpoint']}: checkpoint prefix {prefix!r} stripped "
          f"(backbone.prefix: {config['backbone']['prefix']}); {backbone.feature_dim}-d features")
    print(f"preprocessing: {describe_preprocessing(config, preprocessing)}")
    print(f"classes, in label order: {', '.join(f'{i}={name}' for i, name in enumerate(classes))}")
    attrs = {
        "backbone": config["backbone"]["arch"],
        **origin,
        "checkpoint_prefix": prefix,
        "classes": json.dumps(classes),
        "dataset": data["dataset"],
        "resolution": preprocessing.resolution,
        "resize": preprocessing.resize,
        "interpolation": preprocessing.interpolation,
        "mean": json.dumps(list(preprocessing.mean)),
        "std": json.dumps(list(preprocessing.std)),
        "preprocessing_config": preprocessing_config(config),
        "transform": repr(transform_for(False, preprocessing)),
        "num_classes": num_classes,
    }
    incremental = model is None and data["dataset"] == UNLABELLED
    if incremental and kept_features_path(out).is_file():
        copied = extraction.seed_from_previous(
            kept_features_path(out), out, splits["pool"], attrs=attrs, dtype=config["features"]["dtype"],
            batch_size=config["features"]["batch_size"], feature_dim=int(backbone.feature_dim))
        print(f"pool features: {copied} rows copied from the previous extraction ({kept_features_path(out)}), "
              f"{len(splits['pool'].sample_ids) - copied} to extract")
    extraction.extract_features(
        backbone,
        splits,
        out,
        attrs=attrs,
        dtype=config["features"]["dtype"],
        batch_size=config["features"]["batch_size"],
        num_workers=data["num_workers"],
        device=resolve_device(config["device"]),
        crash_name="extract_chunk" if model is None else "refresh_chunk",
        world_size=job_processes(config["device"], gpus),
    )
    if incremental:
        keep_features(out)


def kept_features_path(out: str | Path) -> Path:
    """A second name (hard link) of the last pre-trained features of your own images: Snakemake
    deletes features/pretrained.h5 before extracting a grown pool, and its rows are still good."""
    return Path(out).with_name(Path(out).stem + ".kept.h5")


def keep_features(out: str | Path) -> None:
    """Point kept_features_path(out) at `out` (a hard link: no second copy on disk)."""
    kept = kept_features_path(out)
    tmp = kept.with_name(kept.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(out, tmp)
    except OSError as error:  # a file system without hard links: the next growth extracts everything
        print(f"note: cannot keep {out} for a later growth of the pool ({error}); it will be extracted in full")
        return
    os.replace(tmp, kept)


def check_listing(table: Any, source: Any, csv: str) -> None:
    """The images at the table's source indices are still the ones it names: a folder of your own
    images that changed since define_pool would otherwise shift every index silently."""
    listed = [source.sample_id(int(i)) if 0 <= i < len(source) else None for i in table["source_index"]]
    moved = [(sample_id, now) for sample_id, now in zip(table["sample_id"], listed) if sample_id != now]
    if moved:
        raise DataError(f"{csv}: {len(moved)} row(s) no longer name the image at their source index (e.g. "
                        f"{moved[0][0]!r} is now {moved[0][1]!r}): the image folder changed after the pool was "
                        "defined. Rerun snakemake: define_pool then takes in the change.")


PREPROCESSING_KEYS = ("resolution", "resize", "interpolation", "mean", "std")  # data.* keys null = the backbone's


def preprocessing_config(config: dict[str, Any]) -> str:
    """The preprocessing keys as configured (null: the backbone's own), as canonical JSON: with the
    backbone's name it fixes the effective preprocessing, and it is cheap (no model to load)."""
    return json.dumps({key: config["data"].get(key) for key in PREPROCESSING_KEYS}, sort_keys=True)


def describe_preprocessing(config: dict[str, Any], preprocessing: Any) -> str:
    """One log line: the effective values and which of them are the backbone's own."""
    data = config["data"]
    # A null data.resize follows data.resolution when that is set: then it is not the backbone's.
    own = [key for key in PREPROCESSING_KEYS
           if data.get(key) is None and not (key == "resize" and data.get("resolution") is not None)]
    origin = f"the backbone's own: {', '.join(own)}" if own else "all from the config"
    p = preprocessing
    return (f"{p.resolution} px centre crop of a {p.resize} px {p.interpolation} resize, mean {list(p.mean)}, "
            f"std {list(p.std)} ({origin})")


def features_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a features file's attributes must say for this config (features.check_identity)."""
    identity = {"backbone": config["backbone"]["arch"], "dataset": config["data"]["dataset"],
                "preprocessing_config": preprocessing_config(config)}
    if config["data"]["resolution"] is not None:
        identity["resolution"] = config["data"]["resolution"]
    return identity
