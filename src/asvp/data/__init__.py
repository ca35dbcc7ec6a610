"""Datasets as image sources, plus the transforms and torch Datasets that feed the backbones.

`open_data(data_config, split)` is the single entry point (`open_source` for the named
datasets); see `sources.py` for the layouts, `unlabelled.py` for your own images.
`make_dataset` picks the in-memory tensor path (`tensor_dataset.py`) where it applies.

The torch parts load on first use: planning and the cheap jobs read file listings and class
names from here without paying torch's import.
"""

import importlib
from typing import Any

from asvp.data.idx import read_idx
from asvp.data.sources import (
    DATASET_NAMES,
    FASHION_MNIST_DEFAULT_ROOT,
    SPLITS,
    ArraySource,
    FileSource,
    ImageSource,
    open_data,
    open_source,
    read_image,
)

_TORCH_PARTS = {"TensorImageDataset": "tensor_dataset", "make_dataset": "tensor_dataset", "IMAGENET_MEAN": "transforms",
                "IMAGENET_STD": "transforms", "ImageDataset": "transforms", "build_transform": "transforms",
                "Preprocessing": "transforms", "transform_for": "transforms"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_PARTS:
        return getattr(importlib.import_module(f"asvp.data.{_TORCH_PARTS[name]}"), name)
    raise AttributeError(f"module 'asvp.data' has no attribute {name!r}")


def dataset_for(config: dict, split: str, source_indices, train_mode: bool):  # type: ignore[no-untyped-def]
    """The images of `split` ("pool" reads the train split, "test" the test split) at these source
    indices, as the backbone sees them: augmented for training, centre-cropped otherwise, at the
    backbone's preprocessing (`asvp.backbones.preprocessing_for`). `config` is the whole config:
    the backbone decides what its data.* nulls mean. In-memory datasets decode once and augment
    whole batches (`make_dataset`)."""
    from asvp.backbones import preprocessing_for
    from asvp.data.tensor_dataset import make_dataset

    if "data" not in config or "backbone" not in config:
        raise TypeError("dataset_for takes the whole config (data and backbone sections), not config['data']")
    source = open_data(config["data"], "train" if split == "pool" else "test")
    return make_dataset(source, source_indices, train_mode, preprocessing_for(config))

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DEFAULT_ROOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "ArraySource",
    "FileSource",
    "ImageDataset",
    "ImageSource",
    "Preprocessing",
    "TensorImageDataset",
    "build_transform",
    "dataset_for",
    "make_dataset",
    "open_data",
    "open_source",
    "read_idx",
    "read_image",
    "transform_for",
]
