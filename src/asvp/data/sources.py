"""Image sources: one small interface over every dataset the workflow can run on.

Feature extraction and fine-tuning only need "how many items, the label of each, a stable id,
and the RGB image at index i". `open_source(name, root, split)` returns exactly that for
Fashion-MNIST (the offline default), CIFAR-10/100, Oxford-IIIT Pets, ImageNet and any
ImageFolder tree, so no other module knows a dataset's file layout.

Decisions worth knowing:
* Array datasets (Fashion-MNIST, CIFAR) stay in memory as uint8 and build a PIL image per call;
  70k Fashion-MNIST images are 55 MB, decoded in well under a second.
* torchvision's readers are used for file listings, but never with download=True, and CIFAR's md5
  check is replaced by a presence check so hand-made or re-packed copies load.
* Greyscale images are returned as RGB (channels replicated) so ImageNet backbones take them.
* Every unreadable file raises DataError naming the path and the fix; the CLI prints it as one line.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from asvp.data.idx import read_idx
from asvp.errors import ConfigError, DataError

DATASET_NAMES: tuple[str, ...] = ("fashion_mnist", "cifar10", "cifar100", "oxford_pets", "imagenet", "imagefolder")
SPLITS: tuple[str, ...] = ("train", "test")
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Where scripts/bootstrap.sh unpacks the Debian package when it cannot install it (no root).
FASHION_MNIST_USER_ROOT = Path("~/.cache/asvp-flow/fashion-mnist/usr/share/datasets/fashion-mnist").expanduser()


def default_fashion_mnist_root() -> Path:
    """The system-wide Debian install if present, else the per-user unpacked copy."""
    if not FASHION_MNIST_DEFAULT_ROOT.is_dir() and FASHION_MNIST_USER_ROOT.is_dir():
        return FASHION_MNIST_USER_ROOT
    return FASHION_MNIST_DEFAULT_ROOT
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@runtime_checkable
class ImageSource(Protocol):
    """One split of one dataset. `labels` is (N,) int64 with values in [0, num_classes)."""

    name: str
    split: str
    num_classes: int
    classes: Sequence[str]
    labels: np.ndarray

    def __len__(self) -> int: ...

    def sample_id(self, index: int) -> str:
        """A stable, human-readable id (a relative path, or "train/000123" for array datasets)."""
        ...

    def load_image(self, index: int) -> Image.Image:
        """The RGB image at `index`; DataError naming the file if it cannot be read."""
        ...


class ArraySource:
    """A split held in memory as uint8 images: (N, H, W) grey or (N, H, W, 3) RGB."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"images must be uint8 (N,H,W[,3]) matching {len(labels)} labels, got "
                             f"{images.dtype} {images.shape}")
        self.name, self.split = name, split
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def sample_id(self, index: int) -> str:
        return f"{self.split}/{int(index):06d}"

    def load_image(self, index: int) -> Image.Image:
        img = Image.fromarray(self.images[index])
        return img.convert("RGB") if img.mode != "RGB" else img

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, {self.split!r}, n={len(self)}, classes={self.num_classes})"


class FileSource:
    """A split whose images are files; ids are paths relative to the dataset root (POSIX style)."""

    def __init__(self, name: str, split: str, root: Path, paths: Sequence[str | Path],
                 labels: Sequence[int] | np.ndarray, classes: Sequence[str], num_classes: int | None = None):
        self.name, self.split, self.root = name, split, Path(root)
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = list(classes)
        self.num_classes = int(num_classes if num_classes is not None else len(self.classes))
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def sample_id(self, index: int) -> str:
        path = self.paths[index]
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:  # a listing outside root (symlinked tree): the absolute path is still stable
            return path.as_posix()

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.paths[index])

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, {self.split!r}, root={str(self.root)!r}, n={len(self)})"


def read_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, turning any decoding failure into a DataError naming the file.

    `convert` forces the full decode, so a truncated JPEG fails here (with its path) rather than
    deep inside a DataLoader worker with PIL's bare "image file is truncated".
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist (it was listed when the dataset was opened). "
                        "Restore it, or delete its entry and rerun.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image file {path} cannot be read ({type(exc).__name__}: {exc}). "
                        "Replace or delete the file, then rerun.") from exc


def open_data(data: Mapping[str, Any], split: str) -> ImageSource:
    """One split of the config's `data` section: a dataset of `open_source`, or your own
    unlabelled images (`data.dataset: unlabelled`, asvp.data.unlabelled), which need more keys
    than a root."""
    if data["dataset"] == "unlabelled":
        from asvp.data.unlabelled import open_unlabelled

        return open_unlabelled(data, split)
    return open_source(data["dataset"], data["root"], split)


def open_source(name: str, root: str | Path | None, split: str) -> ImageSource:
    """Open one split ("train" or "test") of dataset `name` stored under `root`.

    `root=None` is only valid for fashion_mnist (Debian's install location). Raises ConfigError for
    an unknown name/split or a missing root setting, DataError when files are absent or corrupt.
    """
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r} (data.dataset); valid names: {', '.join(DATASET_NAMES)}.")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
    if root is None or str(root) == "":
        if name != "fashion_mnist":
            raise ConfigError(f"dataset {name!r} needs data.root (the folder holding it); set data.root.")
        root_path = default_fashion_mnist_root()
    else:
        root_path = Path(root).expanduser()
    if not root_path.is_dir():
        hint = _FASHION_MNIST_HINT if name == "fashion_mnist" else _LAYOUT_HINTS[name]
        raise DataError(f"dataset folder {root_path} (data.root for {name}) does not exist. {hint}")
    return _OPENERS[name](root_path, split)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

_FASHION_MNIST_HINT = (
    "Install it with `apt-get install dataset-fashion-mnist` (files go to "
    f"{FASHION_MNIST_DEFAULT_ROOT}), or without root: `apt-get download dataset-fashion-mnist && "
    "dpkg -x dataset-fashion-mnist_*.deb <dir>` and set data.root to "
    "<dir>/usr/share/datasets/fashion-mnist."
)


def _idx_file(root: Path, stem: str) -> Path:
    """The gzipped file if present, else the plain one; DataError naming the expected path."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {root / stem}.gz is missing. {_FASHION_MNIST_HINT}")


def _open_fashion_mnist(root: Path, split: str) -> ArraySource:
    prefix = "train" if split == "train" else "t10k"
    images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{images_path} / {labels_path}: expected uint8 IDX data. "
                        "Replace the files with the originals.")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                        "one of them is from another release. Replace both with the originals.")
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path} has label {int(labels.max())}, but Fashion-MNIST has 10 classes (0-9). "
                        "Replace the file with the original.")
    return ArraySource("fashion_mnist", split, images, labels.astype(np.int64), FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision readers, presence check instead of md5)

def _cifar_class(base_name: str) -> type:
    """A torchvision CIFAR subclass whose only change is the integrity check.

    torchvision compares md5 sums of the official archives' files, which rejects test fixtures and
    re-pickled copies; a presence check with a helpful message is what a local-only workflow needs.
    """
    from torchvision import datasets

    base = getattr(datasets, base_name)

    class LocalCIFAR(base):  # type: ignore[misc, valid-type]
        def _expected_files(self) -> list[str]:
            return [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            missing = [f for f in self._expected_files() if not (folder / f).is_file()]
            if missing:
                raise DataError(
                    f"{base_name} files missing in {folder}: {', '.join(missing)}. Put the official "
                    f"'{self.base_folder}' folder (extracted from {self.filename}) inside data.root "
                    f"({self.root})."
                )
            return True

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            with open(path, "rb") as fh:
                meta = pickle.load(fh, encoding="latin1")
            self.classes = list(meta[self.meta["key"]])
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    LocalCIFAR.__name__ = LocalCIFAR.__qualname__ = f"Local{base_name}"
    return LocalCIFAR


def _open_cifar(name: str, root: Path, split: str) -> ArraySource:
    base_name = "CIFAR10" if name == "cifar10" else "CIFAR100"
    cls = _cifar_class(base_name)
    try:
        ds = cls(str(root), train=(split == "train"), download=False)
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
        folder = root / cls.base_folder
        raise DataError(f"{base_name} files in {folder} cannot be read ({type(exc).__name__}: {exc}). "
                        "Replace the folder with a fresh copy of the official python-version archive.") from exc
    labels = np.asarray(ds.targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(ds.classes)):
        raise DataError(f"{base_name} labels in {root / cls.base_folder} lie outside 0..{len(ds.classes) - 1} "
                        "(the meta file lists fewer classes). Replace the folder with the official files.")
    return ArraySource(name, split, np.ascontiguousarray(ds.data, dtype=np.uint8), labels, ds.classes)


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pets

def _open_pets(root: Path, split: str) -> FileSource:
    from torchvision.datasets import OxfordIIITPet

    # torchvision expects root/oxford-iiit-pet/{images,annotations}; also accept root pointing at
    # the oxford-iiit-pet folder itself, the other natural reading of "dataset folder".
    parent = root.parent if root.name == "oxford-iiit-pet" and not (root / "oxford-iiit-pet").is_dir() else root
    pet_split = "trainval" if split == "train" else "test"
    try:
        ds = OxfordIIITPet(str(parent), split=pet_split, target_types="category", download=False)
    except RuntimeError as exc:
        raise DataError(f"Oxford-IIIT Pets not found under {root}: {_LAYOUT_HINTS['oxford_pets']}") from exc
    except (OSError, ValueError) as exc:
        ann = parent / "oxford-iiit-pet" / "annotations" / f"{pet_split}.txt"
        raise DataError(f"Oxford-IIIT Pets annotation file {ann} cannot be read ({exc}); each line must be "
                        "'<image_id> <class 1-37> <species 1-2> <breed id>'. Restore the official file.") from exc
    labels = np.asarray(ds._labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"Oxford-IIIT Pets {pet_split}.txt under {parent} has class ids below 1. "
                        "Restore the official file.")
    # The class list is built from the ids present in this split; keep num_classes consistent
    # across splits even when a (small or custom) split lacks the highest classes.
    num_classes = max(len(ds.classes), int(labels.max()) + 1 if labels.size else 0)
    return FileSource("oxford_pets", split, parent, ds._images, labels, ds.classes, num_classes)


# ---------------------------------------------------------------------------------------------
# ImageNet and generic ImageFolder trees

def _split_dir(name: str, root: Path, split: str) -> Path:
    if split == "train":
        candidates = [root / "train"]
    elif name == "imagenet":
        candidates = [root / "val"]
    else:
        candidates = [root / "test", root / "val"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    wanted = " or ".join(str(c) for c in candidates)
    raise DataError(f"{name}: split folder {wanted} does not exist. {_LAYOUT_HINTS[name]}")


def _list_classes(folder: Path, name: str) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(folder)[0]
    except FileNotFoundError as exc:
        raise DataError(f"{name}: {folder} holds no class folders. {_LAYOUT_HINTS[name]}") from exc


def _open_folder(name: str, root: Path, split: str) -> FileSource:
    from torchvision.datasets import ImageFolder

    train_dir = _split_dir(name, root, "train")
    classes = _list_classes(train_dir, name)
    folder = train_dir if split == "train" else _split_dir(name, root, split)
    if folder != train_dir:
        # Class indices must mean the same thing in both splits, so the test split is indexed with
        # the train split's classes (a silent shift would mislabel every image after a gap).
        test_classes = _list_classes(folder, name)
        if name == "imagenet" and test_classes != classes:
            diff = sorted(set(classes) ^ set(test_classes))
            raise DataError(f"imagenet: class folders of {train_dir} and {folder} differ ({len(diff)} differ, e.g. "
                            f"{', '.join(diff[:5])}). Arrange val/ in the same class folders as train/.")
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise DataError(f"{name}: {folder} has class folders missing from {train_dir}: {', '.join(extra[:5])}. "
                            "Every test class must also appear in train/.")

    class_to_idx = {c: i for i, c in enumerate(classes)}

    class _Listing(ImageFolder):
        def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
            return classes, class_to_idx

    try:
        ds = _Listing(str(folder), allow_empty=(folder != train_dir))
    except FileNotFoundError as exc:
        raise DataError(f"{name}: {exc}. Every class folder needs at least one image "
                        "(.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp).") from exc
    if not ds.samples:
        raise DataError(f"{name}: no images found in {folder}. {_LAYOUT_HINTS[name]}")
    paths, labels = zip(*ds.samples)
    return FileSource(name, split, root, paths, labels, classes)


_LAYOUT_HINTS = {
    "fashion_mnist": _FASHION_MNIST_HINT,
    "cifar10": "Expected data.root/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), "
               "the folder extracted from cifar-10-python.tar.gz.",
    "cifar100": "Expected data.root/cifar-100-python/ (train, test, meta), the folder extracted from "
                "cifar-100-python.tar.gz.",
    "oxford_pets": "expected data.root/oxford-iiit-pet/images/*.jpg and "
                   "data.root/oxford-iiit-pet/annotations/{trainval,test}.txt (images.tar.gz and "
                   "annotations.tar.gz extracted into data.root/oxford-iiit-pet/).",
    "imagenet": "Expected data.root/train/<wnid>/*.JPEG and data.root/val/<wnid>/*.JPEG "
                "(val arranged in class folders, e.g. with the common valprep.sh).",
    "imagefolder": "Expected data.root/train/<class>/<image> and data.root/test/<class>/<image> "
                   "(or val/ instead of test/).",
}

_OPENERS = {
    "fashion_mnist": _open_fashion_mnist,
    "cifar10": lambda root, split: _open_cifar("cifar10", root, split),
    "cifar100": lambda root, split: _open_cifar("cifar100", root, split),
    "oxford_pets": _open_pets,
    "imagenet": lambda root, split: _open_folder("imagenet", root, split),
    "imagefolder": lambda root, split: _open_folder("imagefolder", root, split),
}
