"""Tests for asvp.extraction and asvp.features: resumable, atomic feature extraction into HDF5, and its readers."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp.errors import DataError
from asvp.extraction import SplitInput, extract_features
from asvp.features import load_rows, open_features, partial_path, read_attrs, read_rows

pytestmark = pytest.mark.usefixtures("torch_single_thread")

POOL_ROWS, TEST_ROWS, DIM = 20, 6, 5
BATCH, CHUNK = 4, 8  # pool: chunks of rows 0-7, 8-15, 16-19; forward calls 1-2, 3-4, 5; test: 6-7
ATTRS = {"backbone": "tiny", "checkpoint": None, "resolution": 4}


class Interrupted(RuntimeError):
    """Stands in for a killed job."""


class TinyImages(Dataset):
    """Deterministic 3x4x4 'images' yielding (image, label, position), like the real datasets."""

    def __init__(self, n: int, offset: int) -> None:
        generator = torch.Generator().manual_seed(offset)
        self.images = torch.randn(n, 3, 4, 4, generator=generator)
        self.labels = (torch.arange(n) + offset) % 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        return self.images[position], int(self.labels[position]), position


class CountingBackbone(nn.Module):
    """A linear 'backbone' with `feature_dim`, counting forward calls, optionally failing on one."""

    feature_dim = DIM

    def __init__(self, fail_on_call: int | None = None, nan: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(48, DIM)
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.nan = nan

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise Interrupted(f"killed during forward call {self.calls}")
        out = self.linear(images.reshape(len(images), -1))
        return out * float("nan") if self.nan else out


def _splits() -> dict[str, SplitInput]:
    splits = {}
    for name, n, offset in (("pool", POOL_ROWS, 0), ("test", TEST_ROWS, 1)):
        dataset = TinyImages(n, offset)
        splits[name] = SplitInput(dataset, dataset.labels.numpy().astype(np.int64), [f"{name}{i}" for i in range(n)])
    return splits


def _extract(model: nn.Module, out: Path, attrs: dict | None = None, dtype: str = "float32") -> None:
    extract_features(model, _splits(), out, attrs=ATTRS if attrs is None else attrs, dtype=dtype, batch_size=BATCH, chunk_rows=CHUNK)


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {f"{s}/{k}": handle[s][k][()] for s in ("pool", "test") for k in ("features", "labels", "sample_ids")}


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """An uninterrupted extraction to compare against."""
    out = tmp_path / "reference" / "features.h5"
    model = CountingBackbone()
    _extract(model, out)
    assert model.calls == 7
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_extraction_writes_both_splits_with_labels_ids_and_attrs(tmp_path: Path, dtype: str) -> None:
    out = tmp_path / "features.h5"
    _extract(CountingBackbone(), out, dtype=dtype)
    splits = _splits()
    model = CountingBackbone()
    with h5py.File(out, "r") as handle:
        assert handle.attrs["complete"]
        assert handle.attrs["feature_dim"] == DIM
        assert handle.attrs["dtype"] == dtype
        assert handle.attrs["backbone"] == "tiny" and handle.attrs["resolution"] == 4
        assert handle.attrs["checkpoint"] == ""  # None is stored as an empty string
        for name, n in (("pool", POOL_ROWS), ("test", TEST_ROWS)):
            group = handle[name]
            assert group["features"].shape == (n, DIM)
            assert group["features"].dtype == np.dtype(dtype)
            assert group.attrs["rows_done"] == n
            np.testing.assert_array_equal(group["labels"][()], splits[name].labels)
            assert [s.decode() for s in group["sample_ids"][()]] == splits[name].sample_ids
            with torch.no_grad():
                expected = model(splits[name].dataset.images).numpy().astype(dtype)
            np.testing.assert_allclose(group["features"][()], expected, rtol=1e-3 if dtype == "float16" else 1e-6, atol=1e-6)
    assert not partial_path(out).exists()
    assert read_attrs(out)["feature_dim"] == DIM


def test_a_killed_extraction_leaves_only_a_partial_file_with_the_finished_chunk(tmp_path: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted):
        _extract(CountingBackbone(fail_on_call=3), out)  # call 3 = first batch of the second chunk
    assert not out.exists()
    assert partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as handle:
        assert handle["pool"].attrs["rows_done"] == CHUNK
        assert "test" not in handle
        assert not handle.attrs.get("complete", False)


def test_rerun_resumes_after_the_last_chunk_and_matches_an_uninterrupted_run(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted):
        _extract(CountingBackbone(fail_on_call=3), out)
    resumed = CountingBackbone()
    _extract(resumed, out)
    # 12 remaining pool rows (3 batches) + 6 test rows (2 batches): the first chunk is not recomputed
    assert resumed.calls == 5
    assert out.exists() and not partial_path(out).exists()
    got, want = _read(out), _read(reference)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_resume_also_works_when_killed_in_the_second_split(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted):
        _extract(CountingBackbone(fail_on_call=7), out)  # second batch of the test split
    resumed = CountingBackbone()
    _extract(resumed, out)
    assert resumed.calls == 2  # the test split restarts at its only chunk; the pool is done
    got, want = _read(out), _read(reference)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_partial_file_written_with_other_settings_is_discarded(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted):
        _extract(CountingBackbone(fail_on_call=3), out, attrs={**ATTRS, "backbone": "other"})
    fresh = CountingBackbone()
    _extract(fresh, out)
    assert fresh.calls == 7  # everything recomputed
    assert read_attrs(out)["backbone"] == "tiny"
    np.testing.assert_array_equal(_read(out)["pool/features"], _read(reference)["pool/features"])


def test_a_torn_partial_file_is_discarded(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "features.h5"
    partial_path(out).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    fresh = CountingBackbone()
    _extract(fresh, out)
    assert fresh.calls == 7
    np.testing.assert_array_equal(_read(out)["test/features"], _read(reference)["test/features"])


def test_nan_features_raise_and_leave_no_final_file(tmp_path: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(DataError, match="NaN/Inf features for pool rows 0..7"):
        _extract(CountingBackbone(nan=True), out)
    assert not out.exists()


def test_load_rows_returns_rows_in_the_requested_order(reference: Path) -> None:
    everything = _read(reference)
    rows = np.array([17, 2, 9, 0, 19, 5])
    features, labels = load_rows(reference, "pool", rows)
    assert features.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(features, everything["pool/features"][rows])
    np.testing.assert_array_equal(labels, everything["pool/labels"][rows])
    all_features, all_labels = load_rows(reference, "test")
    np.testing.assert_array_equal(all_features, everything["test/features"])
    np.testing.assert_array_equal(all_labels, everything["test/labels"])


def test_read_rows_returns_any_rows_in_the_callers_order_from_memory_memmap_and_hdf5(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float16)
    ids = np.array([f"id{i}" for i in range(40)], dtype=object)
    np.save(tmp_path / "x.npy", x)
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["x"] = x
        handle.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    cases = [np.arange(3, 9), np.array([0, 2, 1, 3]), np.array([1, 2, 4, 7]), np.array([39, 0]), np.array([5, 1]),
             np.array([7]), np.array([], dtype=np.int64)]  # consecutive; unordered; dense; sparse; one; none
    with h5py.File(tmp_path / "x.h5", "r") as handle:
        for array in (x, np.load(tmp_path / "x.npy", mmap_mode="r"), handle["x"]):
            for rows in cases:
                got = read_rows(array, rows)
                assert got.dtype == np.float16 and got.shape == (len(rows), 3)
                np.testing.assert_array_equal(got, x[rows])
            np.testing.assert_array_equal(read_rows(array, slice(4, 11)), x[4:11])
        for rows in cases[:5]:
            assert [v.decode() for v in read_rows(handle["ids"], rows)] == ids[rows].tolist()


def test_load_rows_refuses_nan_rows(reference: Path) -> None:
    with h5py.File(reference, "a") as handle:
        handle["pool"]["features"][4] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        load_rows(reference, "pool", np.array([4, 1]))


def test_open_features_on_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.h5 does not exist"):
        open_features(tmp_path / "nothing.h5")


def test_open_features_on_garbage_names_it(tmp_path: Path) -> None:
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(DataError, match="garbage.h5 is not a readable HDF5 file"):
        open_features(path)


def test_open_features_on_an_incomplete_file_names_it(tmp_path: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted):
        _extract(CountingBackbone(fail_on_call=3), out)
    incomplete = tmp_path / "renamed.h5"
    partial_path(out).rename(incomplete)
    with pytest.raises(DataError, match="renamed.h5 is incomplete"):
        open_features(incomplete)
    with pytest.raises(DataError, match="renamed.h5 is incomplete"):
        load_rows(incomplete, "pool", np.array([0]))


class BatchedTinyImages(TinyImages):
    """TinyImages with the in-memory datasets' `batch(positions)`, which extraction prefers."""

    def __init__(self, n: int, offset: int) -> None:
        super().__init__(n, offset)
        self.batch_calls = 0

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.batch_calls += 1
        pos = torch.as_tensor(positions, dtype=torch.int64)
        return self.images[pos], self.labels[pos], pos


def _batched_splits() -> dict[str, SplitInput]:
    return {name: SplitInput(BatchedTinyImages(split.dataset.images.shape[0], offset), split.labels, split.sample_ids)
            for (name, split), offset in zip(_splits().items(), (0, 1))}


def test_datasets_with_batch_are_read_whole_batches_and_give_the_same_file(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "features.h5"
    splits = _batched_splits()
    extract_features(CountingBackbone(), splits, out, attrs=ATTRS, batch_size=BATCH, chunk_rows=CHUNK)
    assert [s.dataset.batch_calls for s in splits.values()] == [5, 2]
    got, want = _read(out), _read(reference)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_batch_path_resumes_after_the_last_chunk(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted):
        extract_features(CountingBackbone(fail_on_call=3), _batched_splits(), out, attrs=ATTRS, batch_size=BATCH, chunk_rows=CHUNK)
    resumed = CountingBackbone()
    extract_features(resumed, _batched_splits(), out, attrs=ATTRS, batch_size=BATCH, chunk_rows=CHUNK)
    assert resumed.calls == 5
    np.testing.assert_array_equal(_read(out)["pool/features"], _read(reference)["pool/features"])


def test_one_data_loader_per_split_not_one_per_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asvp.extraction

    built = []

    def counting_loader(*args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(kwargs)
        return torch.utils.data.DataLoader(*args, **kwargs)

    monkeypatch.setattr(asvp.extraction, "DataLoader", counting_loader)
    _extract(CountingBackbone(), tmp_path / "features.h5")  # pool: 3 chunks, test: 1
    assert len(built) == 2


def test_a_features_file_of_another_pool_is_refused_naming_the_row_and_the_fix(reference: Path) -> None:
    from asvp.features import check_sample_ids

    with open_features(reference) as handle:
        check_sample_ids(handle, np.arange(POOL_ROWS), [f"pool{i}" for i in range(POOL_ROWS)], "pool.csv")
        check_sample_ids(handle, np.array([9, 2, 5]), ["pool9", "pool2", "pool5"], "labelled.csv")
        with pytest.raises(DataError, match=r"made for another pool: pool row 2 is 'pool2' there but 'other2' in labelled.csv "
                                            r"\(1 of 3 rows differ\). Delete .* and rerun"):
            check_sample_ids(handle, np.array([9, 2, 5]), ["pool9", "other2", "pool5"], "labelled.csv")
        with pytest.raises(DataError, match=rf"holds {POOL_ROWS} pool rows but pool.csv refers to row {POOL_ROWS}"):
            check_sample_ids(handle, np.arange(POOL_ROWS + 1), [f"pool{i}" for i in range(POOL_ROWS + 1)], "pool.csv")


def test_a_features_file_of_another_backbone_or_resolution_is_refused(reference: Path) -> None:
    from asvp.features import check_identity

    attrs = read_attrs(reference)
    with open_features(reference) as handle:
        check_identity(handle, {"backbone": attrs["backbone"], "resolution": attrs["resolution"]})
        with pytest.raises(DataError, match=r"extracted with resolution '?4'?, but the config has data.resolution 224\. "
                                            r"Delete .* and rerun to extract it again"):
            check_identity(handle, {"backbone": attrs["backbone"], "resolution": 224})
