"""The human oracle's request files and the validation of a person's answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from asvp.data.sources import ArraySource
from asvp.errors import DataError
from asvp.oracle import answered, answers_path, read_answers, read_request, write_request
from asvp.steps.select import label_round

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress, long"]


@pytest.fixture
def request_files(tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A 12-image array dataset, its pool table, a 4-image selection and its to_label.csv."""
    rng = np.random.default_rng(0)
    source = ArraySource("toy", "train", rng.integers(0, 255, (12, 8, 8), dtype=np.uint8), np.arange(12) % 4, CLASSES)
    pool = pd.DataFrame({"index": np.arange(12), "source_index": np.arange(12),
                         "sample_id": [source.sample_id(i) for i in range(12)], "label": np.arange(12) % 4})
    selected = pd.DataFrame({"pool_index": [7, 2, 9, 4], "sample_id": pool["sample_id"][[7, 2, 9, 4]].to_numpy(),
                             "score": [0.1, 0.2, 0.3, 0.4], "rank": [0, 1, 2, 3]})
    round_dir = tmp_path / "run" / "round001"
    write_request(selected, pool, source, CLASSES, np.array([3, 2, 1, 0]), round_dir / "to_label.csv",
                  round_dir / "to_label.png")
    return round_dir, pool, selected


def _answers(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_request_lists_images_with_hints_and_a_contact_sheet(request_files: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    round_dir, _, _ = request_files
    request = read_request(round_dir / "to_label.csv")
    assert request["pool_index"].tolist() == [7, 2, 9, 4]
    assert request["predicted_class"].tolist() == ["Dress, long", "Pullover", "Trouser", "T-shirt/top"]
    for path in request["image_path"]:
        with Image.open(path) as image:
            assert image.size == (8, 8)
    with Image.open(round_dir / "to_label.png") as sheet:
        assert sheet.width >= 4 * 90
    assert answered(round_dir.parent, 1) is None
    assert answers_path(round_dir.parent, 1) == round_dir.parent / "labels" / "round001.csv"


def test_valid_csv_answers_give_labels_in_request_order(request_files: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    round_dir, _, _ = request_files
    request = read_request(round_dir / "to_label.csv")
    text = ("\ufeffSample_ID , Class\n"  # a spreadsheet's BOM and spaces are fine
            "train/000002,Pullover\n\ntrain/000007,\"Dress, long\"\ntrain/000004, T-shirt/top\ntrain/000009,Trouser\n")
    answers = _answers(round_dir.parent / "labels" / "round001.csv", text)
    assert answered(round_dir.parent, 1) == answers
    assert read_answers(answers, request, CLASSES).tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize(("text", "message"), [
    (b"", r"round001.csv is empty: write a header line `sample_id,class`"),
    (b"sample_id,class\n", r"has a header but no answers"),
    ("sample_id,class\ntrain/000002,Pullover\ntrain/000007,Caf\xe9\n".encode("latin-1"),
     r"line 3: not UTF-8 text .* save the file as UTF-8"),
    (b"sample_id;class\ntrain/000002;Pullover\n", r"line 1: the header 'sample_id;class' uses ';' between columns"),
    (b"sample_id\tclass\n", r"line 1: .* uses '\\t' between columns"),
    (b"id,class\ntrain/000002,Pullover\n", r"line 1: missing column\(s\) \['sample_id'\]"),
    (b"sample_id,class\ntrain/000002,Pullover\ntrain/000099,Trouser\n", r"line 3: sample id 'train/000099' was not requested"),
    (b"sample_id,class\ntrain/000002,Pullover\ntrain/000002,Trouser\n", r"line 3: sample id 'train/000002' is answered twice \(also on line 2\)"),
    (b"sample_id,class\ntrain/000002,pullover\n", r"line 2: unknown class 'pullover'; did you mean 'Pullover'\?"),
    (b"sample_id,class\ntrain/000002,Dress, long\n", r"line 2: 3 fields where the header has 2; quote a class name"),
    (b"sample_id,label\ntrain/000002,Pullover\ntrain/000007,Trouser\n", r"2 requested image\(s\) have no answer, e.g. train/000009, train/000004"),
])
def test_bad_answers_name_the_file_line_and_fix(request_files: tuple[Path, pd.DataFrame, pd.DataFrame], text: bytes,
                                                message: str) -> None:
    round_dir, _, _ = request_files
    answers = _answers(round_dir.parent / "labels" / "round001.csv", text)
    with pytest.raises(DataError, match=message):
        read_answers(answers, read_request(round_dir / "to_label.csv"), CLASSES)


def test_answers_as_a_folder_per_class(request_files: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    round_dir, _, _ = request_files
    request = read_request(round_dir / "to_label.csv")
    folder = round_dir.parent / "labels" / "round001"
    for path, name in zip(request["image_path"], ["Dress, long", "Pullover", "Trouser", "T-shirt-top"]):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / Path(path).name).symlink_to(path)
    with pytest.raises(DataError, match=r"unknown class 'T-shirt-top'; did you mean 'T-shirt_top'"):
        read_answers(folder, request, CLASSES)
    (folder / "T-shirt-top").rename(folder / "T-shirt_top")  # '/' is '_' in a folder name
    assert read_answers(folder, request, CLASSES).tolist() == [3, 2, 1, 0]
    (folder / "Trouser" / "stray.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"stray.png: no image of to_label.csv has this file name"):
        read_answers(folder, request, CLASSES)


def test_label_round_writes_a_persons_labels_with_class_names_and_nothing_when_invalid(
    request_files: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    round_dir, pool, selected = request_files
    pool_csv, selected_csv = round_dir / "pool.csv", round_dir / "selected.csv"
    pool.to_csv(pool_csv, index=False)
    selected.to_csv(selected_csv, index=False)
    answers = _answers(round_dir.parent / "labels" / "round001.csv",
                       "sample_id,class\ntrain/000002,Trouser\ntrain/000007,Trouser\ntrain/000004,Trouser\n")
    out = round_dir / "labelled.csv"
    with pytest.raises(DataError, match="have no answer"):
        label_round(selected_csv, pool_csv, None, 1, out, CLASSES, answers, round_dir / "to_label.csv")
    assert not out.exists() and not list(round_dir.glob(".labelled.csv*"))
    answers.write_text(answers.read_text() + "train/000009,Trouser\n")
    label_round(selected_csv, pool_csv, None, 1, out, CLASSES, answers, round_dir / "to_label.csv")
    labelled = pd.read_csv(out)
    assert labelled["pool_index"].tolist() == [7, 2, 9, 4]
    assert labelled["label"].tolist() == [1, 1, 1, 1]  # the person's answers, not the dataset's labels
    assert labelled["class_name"].tolist() == ["Trouser"] * 4
