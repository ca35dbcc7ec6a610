"""Shared fixtures: a tiny fake Fashion-MNIST (IDX files) and the real one when installed."""

from __future__ import annotations

import collections
import gzip
from pathlib import Path

import numpy as np
import pytest

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)
    return path


@pytest.fixture
def fake_fashion_mnist(tmp_path: Path) -> Path:
    """A Fashion-MNIST folder with 40 train / 20 test random 28x28 images, all 10 classes present."""
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


@pytest.fixture(scope="session")
def real_fashion_mnist() -> Path:
    """The Debian-installed Fashion-MNIST folder; skips (with the install command) when absent."""
    if not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return REAL_FASHION_MNIST


@pytest.fixture
def torch_single_thread():
    """Run torch on one thread for the duration of a test, then restore the previous setting.

    The unit tests use tensors of a few dozen rows: there OpenMP's thread synchronisation costs
    far more than the arithmetic (a 16x8 BatchNorm takes ~25 ms on two threads of a busy machine
    vs ~0.06 ms on one), and one thread also keeps float reductions in a fixed order.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def default_weights() -> Path:
    """The packaged ImageNet MobileNetV2 weights; skips (with the install command) when absent."""
    from asvp.checkpoints import default_checkpoint
    from asvp.errors import CheckpointError

    try:
        return default_checkpoint()
    except CheckpointError as exc:
        pytest.skip(str(exc))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most end-to-end tests first. `make test` hands whole files to the
    pytest-xdist workers in this order (--dist loadfile --no-loadscope-reorder), so the minute-long
    workflow and cluster runs start at once and the many quick unit tests fill in around them,
    instead of a long run starting last and running alone."""
    def end_to_end(item: pytest.Item) -> bool:
        return any(item.get_closest_marker(mark) for mark in ("workflow", "slurm"))

    per_file: collections.Counter[Path] = collections.Counter(item.path for item in items if end_to_end(item))
    items.sort(key=lambda item: -per_file[item.path])
