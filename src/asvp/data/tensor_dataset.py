"""In-memory fast path for array datasets (Fashion-MNIST, CIFAR): decode once, augment whole batches.

`ImageDataset` builds a PIL image and runs a PIL transform per item, in the main process: at
32 px that capped feature extraction at ~68 % of the backbone's own speed.
Here the selected items are resized once, with the very PIL steps `build_transform` uses
(Resize + CenterCrop), into a uint8 tensor (N, 3, R, R); eval items are then bit-identical to
`ImageDataset`'s. Train mode reproduces the small-resolution recipe on whole batches:
RandomCrop(R, padding=R // 8) pads the *PIL image* with 0, i.e. black before normalisation,
so the uint8 store is zero-padded before cropping; then a per-sample horizontal flip and the
ImageNet normalisation. Random offsets and flips come from torch's global RNG, so
`torch.manual_seed` makes a pass reproducible (on CPU), as with the PIL transforms.

Mean/std and the resize interpolation are the backbone's (`Preprocessing`); a resize other than
bilinear is done once per image with PIL itself, so items still equal `ImageDataset`'s.

Not covered (`make_dataset` falls back to the per-image path): file datasets, train mode above
64 px (RandomResizedCrop), non-square images in train mode, and stores over 1 GiB (e.g. CIFAR
at 224 px: 7.5 GB), which a laptop could not hold.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import Dataset

from asvp.data.resample import resize_crop
from asvp.data.sources import ArraySource, ImageSource
from asvp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_RESOLUTION,
    ImageDataset,
    Preprocessing,
    _interpolation,
    checked_indices,
    transform_for,
)

MAX_DECODED_BYTES = 1 << 30
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def supports(source: ImageSource, n: int, train: bool, resolution: int) -> bool:
    """Whether `TensorImageDataset` reproduces `build_transform(train, resolution)` for `source`."""
    if not isinstance(source, ArraySource) or n * 3 * resolution * resolution > MAX_DECODED_BYTES:
        return False
    if source.images.ndim == 4 and source.images.shape[3] != 3:
        return False  # not grey or RGB: load_image converts those, the tensor path does not
    height, width = source.images.shape[1:3]
    return not train or (resolution <= SMALL_RESOLUTION and height == width)


def make_dataset(
    source: ImageSource, indices: np.ndarray | None, train: bool, resolution: int | Preprocessing,
    resize: int | None = None
) -> Dataset:
    """The dataset the workflow feeds a backbone with: in-memory tensors where possible, else PIL per item.

    `resolution` is a backbone's `Preprocessing`, or a side in px (with `resize`) for ImageNet's
    mean/std and a bilinear resize."""
    prep = resolution if isinstance(resolution, Preprocessing) else Preprocessing(
        resolution, resize or resolution, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    n = len(source) if indices is None else len(indices)
    if supports(source, n, train, prep.resolution):
        return TensorImageDataset(source, indices, train=train, preprocessing=prep)  # type: ignore[arg-type]
    return ImageDataset(source, indices, transform_for(train, prep))


def decode(source: ArraySource, indices: np.ndarray, size: int, resolution: int, interpolation: str = "bilinear") -> torch.Tensor:
    """(n, 3, R, R) uint8 of the given items after torchvision's PIL Resize(size) + CenterCrop(R)."""
    selected = source.images[indices]  # only the requested items: a pool subset, a labelled set
    # Grey images are resized as one band and replicated afterwards: PIL resamples every band
    # with the same integer arithmetic, so this equals resizing ArraySource's RGB copy.
    if interpolation == "bilinear":
        cropped = resize_crop(selected, size, resolution)
    else:
        cropped = _pil_resize_crop(selected, size, resolution, interpolation)
    pixels = torch.from_numpy(np.ascontiguousarray(cropped))
    pixels = pixels[:, None].expand(-1, 3, -1, -1) if selected.ndim == 3 else pixels.permute(0, 3, 1, 2)
    return pixels.contiguous()


def _pil_resize_crop(images: np.ndarray, size: int, crop: int, interpolation: str) -> np.ndarray:
    """PIL's Resize(size, interpolation) + CenterCrop(crop), one image at a time (once per dataset)."""
    from PIL import Image
    from torchvision import transforms as T

    steps = T.Compose([T.Resize(size, interpolation=_interpolation(interpolation)), T.CenterCrop(crop)])
    out = np.empty((len(images), crop, crop, *images.shape[3:]), dtype=np.uint8)
    for k, image in enumerate(images):
        out[k] = np.asarray(steps(Image.fromarray(image)))
    return out


def normalise(images: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (B, 3, R, R) -> float32 (x / 255 - mean) / std; same float32 steps as ToNormalisedTensor."""
    x = images.to(torch.float32).div_(255)
    return x.sub_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)).div_(
        torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))


def pad_crop_flip(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-sample RandomCrop(R, padding) with zero (black) fill, then RandomHorizontalFlip(0.5).

    images: (B, C, R, R) uint8. Draws B top offsets, B left offsets, then B flips from torch's
    global RNG.
    """
    b, _, r, _ = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4) if padding else images
    top = torch.randint(0, 2 * padding + 1, (b,))
    left = torch.randint(0, 2 * padding + 1, (b,))
    flip = torch.rand(b) < 0.5
    grid = torch.arange(r)
    rows = top[:, None] + grid
    cols = left[:, None] + grid
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Advanced indices split by the channel slice: the result is (B, R, R, C).
    crops = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


class TensorImageDataset(Dataset):
    """Items `(image, label, position)` like `ImageDataset`, plus `batch(positions)` for whole batches.

    source, indices: as `ImageDataset` (indices are (N,) int64 source indices); labels: (N,)
    int64, the source's labels of those items; images: the (N, 3, R, R) uint8 store.
    """

    def __init__(
        self, source: ArraySource, indices: np.ndarray | None, *, train: bool, resolution: int | None = None,
        resize: int | None = None, preprocessing: Preprocessing | None = None,
    ) -> None:
        if preprocessing is None:
            if resolution is None:
                raise ValueError("TensorImageDataset needs a resolution or a preprocessing")
            preprocessing = Preprocessing(resolution, resize or resolution, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
        resolution, resize = preprocessing.resolution, preprocessing.resize
        self.preprocessing = preprocessing
        if not supports(source, 0, train, resolution):
            raise ValueError(f"TensorImageDataset cannot reproduce the {'train' if train else 'eval'} transform of "
                             f"{source!r} at {resolution} px; use make_dataset, which falls back to ImageDataset")
        self.source, self.train, self.resolution = source, train, resolution
        self.indices = checked_indices(source, indices)
        self.labels = np.array(source.labels[self.indices], dtype=np.int64)
        self._labels = torch.from_numpy(self.labels)
        self.padding = resolution // 8 if train else 0
        # Train mode resizes to the resolution (the crop is random); eval may resize larger, then centre-crop.
        self.images = decode(source, self.indices, resolution if train else (resize or resolution), resolution,
                             preprocessing.interpolation)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions: np.ndarray | torch.Tensor) -> Batch:
        """images (B, 3, R, R) float32, labels (B,) int64, positions (B,) int64 for `positions` in this dataset."""
        if isinstance(positions, torch.Tensor):
            pos = positions.detach().to(device="cpu", dtype=torch.int64).reshape(-1).clone()
        else:
            pos = torch.tensor(np.asarray(positions, dtype=np.int64).reshape(-1))
        images = self.images[pos]
        if self.train:
            images = pad_crop_flip(images, self.padding)
        return normalise(images, self.preprocessing.mean, self.preprocessing.std), self._labels[pos], pos

    def __getitem__(self, position: int) -> Batch:
        position = range(len(self))[position]  # negative positions as in a list; IndexError past the end
        images, labels, positions = self.batch(np.array([position]))
        return images[0], labels[0], positions[0]

    def relabelled(self, labels: np.ndarray) -> TensorImageDataset:
        """The same images with other labels (the oracle's, from labelled.csv), sharing the uint8 store."""
        labels = np.array(labels, dtype=np.int64)
        if labels.shape != self.labels.shape:
            raise ValueError(f"relabelled: {labels.shape[0] if labels.ndim else 0} labels for {len(self)} images")
        other = copy.copy(self)
        other.labels, other._labels = labels, torch.from_numpy(labels)
        return other

    def __repr__(self) -> str:
        mode = f"train, pad {self.padding} + crop + flip" if self.train else "eval"
        return f"TensorImageDataset({self.source!r}, n={len(self)}, {self.resolution} px, {mode})"
