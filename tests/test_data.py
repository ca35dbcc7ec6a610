"""Image sources (Fashion-MNIST, CIFAR, Pets, ImageNet/ImageFolder), transforms and ImageDataset."""

from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx
from PIL import Image

from asvp.data import DATASET_NAMES, ImageDataset, ImageSource, build_transform, open_source, read_idx
from asvp.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------ Fashion-MNIST


def test_real_fashion_mnist_loads_all_70k_quickly_as_rgb(real_fashion_mnist: Path) -> None:
    start = time.perf_counter()
    train = open_source("fashion_mnist", None, "train")
    test = open_source("fashion_mnist", real_fashion_mnist, "test")
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"decoding 70k images took {elapsed:.2f} s"
    assert (len(train), len(test)) == (60_000, 10_000)
    assert isinstance(train, ImageSource)
    assert train.num_classes == 10 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.sample_id(123) == "train/000123" and test.sample_id(0) == "test/000000"
    img = train.load_image(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    r, g, b = (np.asarray(c) for c in img.split())
    assert (r == g).all() and (g == b).all() and r.max() > 0


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_reads_gzip_and_plain_idx(tmp_path: Path, compressed: bool) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    ext = ".gz" if compressed else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", images)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", [7, 0, 9])
    src = open_source("fashion_mnist", tmp_path, "test")
    assert src.labels.tolist() == [7, 0, 9]
    np.testing.assert_array_equal(np.asarray(src.load_image(2))[..., 0], images[2])


def test_fashion_mnist_missing_file_names_path_and_install_command(fake_fashion_mnist: Path) -> None:
    (fake_fashion_mnist / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        open_source("fashion_mnist", fake_fashion_mnist, "train")
    msg = str(err.value)
    assert str(fake_fashion_mnist / "train-labels-idx1-ubyte") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "dpkg -x" in msg and "data.root" in msg
    assert len(open_source("fashion_mnist", fake_fashion_mnist, "test")) == 20  # test split unaffected


def test_idx_bad_magic_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic") as err:
        read_idx(bad)
    assert str(bad) in str(err.value)


def test_idx_size_mismatch_and_truncated_gzip_are_data_errors(fake_fashion_mnist: Path) -> None:
    images = fake_fashion_mnist / "t10k-images-idx3-ubyte.gz"
    payload = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(payload[:-100]))  # valid gzip, too few pixels
    with pytest.raises(DataError, match="truncated") as err:
        open_source("fashion_mnist", fake_fashion_mnist, "test")
    assert str(images) in str(err.value)
    images.write_bytes(gzip.compress(payload)[:-50])  # gzip stream cut off
    with pytest.raises(DataError, match=str(images)):
        open_source("fashion_mnist", fake_fashion_mnist, "test")


def test_fashion_mnist_label_count_mismatch_is_a_data_error(fake_fashion_mnist: Path) -> None:
    write_idx(fake_fashion_mnist / "t10k-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        open_source("fashion_mnist", fake_fashion_mnist, "test")


# ------------------------------------------------------------------------------------ errors shared by all


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        open_source("mnist", None, "train")
    assert all(name in str(err.value) for name in DATASET_NAMES)


def test_unknown_split_and_missing_root_setting_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split"):
        open_source("fashion_mnist", tmp_path, "val")
    with pytest.raises(ConfigError, match="data.root"):
        open_source("cifar10", None, "train")


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_missing_root_is_a_data_error_naming_the_path(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        open_source(name, missing, "train")


# ------------------------------------------------------------------------------------ CIFAR


def _write_cifar(root: Path, name: str, per_batch: int = 4) -> dict[str, np.ndarray]:
    """Official python-version layout; keys as the official files read under encoding='latin1'."""
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta_file, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder, files, label_key = root / "cifar-100-python", ["train", "test"], "fine_labels"
        meta_file, meta = "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []}
    folder.mkdir(parents=True)
    written = {}
    for file in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10 if name == "cifar10" else 100, per_batch).tolist()
        with open(folder / file, "wb") as fh:
            pickle.dump({"data": data, label_key: labels, "batch_label": file}, fh, protocol=2)
        written[file] = data
    with open(folder / meta_file, "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_local_batches_without_md5_check(tmp_path: Path, name: str) -> None:
    written = _write_cifar(tmp_path, name)
    train, test = open_source(name, tmp_path, "train"), open_source(name, tmp_path, "test")
    assert (len(train), len(test)) == ((20, 4) if name == "cifar10" else (4, 4))
    assert train.num_classes == (10 if name == "cifar10" else 100)
    assert test.labels.dtype == np.int64 and test.sample_id(3) == "test/000003"
    first = written["data_batch_1" if name == "cifar10" else "train"][0]
    img = np.asarray(train.load_image(0))
    assert img.shape == (32, 32, 3)
    # CIFAR rows are channel-planar (1024 R, 1024 G, 1024 B), row-major within a plane.
    np.testing.assert_array_equal(img[..., 0].ravel(), first[:1024])
    np.testing.assert_array_equal(img[..., 2].ravel(), first[2048:])


def test_cifar_missing_batch_lists_missing_files(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as err:
        open_source("cifar10", tmp_path, "test")
    assert "cifar-10-batches-py" in str(err.value)


def test_cifar_corrupt_pickle_is_a_data_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar100")
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cifar-100-python"):
        open_source("cifar100", tmp_path, "test")


# ------------------------------------------------------------------------------------ Oxford Pets


def _write_pets(root: Path) -> Path:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    splits = {"trainval": [("Abyssinian_1", 1, 1), ("american_bulldog_2", 2, 2), ("Abyssinian_3", 1, 1)],
              "test": [("american_bulldog_4", 2, 2), ("Abyssinian_5", 1, 1)]}
    for split, rows in splits.items():
        lines = [f"{image_id} {label} {species} 1\n" for image_id, label, species in rows]
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
        for k, (image_id, _, _) in enumerate(rows):
            Image.new("RGB", (20 + k, 16), (40 * k, 100, 200)).save(base / "images" / f"{image_id}.jpg")
    return base


def test_oxford_pets_train_maps_to_trainval(tmp_path: Path) -> None:
    base = _write_pets(tmp_path)
    train = open_source("oxford_pets", tmp_path, "train")
    assert len(train) == 3 and train.labels.tolist() == [0, 1, 0] and train.num_classes == 2
    assert train.classes == ["Abyssinian", "American Bulldog"]
    assert train.sample_id(1) == "oxford-iiit-pet/images/american_bulldog_2.jpg"
    assert train.load_image(1).size == (21, 16)
    # data.root may also point at the oxford-iiit-pet folder itself
    test = open_source("oxford_pets", base, "test")
    assert test.labels.tolist() == [1, 0] and test.load_image(0).mode == "RGB"


def test_oxford_pets_missing_tree_says_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="annotations/"):
        open_source("oxford_pets", tmp_path, "train")


# ------------------------------------------------------------------------------------ ImageNet / ImageFolder


def _write_tree(root: Path, layout: dict[str, dict[str, int]]) -> None:
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                ext = "png" if k % 2 == 0 else "jpg"
                Image.new("RGB" if k % 3 else "L", (12, 10), 30 * k).save(root / split / cls / f"{k}.{ext}")


def test_imagefolder_sorted_classes_ids_and_images(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": {"dog": 2, "cat": 3}, "test": {"cat": 1, "dog": 2}})
    train, test = open_source("imagefolder", tmp_path, "train"), open_source("imagefolder", tmp_path, "test")
    assert train.classes == ["cat", "dog"] and train.num_classes == 2
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [0, 1, 1]
    assert train.sample_id(0) == "train/cat/0.png" and test.sample_id(2) == "test/dog/1.jpg"
    img = train.load_image(0)  # saved as greyscale "L"
    assert img.mode == "RGB" and img.size == (12, 10)


def test_imagefolder_test_split_keeps_train_class_indices(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "val": {"c": 2}})
    test = open_source("imagefolder", tmp_path, "test")  # val/ accepted when test/ is absent
    assert test.labels.tolist() == [2, 2] and test.num_classes == 3
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        open_source("imagefolder", tmp_path, "test")


def test_imagenet_requires_matching_train_and_val_classes(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": {"n01": 1, "n02": 1}, "val": {"n01": 1, "n02": 2}})
    assert open_source("imagenet", tmp_path, "test").labels.tolist() == [0, 1, 1]
    (tmp_path / "val" / "n03").mkdir()
    with pytest.raises(DataError, match="n03"):
        open_source("imagenet", tmp_path, "test")
    with pytest.raises(DataError, match="val"):
        open_source("imagenet", tmp_path / "train", "test")


def test_corrupt_image_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": {"cat": 2}, "test": {"cat": 1}})
    bad = tmp_path / "train" / "cat" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    src = open_source("imagefolder", tmp_path, "train")
    src.load_image(0)
    with pytest.raises(DataError) as err:
        src.load_image(1)
    assert str(bad) in str(err.value) and "replace or delete" in str(err.value).lower()
    garbage = tmp_path / "train" / "cat" / "0.png"
    garbage.write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=str(garbage)):
        ImageDataset(src, np.array([0]), build_transform(False, 8))[0]


# ------------------------------------------------------------------------------------ transforms / dataset


def test_eval_transform_resizes_crops_and_normalises() -> None:
    img = Image.new("RGB", (40, 20), (124, 116, 104))  # ~ImageNet mean colour
    out = build_transform(False, 16)(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.abs().max() < 0.02
    assert build_transform(False, 16, resize=32)(img).shape == (3, 16, 16)


def test_fast_normalisation_equals_torchvision_to_tensor_and_normalize() -> None:
    from torchvision import transforms as T

    from asvp.data import IMAGENET_MEAN, IMAGENET_STD
    from asvp.data.transforms import ToNormalisedTensor

    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert torch.equal(ToNormalisedTensor()(img), reference)


@pytest.mark.parametrize("resolution", [32, 96])
def test_train_transform_is_random_but_reproducible_under_seed(resolution: int) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    transform = build_transform(True, resolution)
    torch.manual_seed(3)
    first = [transform(img) for _ in range(4)]
    torch.manual_seed(3)
    again = [transform(img) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[0].shape == (3, resolution, resolution)
    assert any(not torch.equal(first[0], x) for x in first[1:])


def test_image_dataset_items_and_batches(fake_fashion_mnist: Path) -> None:
    src = open_source("fashion_mnist", fake_fashion_mnist, "train")
    indices = np.array([7, 3, 12])
    ds = ImageDataset(src, indices, build_transform(False, 32))
    assert len(ds) == 3
    image, label, position = ds[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and int(label) == src.labels[3] and int(position) == 1
    images, labels, positions = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == src.labels[indices].tolist()
    assert positions.dtype == torch.int64 and positions.tolist() == [0, 1, 2]


def test_image_dataset_rejects_indices_outside_the_source(fake_fashion_mnist: Path) -> None:
    src = open_source("fashion_mnist", fake_fashion_mnist, "test")
    with pytest.raises(DataError, match="index 20 .* 0..19"):
        ImageDataset(src, np.array([0, 20]), build_transform(False, 32))
    with pytest.raises(DataError, match="1-D integer"):
        ImageDataset(src, np.array([0.5]), build_transform(False, 32))


def test_bad_images_skip_drops_them_from_the_pool_and_lists_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import pandas as pd

    from asvp.config import validate_config
    from asvp.steps.features import define_pool

    _write_tree(tmp_path / "data", {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    bad = tmp_path / "data" / "train" / "cat" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    config = validate_config({"experiment": "unit", "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"),
                                                             "bad_images": "skip"}})
    out = tmp_path / "out"
    define_pool(config, out / "pool.csv", out / "test.csv", out / "dataset.json")
    pool = pd.read_csv(out / "pool.csv")
    assert "train/cat/1.jpg" not in set(pool["sample_id"]) and len(pool) == 4
    info = json.loads((out / "dataset.json").read_text())
    assert info["pool_size"] == 4 and [s["sample_id"] for s in info["skipped_images"]] == ["train/cat/1.jpg"]
    assert str(bad) in info["skipped_images"][0]["error"]
    printed = capsys.readouterr().out
    assert "skipped 1 images that do not decode" in printed and "classes, in label order: 0=cat, 1=dog" in printed
    config["data"]["bad_images"] = "stop"  # the default: the pool keeps it, extraction stops naming the file
    define_pool(config, out / "pool.csv", out / "test.csv", out / "dataset.json")
    assert len(pd.read_csv(out / "pool.csv")) == 5
