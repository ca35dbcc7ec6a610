"""The in-memory fast path (TensorImageDataset, make_dataset, the vectorised PIL resize).

Its promise: eval items bit-identical to ImageDataset's, train batches that are one of the
outputs torchvision's RandomCrop(padding) + RandomHorizontalFlip could give, reproducible from
torch's global seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from asvp.data import ArraySource, FileSource, ImageDataset, TensorImageDataset, build_transform, make_dataset, open_source
from asvp.data import resample
from asvp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToNormalisedTensor
from asvp.errors import DataError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def rgb_source(n: int = 12, height: int = 32, width: int = 32, seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    return ArraySource("cifar10", "train", images, np.arange(n) % 10, [f"c{i}" for i in range(10)])


def constant_source(value: int, size: int = 16, n: int = 1) -> ArraySource:
    return ArraySource("fashion_mnist", "train", np.full((n, size, size), value, np.uint8), np.zeros(n, np.int64), ["a"])


def reference_images(source, indices, train: bool, resolution: int, resize: int | None = None) -> torch.Tensor:
    dataset = ImageDataset(source, indices, build_transform(train, resolution, resize=resize))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.mark.parametrize(("resolution", "resize"), [(32, None), (32, 36), (24, None), (16, 20)])
def test_eval_items_equal_image_dataset_for_grey_images(fake_fashion_mnist: Path, resolution: int, resize: int | None) -> None:
    source = open_source("fashion_mnist", fake_fashion_mnist, "train")
    indices = np.array([5, 0, 39, 12, 12])
    dataset = make_dataset(source, indices, False, resolution, resize)
    assert isinstance(dataset, TensorImageDataset)
    images, labels, positions = dataset.batch(np.arange(len(indices)))
    assert torch.equal(images, reference_images(source, indices, False, resolution, resize))
    assert labels.tolist() == source.labels[indices].tolist() and positions.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("height", "width", "resolution", "resize"),
    [(32, 32, 32, None), (32, 32, 40, None), (30, 45, 24, None), (32, 32, 8, None), (32, 32, 32, 48)],
)
def test_eval_items_equal_image_dataset_for_rgb_images(height: int, width: int, resolution: int, resize: int | None) -> None:
    source = rgb_source(height=height, width=width)
    indices = np.arange(len(source))[::-1].copy()
    dataset = make_dataset(source, indices, False, resolution, resize)
    assert isinstance(dataset, TensorImageDataset)
    assert torch.equal(dataset.batch(np.arange(len(indices)))[0], reference_images(source, indices, False, resolution, resize))


def test_eval_items_equal_image_dataset_on_real_fashion_mnist(real_fashion_mnist: Path) -> None:
    source = open_source("fashion_mnist", real_fashion_mnist, "test")
    indices = np.random.default_rng(0).choice(len(source), 1000, replace=False)
    dataset = make_dataset(source, indices, False, 32, None)
    assert torch.equal(dataset.batch(np.arange(len(indices)))[0], reference_images(source, indices, False, 32))


def test_only_the_requested_items_are_decoded() -> None:
    dataset = TensorImageDataset(rgb_source(n=50), np.array([3, 7]), train=False, resolution=16)
    assert dataset.images.shape == (2, 3, 16, 16) and dataset.images.dtype == torch.uint8
    assert dataset.indices.tolist() == [3, 7] and dataset.labels.dtype == np.int64


def test_item_and_batch_agree_on_shapes_dtypes_and_labels(fake_fashion_mnist: Path) -> None:
    source = open_source("fashion_mnist", fake_fashion_mnist, "train")
    indices = np.array([7, 3, 12])
    for train in (False, True):
        dataset = make_dataset(source, indices, train, 32)
        image, label, position = dataset[1]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.shape == () and int(label) == source.labels[3]
        assert position.dtype == torch.int64 and int(position) == 1
        images, labels, positions = dataset.batch(torch.tensor([2, 0]))
        assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.tolist() == source.labels[[12, 7]].tolist()
        assert positions.dtype == torch.int64 and positions.tolist() == [2, 0]
    dataset = make_dataset(source, indices, False, 32)
    assert torch.equal(dataset[-1][0], dataset.batch(np.array([2]))[0][0])
    loaded = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert all(torch.equal(a, b) for a, b in zip(loaded, dataset.batch(np.arange(3))))
    with pytest.raises(IndexError):
        dataset[3]


def test_train_batches_are_reproducible_from_the_global_seed_and_differ_across_seeds() -> None:
    dataset = TensorImageDataset(rgb_source(n=64), None, train=True, resolution=32)
    batches = {}
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        batches.setdefault(seed, []).append(dataset.batch(np.arange(64))[0])
    assert torch.equal(batches[0][0], batches[0][1])
    assert not torch.equal(batches[0][0], batches[1][0])


def _normalised(value: float) -> torch.Tensor:
    return ((torch.tensor(value, dtype=torch.float32) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)


def test_padding_is_black_before_normalisation_and_offsets_span_the_padding() -> None:
    resolution, padding = 16, 2
    dataset = TensorImageDataset(constant_source(255, resolution), np.zeros(400, np.int64), train=True, resolution=resolution)
    torch.manual_seed(0)
    images = dataset.batch(np.arange(400))[0]
    white, black = _normalised(1.0).expand(3, resolution, resolution), _normalised(0.0).expand(3, resolution, resolution)
    is_white = (images == white).all(dim=1)
    assert ((images == white) | (images == black)).all()
    rows, cols = is_white.any(dim=2).sum(dim=1), is_white.any(dim=1).sum(dim=1)
    # Each crop is the white image shifted by at most `padding` pixels; the uncovered band is black.
    assert set(rows.tolist()) == set(cols.tolist()) == {resolution - s for s in range(padding + 1)}
    assert int(is_white.sum()) == int((rows * cols).sum())


def test_every_train_output_is_a_torchvision_crop_flip_and_all_of_them_occur() -> None:
    resolution, padding = 16, 2
    source = rgb_source(n=1, height=resolution, width=resolution, seed=3)
    image = Image.fromarray(source.images[0])
    normalise = ToNormalisedTensor()
    possible = []
    padded = T.functional.pad(image, padding, fill=0)
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = T.functional.crop(padded, top, left, resolution, resolution)
            possible += [normalise(crop), normalise(T.functional.hflip(crop))]
    dataset = TensorImageDataset(source, np.zeros(1000, np.int64), train=True, resolution=resolution)
    torch.manual_seed(0)
    seen = set()
    for output in dataset.batch(np.arange(1000))[0]:
        matches = [k for k, candidate in enumerate(possible) if torch.equal(output, candidate)]
        assert matches, "a train output that RandomCrop(padding) + RandomHorizontalFlip cannot produce"
        seen.add(matches[0])
    assert len(seen) == len(possible)


def test_relabelled_shares_the_images_and_replaces_the_labels() -> None:
    dataset = TensorImageDataset(rgb_source(n=4), None, train=False, resolution=32)
    other = dataset.relabelled(np.array([9, 8, 7, 6]))
    assert other.images is dataset.images
    assert other.batch(np.array([0, 3]))[1].tolist() == [9, 6] and dataset.batch(np.array([0]))[1].tolist() == [0]
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        dataset.relabelled(np.array([1, 2, 3]))


def test_make_dataset_falls_back_to_the_per_image_path_where_tensors_do_not_apply(tmp_path: Path) -> None:
    source = rgb_source(n=4)
    assert isinstance(make_dataset(source, None, True, 32), TensorImageDataset)
    assert isinstance(make_dataset(source, None, True, 96), ImageDataset)  # RandomResizedCrop
    assert isinstance(make_dataset(rgb_source(n=4, height=30, width=45), None, True, 24), ImageDataset)
    files = FileSource("imagefolder", "train", tmp_path, [tmp_path / "a.png"], [0], ["a"])
    assert isinstance(make_dataset(files, None, False, 32), ImageDataset)


def test_bad_indices_are_rejected_as_for_image_dataset(fake_fashion_mnist: Path) -> None:
    source = open_source("fashion_mnist", fake_fashion_mnist, "test")
    with pytest.raises(DataError, match="index 20 .* 0..19"):
        make_dataset(source, np.array([0, 20]), False, 32)
    with pytest.raises(DataError, match="1-D integer"):
        make_dataset(source, np.array([0.5]), False, 32)


@pytest.mark.parametrize(
    ("shape", "size", "crop"),
    [((6, 28, 28), 32, 32), ((6, 32, 32, 3), 7, 7), ((6, 45, 30, 3), 33, 30), ((6, 32, 32, 3), 224, 224)],
)
def test_vectorised_resize_equals_torchvision_pil(shape: tuple[int, ...], size: int, crop: int) -> None:
    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    steps = T.Compose([T.Resize(size), T.CenterCrop(crop)])
    expected = np.stack([np.asarray(steps(Image.fromarray(image))) for image in images])
    fast = resample._vectorised(images, size, crop)
    assert fast is not None and np.array_equal(fast, expected)


def test_resize_falls_back_to_pil_when_the_vectorised_result_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(2).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    expected = resample.resize_crop(images, 32, 32)
    monkeypatch.setattr(resample, "_vectorised", lambda images, size, crop: np.zeros((len(images), crop, crop), np.uint8))
    assert np.array_equal(resample.resize_crop(images, 32, 32), expected)
