"""Image transforms and the torch Dataset that feeds backbones from an ImageSource.

The recipes follow torchvision's classification references (and the paper's fine-tuning setup):
eval = resize + centre crop; train = the CIFAR-style pad-and-crop at small resolutions (where a
random-resized crop would throw away most of a 28-32 px image) and RandomResizedCrop at larger
ones; horizontal flip in both. Size, interpolation and mean/std are the backbone's own
(`Preprocessing`, resolved by `asvp.backbones.preprocessing_for`); the defaults here are
ImageNet's, with torchvision's bilinear resize.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from asvp.data.sources import ImageSource
from asvp.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# At or below this resolution, training uses Resize + RandomCrop(padding) instead of RandomResizedCrop.
SMALL_RESOLUTION = 64
Transform = Callable[[Image.Image], torch.Tensor]
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")  # torchvision's PIL modes


@dataclass(frozen=True)
class Preprocessing:
    """The eval-time input of a backbone: resize the shorter side to `resize` with `interpolation`,
    centre-crop `resolution` px, scale to [0, 1], then (x - mean) / std per RGB channel."""

    resolution: int
    resize: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def record(self) -> dict[str, Any]:
        """As plain data (lists, not tuples), for JSON, HDF5 attributes and the model file."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Preprocessing:
        """From `record()`'s dict (or a model file's, which may lack interpolation: bilinear then)."""
        resolution = int(record["resolution"])
        return cls(resolution, int(record.get("resize") or resolution), str(record.get("interpolation", "bilinear")),
                   tuple(float(v) for v in record.get("mean", IMAGENET_MEAN)),
                   tuple(float(v) for v in record.get("std", IMAGENET_STD)))


def _interpolation(name: str) -> Any:
    from torchvision.transforms import InterpolationMode

    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation {name!r} is not one of {', '.join(INTERPOLATIONS)}")
    return InterpolationMode(name)


def build_transform(train: bool, resolution: int, *, resize: int | None = None, interpolation: str = "bilinear",
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> Transform:
    """Return a PIL -> (3, resolution, resolution) float32 tensor transform.

    `resize` only affects eval (e.g. 256 before a 224 centre crop on ImageNet); None means
    `resolution`. Random choices draw from torch's global RNG, so `torch.manual_seed` makes a
    training pass reproducible (DataLoader workers are seeded from it too).
    """
    from torchvision import transforms as T

    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    mode = _interpolation(interpolation)
    normalise = [ToNormalisedTensor(tuple(mean), tuple(std))]
    if not train:
        steps = [T.Resize(resize or resolution, interpolation=mode), T.CenterCrop(resolution)]
    elif resolution <= SMALL_RESOLUTION:
        steps = [T.Resize(resolution, interpolation=mode), T.RandomCrop(resolution, padding=resolution // 8),
                 T.RandomHorizontalFlip()]
    else:
        steps = [T.RandomResizedCrop(resolution, interpolation=mode), T.RandomHorizontalFlip()]
    return T.Compose(steps + normalise)


def transform_for(train: bool, preprocessing: Preprocessing) -> Transform:
    """`build_transform` with a backbone's preprocessing."""
    p = preprocessing
    return build_transform(train, p.resolution, resize=p.resize, interpolation=p.interpolation, mean=p.mean, std=p.std)


class ToNormalisedTensor:
    """ToTensor + Normalize(ImageNet mean/std) in one numpy pass on an RGB PIL image.

    Same float32 arithmetic as the two torchvision steps (x / 255, then (x - mean) / std), but
    ~4x faster on small images, where per-call tensor overhead dominated a 32-px feature pass.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        x = np.asarray(img, dtype=np.float32) / np.float32(255)
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"ToNormalisedTensor(mean={self.mean.tolist()}, std={self.std.tolist()})"


def checked_indices(source: ImageSource, indices: np.ndarray | None) -> np.ndarray:
    """`indices` as (n,) int64 source indices (all of them when None); DataError naming a bad one."""
    n = len(source)
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise DataError(f"indices into {source.name}/{source.split} must be a 1-D integer array, "
                        f"got dtype {idx.dtype} shape {idx.shape}.")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise DataError(f"index {bad} is not in {source.name}/{source.split} (it has 0..{n - 1}); "
                        "the index list was made for another dataset or split.")
    return idx


class ImageDataset(torch.utils.data.Dataset):
    """Items `(image, label, position)` for the source items listed in `indices`.

    image: (3, H, W) float32 tensor from `transform`; label: int64 scalar tensor;
    position: int64 scalar tensor, the item's position within `indices` (not its source index),
    so a consumer writing rows of a feature matrix in `indices` order knows where each batch goes
    even when a sampler shuffles.
    """

    def __init__(self, source: ImageSource, indices: np.ndarray | None, transform: Transform):
        self.source, self.indices, self.transform = source, checked_indices(source, indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = int(self.indices[position])
        image = self.transform(self.source.load_image(index))
        label = torch.tensor(int(self.source.labels[index]), dtype=torch.int64)
        return image, label, torch.tensor(int(position), dtype=torch.int64)
