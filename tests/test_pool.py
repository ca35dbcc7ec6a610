"""Tests for asvp.pool and the query steps (asvp.steps.select): the files that pass between rounds, and their validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from asvp.atomic import atomic_path, write_csv, write_json
from asvp.errors import ConfigError, DataError
from asvp.pool import (
    LABELLED_COLUMNS,
    read_labelled,
    read_selected,
    read_split_table,
    split_table,
    subset_indices,
    unlabelled_indices,
)
from asvp.steps.select import Query, label_round
from asvp.steps.select import select_initial as select_initial_step

POOL_SIZE = 40
NUM_CLASSES = 10


def select_initial(pool_csv: Path, budget: int, seed: int, out: Path) -> None:
    """Round 0's seeded random draw into `out` (its scores beside it)."""
    select_initial_step(Query("margin", budget, seed, 0, str(pool_csv), None, str(out), str(out.with_suffix(".npy"))))



@pytest.fixture
def pool_csv(tmp_path: Path) -> Path:
    """A 40-image pool; labels are (index * 3) % 10 so the label of any id is easy to predict."""
    source = np.arange(100, 100 + POOL_SIZE)
    labels = (np.arange(POOL_SIZE) * 3) % NUM_CLASSES
    path = tmp_path / "pool.csv"
    write_csv(path, split_table(source, [f"img{i:03d}" for i in source], labels))
    return path


def _write_labelled(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=LABELLED_COLUMNS).to_csv(path, index=False)
    return path


def _selected_ids(path: Path) -> list[int]:
    return read_selected(path, POOL_SIZE)["pool_index"].tolist()


# --- subsets and round 0 -------------------------------------------------------------------------


def test_subset_indices_are_seeded_sorted_and_unique() -> None:
    first = subset_indices(1000, 100, seed=3)
    assert first.dtype == np.int64 and len(first) == 100
    assert np.array_equal(first, np.sort(first))
    assert len(np.unique(first)) == 100
    assert first.min() >= 0 and first.max() < 1000
    assert np.array_equal(first, subset_indices(1000, 100, seed=3))
    assert not np.array_equal(first, subset_indices(1000, 100, seed=4))


@pytest.mark.parametrize("subset", [None, 50, 80])
def test_subset_of_none_or_at_least_the_source_is_everything(subset: int | None) -> None:
    assert np.array_equal(subset_indices(50, subset, seed=0), np.arange(50))


def test_select_initial_writes_budget_unique_ids_reproducibly(pool_csv: Path, tmp_path: Path) -> None:
    select_initial(pool_csv, 12, seed=0, out=tmp_path / "a.csv")
    select_initial(pool_csv, 12, seed=0, out=tmp_path / "b.csv")
    select_initial(pool_csv, 12, seed=1, out=tmp_path / "c.csv")
    first = _selected_ids(tmp_path / "a.csv")
    assert len(first) == 12 == len(set(first))
    assert all(0 <= i < POOL_SIZE for i in first)
    assert first == _selected_ids(tmp_path / "b.csv")
    assert first != _selected_ids(tmp_path / "c.csv")
    frame = pd.read_csv(tmp_path / "a.csv")
    assert frame["rank"].tolist() == list(range(12))
    assert frame["sample_id"].tolist() == [f"img{100 + i:03d}" for i in first]


def test_select_initial_with_a_budget_above_the_pool_raises(pool_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="41"):
        select_initial(pool_csv, POOL_SIZE + 1, seed=0, out=tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


# --- the oracle ----------------------------------------------------------------------------------


def test_label_round_appends_pool_labels_with_the_round_number(pool_csv: Path, tmp_path: Path) -> None:
    select_initial(pool_csv, 5, seed=0, out=tmp_path / "sel0.csv")
    label_round(tmp_path / "sel0.csv", pool_csv, None, 0, tmp_path / "lab0.csv")
    round0 = read_labelled(tmp_path / "lab0.csv", POOL_SIZE, NUM_CLASSES)
    assert round0["round"].tolist() == [0] * 5
    assert round0["label"].tolist() == [(i * 3) % NUM_CLASSES for i in round0["pool_index"]]

    remaining = unlabelled_indices(POOL_SIZE, round0)
    assert len(remaining) == POOL_SIZE - 5 and not np.isin(round0["pool_index"], remaining).any()
    pd.DataFrame(
        {"pool_index": remaining[:3], "sample_id": [f"img{100 + i:03d}" for i in remaining[:3]], "score": 0.5, "rank": range(3)}
    ).to_csv(tmp_path / "sel1.csv", index=False)
    label_round(tmp_path / "sel1.csv", pool_csv, tmp_path / "lab0.csv", 1, tmp_path / "lab1.csv")
    round1 = read_labelled(tmp_path / "lab1.csv", POOL_SIZE, NUM_CLASSES)
    assert round1["pool_index"].tolist() == round0["pool_index"].tolist() + remaining[:3].tolist()
    assert round1["round"].tolist() == [0] * 5 + [1] * 3
    assert round1["sample_id"].tolist()[-1] == f"img{100 + remaining[2]:03d}"
    assert round1["label"].tolist()[-3:] == [(i * 3) % NUM_CLASSES for i in remaining[:3]]


def test_label_round_refuses_to_relabel_an_already_labelled_id(pool_csv: Path, tmp_path: Path) -> None:
    _write_labelled(tmp_path / "lab0.csv", [(4, "img104", 2, 0), (7, "img107", 1, 0)])
    pd.DataFrame({"pool_index": [9, 7], "sample_id": ["img109", "img107"], "score": [1.0, 0.9], "rank": [0, 1]}).to_csv(
        tmp_path / "sel1.csv", index=False
    )
    with pytest.raises(DataError, match=r"already-labelled pool ids \[7\]"):
        label_round(tmp_path / "sel1.csv", pool_csv, tmp_path / "lab0.csv", 1, tmp_path / "lab1.csv")
    assert not (tmp_path / "lab1.csv").exists()


# --- malformed label files -----------------------------------------------------------------------


def test_missing_label_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="round_09.csv does not exist"):
        read_labelled(tmp_path / "round_09.csv", POOL_SIZE)


def test_label_file_missing_a_column_names_the_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "round_03.csv"
    pd.DataFrame({"pool_index": [1], "sample_id": ["a"], "label": [2]}).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        read_labelled(path, POOL_SIZE)
    assert str(path) in str(info.value) and "'round'" in str(info.value)


@pytest.mark.parametrize("bad_id", ["abc", "2.5", ""])
def test_label_file_with_a_non_integer_id_names_the_file_and_column(tmp_path: Path, bad_id: str) -> None:
    path = tmp_path / "round_03.csv"
    path.write_text(f"pool_index,sample_id,label,round\n1,a,2,0\n{bad_id},b,3,0\n")
    with pytest.raises(DataError) as info:
        read_labelled(path, POOL_SIZE)
    assert str(path) in str(info.value) and "pool_index" in str(info.value) and "integer" in str(info.value)


@pytest.mark.parametrize("bad_id", [1234, -1, POOL_SIZE])
def test_label_file_with_an_id_outside_the_pool_says_the_pool_range(tmp_path: Path, bad_id: int) -> None:
    path = _write_labelled(tmp_path / "round_03.csv", [(1, "a", 2, 0), (bad_id, "b", 3, 0)])
    with pytest.raises(DataError) as info:
        read_labelled(path, POOL_SIZE)
    message = str(info.value)
    assert str(path) in message
    assert f"id {bad_id} is not in the pool (pool has 0..{POOL_SIZE - 1})" in message


def test_label_file_with_a_duplicate_id_names_it(tmp_path: Path) -> None:
    path = _write_labelled(tmp_path / "round_03.csv", [(1, "a", 2, 0), (6, "b", 3, 0), (1, "a", 2, 1)])
    with pytest.raises(DataError) as info:
        read_labelled(path, POOL_SIZE)
    assert str(path) in str(info.value) and "id 1 appears more than once" in str(info.value)


@pytest.mark.parametrize("bad_label", [10, -1])
def test_label_file_with_a_label_outside_the_classes_names_it(tmp_path: Path, bad_label: int) -> None:
    path = _write_labelled(tmp_path / "round_03.csv", [(1, "a", 2, 0), (6, "b", bad_label, 0)])
    with pytest.raises(DataError) as info:
        read_labelled(path, POOL_SIZE, NUM_CLASSES)
    assert str(path) in str(info.value) and f"label {bad_label} is outside 0..9" in str(info.value)
    assert len(read_labelled(path, POOL_SIZE)) == 2  # without a class count the labels are not checked


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b'pool_index,sample_id,label,round\n1,"a,2,0\n', b"\xff\xfe\x00garbage\xc3\x28\n\x00\x01"],
    ids=["empty", "blank", "unterminated-quote", "binary"],
)
def test_empty_or_unparseable_label_file_names_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "round_03.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match="round_03.csv"):
        read_labelled(path, POOL_SIZE)


def test_selection_file_is_validated_like_a_label_file(tmp_path: Path) -> None:
    path = tmp_path / "selected.csv"
    pd.DataFrame({"pool_index": [3, 3], "sample_id": ["a", "a"], "score": [0.1, 0.2], "rank": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="selected.csv: id 3 appears more than once"):
        read_selected(path, POOL_SIZE)


def test_split_table_with_out_of_order_index_raises(tmp_path: Path) -> None:
    path = tmp_path / "pool.csv"
    frame = split_table(np.arange(3), ["a", "b", "c"], np.array([0, 1, 2]))
    frame["index"] = [0, 2, 1]
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="0..N-1 in order"):
        read_split_table(path)


def test_sample_ids_that_look_numeric_keep_their_text(tmp_path: Path) -> None:
    path = tmp_path / "pool.csv"
    write_csv(path, split_table(np.arange(2), ["007", "010"], np.array([0, 1])))
    assert read_split_table(path)["sample_id"].tolist() == ["007", "010"]


# --- atomic writes -------------------------------------------------------------------------------


def test_failure_inside_atomic_path_leaves_no_file_and_no_temp_file(tmp_path: Path) -> None:
    final = tmp_path / "out" / "labelled.csv"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(final) as tmp:
            tmp.write_text("pool_index\n1\n")
            assert tmp.parent == final.parent and tmp.exists()
            raise RuntimeError("killed")
    assert not final.exists()
    assert os.listdir(final.parent) == []


def test_failed_write_keeps_the_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "labelled.csv"
    write_csv(final, pd.DataFrame({"a": [1]}))

    def half_write(self: pd.DataFrame, path: Path, **_: object) -> None:
        Path(path).write_text("a\n")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_csv(final, pd.DataFrame({"a": [2, 3]}))
    monkeypatch.undo()
    assert pd.read_csv(final)["a"].tolist() == [1]
    assert os.listdir(tmp_path) == ["labelled.csv"]


def test_successful_atomic_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"accuracy": 0.5})
    assert os.listdir(tmp_path) == ["m.json"]
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"accuracy": float("nan")})  # NaN is refused, nothing written
    assert os.listdir(tmp_path) == ["m.json"]
