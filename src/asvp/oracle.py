"""The human oracle: ask people for the picked images' classes, and read their answers safely.

With `oracle: human` a round stops after its selection: `request_labels` writes
`round{r}/to_label.csv` (pool index, sample id, image path, the selection model's predicted
class as a hint) and `round{r}/to_label.png` (a contact sheet of the images with their ids),
and the workflow ends cleanly. A person answers in `labels/round{r}.csv` under the run folder
(columns `sample_id,class`, class *names*), as Label Studio's JSON export `labels/round{r}.json`
(asvp.label_studio: the request also writes its import files), or as a folder
`labels/round{r}/<class name>/` holding the images (copies or symlinks, matched by file name; a
'/' in a class name is '_' in its folder name). The next `snakemake` call sees the answers and
continues from that round.

Answers are validated completely before anything of the round is written: an empty file, a
wrong encoding or delimiter, a missing column, an unknown id or class name, a duplicate or a
missing image each stop with one message naming the file, the line and the fix. A class name is
matched exactly, after trimming spaces; a near miss is suggested.

Images of array datasets (Fashion-MNIST, CIFAR) have no file: they are written as PNG files
next to to_label.csv, so the folder answer works the same for every dataset.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from asvp.atomic import atomic_path, write_csv
from asvp.errors import DataError

REQUEST_COLUMNS = ["pool_index", "sample_id", "image_path", "predicted_class"]
ANSWER_COLUMNS = ("sample_id", "class")
SHEET_LIMIT = 400  # thumbnails on one contact sheet; to_label.csv always lists every image
THUMB = 96


def answers_path(run_dir: str | Path, round_index: int) -> Path:
    """Where a person puts round r's answers: a CSV file or a folder per class (the same stem)."""
    return Path(run_dir) / "labels" / f"round{round_index:03d}.csv"


def answers_folder(run_dir: str | Path, round_index: int) -> Path:
    return Path(run_dir) / "labels" / f"round{round_index:03d}"


def export_path(run_dir: str | Path, round_index: int) -> Path:
    """Where Label Studio's JSON export of round r goes (dropped by a person or pulled live)."""
    return answers_path(run_dir, round_index).with_suffix(".json")


def answered(run_dir: str | Path, round_index: int) -> Path | None:
    """The answers of round r if a person has given them (CSV, Label Studio export, folder), else None."""
    for path in (answers_path(run_dir, round_index), export_path(run_dir, round_index),
                 answers_folder(run_dir, round_index)):
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            return path
    return None


def waiting_note(run_dir: str | Path, round_index: int, oracle: str) -> str:
    """What the end of a run tells a person whose answers for round r are still missing."""
    request = Path(run_dir) / f"round{round_index:03d}" / "to_label.csv"
    if oracle == "label_studio":
        return (f"asvp-flow: waiting for labels: round {round_index} of {run_dir} is in Label Studio; annotate its "
                "tasks there, then run the same command again (finished rounds are fetched).")
    return (f"asvp-flow: waiting for labels: {request} lists the images to label (to_label.png shows them); write "
            f"{answers_path(run_dir, round_index)} (sample_id,class), a folder per class beside it, or Label "
            f"Studio's JSON export as {export_path(run_dir, round_index)}, then run the same command again.")


def _image_name(sample_id: str) -> str:
    """A file name for an array image: the id with path separators made safe."""
    return sample_id.replace("/", "_").replace("\\", "_") + ".png"


def write_request(
    selected: pd.DataFrame,
    pool: pd.DataFrame,
    source: Any,
    classes: Sequence[str],
    predicted: np.ndarray | None,
    out_csv: str | Path,
    sheet_png: str | Path,
) -> pd.DataFrame:
    """Write to_label.csv, the images of array datasets beside it, and the contact sheet.

    source: the dataset split the pool comes from (asvp.data.sources); predicted: (k,) class
    indices the selection model predicts for the picked images, or None (random rounds).
    """
    out_csv = Path(out_csv)
    rows = selected["pool_index"].to_numpy(np.int64)
    source_rows = pool["source_index"].to_numpy(np.int64)[rows]
    sample_ids = pool["sample_id"].to_numpy()[rows]
    images_dir = out_csv.parent / "to_label"
    paths = []
    for source_index, sample_id in zip(source_rows, sample_ids):
        file_paths = getattr(source, "paths", None)
        if file_paths is not None:
            paths.append(str(Path(file_paths[int(source_index)]).resolve()))
            continue
        target = images_dir / _image_name(str(sample_id))
        if not target.exists():
            with atomic_path(target, suffix=".png") as tmp:
                source.load_image(int(source_index)).save(tmp, format="PNG")
        paths.append(str(target.resolve()))
    hints = [classes[int(c)] for c in predicted] if predicted is not None else [""] * len(rows)
    request = pd.DataFrame({"pool_index": rows, "sample_id": sample_ids, "image_path": paths, "predicted_class": hints})
    _contact_sheet(request, sheet_png)
    write_csv(out_csv, request)
    return request


def _contact_sheet(request: pd.DataFrame, out: str | Path) -> None:
    """A grid of thumbnails, each with its sample id (the first SHEET_LIMIT images)."""
    shown = request.head(SHEET_LIMIT)
    columns = max(1, min(10, len(shown)))
    lines = max(1, math.ceil(len(shown) / columns))
    label_height = 28
    sheet = Image.new("RGB", (columns * THUMB, lines * (THUMB + label_height) + (20 if len(request) > len(shown) else 0)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(shown.itertuples()):
        x, y = (k % columns) * THUMB, (k // columns) * (THUMB + label_height)
        with Image.open(row.image_path) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((THUMB - 4, THUMB - 4))
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + 2))
        draw.text((x + 2, y + THUMB), str(row.sample_id)[-16:], fill="black")
        draw.text((x + 2, y + THUMB + 12), f"#{row.pool_index}", fill="grey")
    if len(request) > len(shown):
        draw.text((4, sheet.height - 16), f"first {len(shown)} of {len(request)} images: see to_label.csv", fill="red")
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")


def read_request(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"sample_id": str, "predicted_class": str}, keep_default_na=False)
    missing = [c for c in REQUEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; delete it and rerun to write it again")
    return frame


def read_answers(path: str | Path, request: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """(k,) int64 class indices of the requested images in to_label.csv order, from a person's
    answers (a CSV file, a Label Studio JSON export or a folder per class); DataError naming the
    file, line and fix."""
    path = Path(path)
    if path.is_dir():
        return _match(path, _folder_answers(path, request), request, classes, folder_names=True)
    if path.suffix == ".json":
        from asvp.label_studio import export_answers, pushed_project

        return _match(path, export_answers(path, pushed_project(path)), request, classes)
    return _match(path, _csv_answers(path), request, classes)


def folder_name(class_name: str) -> str:
    """The folder a class's images go in: its name, with '/' (not allowed in a file name) as '_'."""
    return class_name.replace("/", "_")


def _csv_answers(path: Path) -> list[tuple[int, str, str]]:
    """(line number, sample_id, class name) per data row."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path} is empty: write a header line `sample_id,class` and one line per image of to_label.csv")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {raw[error.start]:#x}); save the file as UTF-8 "
                        "(in a spreadsheet: CSV UTF-8)") from None
    lines = text.splitlines()
    header = lines[0]
    if "," not in header:
        used = next((d for d in (";", "\t", "|") if d in header), None)
        what = f"uses {used!r} between columns" if used else "has no comma"
        raise DataError(f"{path}, line 1: the header {header!r} {what}; write comma-separated columns `sample_id,class`")
    reader = csv.reader(io.StringIO(text))
    names = [n.strip().lower() for n in next(reader)]
    if "label" in names and "class" not in names:
        names[names.index("label")] = "class"
    if "path" in names and "sample_id" not in names:  # a list of image files (data.initial_labels, data.test)
        names[names.index("path")] = "sample_id"
    missing = [c for c in ANSWER_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}, line 1: missing column(s) {missing} in the header {header!r}; the header must be "
                        "`sample_id,class`")
    at = {c: names.index(c) for c in ANSWER_COLUMNS}
    pairs = []
    for number, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue  # blank line
        if len(fields) != len(names):
            raise DataError(f"{path}, line {number}: {len(fields)} fields where the header has {len(names)}; "
                            "quote a class name that contains a comma (\"a, b\")")
        pairs.append((number, fields[at["sample_id"]].strip(), fields[at["class"]].strip()))
    if not pairs:
        raise DataError(f"{path} has a header but no answers: add one line per image of to_label.csv")
    return pairs


def _folder_answers(folder: Path, request: pd.DataFrame) -> list[tuple[int, str, str]]:
    """Answers given as <folder>/<class name>/<image file>: files matched by name to to_label.csv."""
    by_name: dict[str, str] = {}
    for sample_id, image_path in zip(request["sample_id"], request["image_path"]):
        name = Path(image_path).name
        if name in by_name:
            raise DataError(f"{folder}: two requested images share the file name {name!r}, so a folder answer cannot "
                            "tell them apart; answer this round in a CSV file instead")
        by_name[name] = sample_id
    pairs = []
    for class_dir in sorted(p for p in folder.iterdir()):
        if not class_dir.is_dir():
            raise DataError(f"{class_dir}: expected only class folders in {folder} (one per class name, holding "
                            "the images of that class); move the file into one")
        for image in sorted(class_dir.iterdir()):
            if image.name not in by_name:
                raise DataError(f"{image}: no image of to_label.csv has this file name; remove it (keep the names "
                                "of the files listed in to_label.csv)")
            pairs.append((0, by_name[image.name], class_dir.name))
    return pairs


def answer_rows(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, sample id, class name) of each row of a `sample_id,class` CSV file (`path`
    for sample_id and `label` for class are accepted), after the checks of a person's answers."""
    return _csv_answers(Path(path))


def _match(path: Path, pairs: list[tuple[int, str, str]], request: pd.DataFrame, classes: Sequence[str],
           folder_names: bool = False) -> np.ndarray:
    labels = match_classes(path, pairs, request["sample_id"].tolist(), classes, folder_names,
                           unknown_id="was not requested this round; use the ids of to_label.csv")
    if (labels < 0).any():
        missing = request["sample_id"].to_numpy()[labels < 0]
        raise DataError(f"{path}: {len(missing)} requested image(s) have no answer, e.g. {', '.join(map(str, missing[:5]))}; "
                        "answer every image of to_label.csv")
    return labels


def match_classes(path: Path, pairs: list[tuple[int, str, str]], sample_ids: Sequence[str], classes: Sequence[str],
                  folder_names: bool = False, unknown_id: str = "is not one of the images asked about") -> np.ndarray:
    """(len(sample_ids),) int64 class index answered for each id, -1 where none was: every
    answer names a known id once and a known class (a near miss is suggested), else DataError
    naming the file, the line and the fix."""
    where = (lambda n: f"{path}, line {n}") if not path.is_dir() else (lambda n: str(path))
    names = [folder_name(c) for c in classes] if folder_names else list(classes)
    index_of = {name: k for k, name in enumerate(names)}
    position = {sample_id: k for k, sample_id in enumerate(sample_ids)}
    labels = np.full(len(sample_ids), -1, dtype=np.int64)
    seen: dict[str, int] = {}
    for number, sample_id, name in pairs:
        if sample_id not in position:
            raise DataError(f"{where(number)}: sample id {sample_id!r} {unknown_id}")
        if sample_id in seen:
            first = f"line {seen[sample_id]}" if number else "another class folder"
            raise DataError(f"{where(number)}: sample id {sample_id!r} is answered twice (also on {first}); keep one")
        seen[sample_id] = number
        if name not in index_of:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"{where(number)}: unknown class {name!r}; {hint}use one of: {', '.join(names)}")
        labels[position[sample_id]] = index_of[name]
    return labels
