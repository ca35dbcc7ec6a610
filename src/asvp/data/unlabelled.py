"""Your own images as the pool: a folder (or a list file) of unlabelled images and the class names.

`data.dataset: unlabelled` reads no labels: the pool's `label` column is NO_LABEL (-1) and people
name each picked image's class (`oracle: human`). The rest of the workflow sees an ordinary
FileSource, so extraction, selection and fine-tuning need no special case.

Decisions worth knowing:
* A sample's id is its path relative to data.root (POSIX), so the same file name in two
  sub-folders is two samples, and ids do not depend on the file system's listing order.
* The pool may grow: `pool_order` keeps every id of the previous pool at its pool index and
  appends the new ids in sorted order, so labels given earlier stay valid. An image that
  disappeared stops the run (labels and features would silently point at other images).
* Snakemake reruns define_pool only when its params change, so `listing_fingerprint` (a hash of
  the ids and file sizes, computed when the workflow is planned) is one of its params: a grown
  folder is noticed on the next `snakemake` call.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asvp.data.sources import FileSource
from asvp.errors import ConfigError, DataError

UNLABELLED = "unlabelled"
NO_LABEL = -1  # the pool's label column when nobody has named the image's class yet
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_classes(value: str | Sequence[str] | None) -> list[str]:
    """data.classes as a list: the list itself, or a text file's non-blank lines (trimmed)."""
    if value is None:
        raise ConfigError("data.dataset unlabelled needs data.classes: a list of class names, or a text file "
                          "with one name per line")
    where = "data.classes"
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.classes: file {path} does not exist; give a text file with one class name per "
                              "line, or the names as a list")
        where = f"data.classes file {path}"
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [str(name).strip() for name in value]
    if not names:
        raise ConfigError(f"{where} names no class; list at least two class names")
    if "" in names:
        raise ConfigError(f"{where}: class {names.index('') + 1} has an empty name; name it or remove it")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: class {name!r} is listed twice; keep one")
        seen.add(name)
    return names


def pool_root(data: Mapping[str, Any]) -> Path | None:
    """The folder sample ids are relative to: your images' root, else data.root (None: unset)."""
    if data.get("dataset") == UNLABELLED:
        return _root(data)
    return Path(data["root"]).expanduser() if data.get("root") else None


def _root(data: Mapping[str, Any]) -> Path:
    if data.get("images") and not data.get("root"):
        return Path(data["images"]).expanduser().resolve().parent
    if not data.get("root"):
        raise ConfigError("data.dataset unlabelled needs data.root, the folder holding your images (or data.images, "
                          "a file listing them)")
    root = Path(data["root"]).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} (data.root) does not exist; set data.root to the folder of your images")
    return root


def _sample_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # listed outside root: the absolute path is still a stable id
        return path.as_posix()


def _listed(list_file: Path, root: Path) -> list[str]:
    """Ids of the images a list file names (text: one path a line; CSV: a `path` column)."""
    if not list_file.is_file():
        raise DataError(f"image list {list_file} (data.images) does not exist; set data.images to a file listing "
                        "your images, or unset it to search data.root with data.glob")
    lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    header = next(csv.reader(lines[:1]), [])
    column = [field.strip().lower() for field in header].index("path") if "path" in map(str.lower, header) else None
    if column is None:  # a text file: one path a line
        entries = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    else:  # a CSV file: the path column, quoted names with commas allowed
        entries = [(number, fields[column].strip()) for number, fields in enumerate(csv.reader(lines), start=1)
                   if number > 1 and len(fields) > column and fields[column].strip()]
    if not entries:
        raise DataError(f"image list {list_file} (data.images) names no image; list one image path per line")
    first_line: dict[Path, int] = {}  # by the file itself: "a/../a/x.png" or a link to x.png is x.png again
    ids = []
    for number, entry in entries:
        path = Path(entry).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else root / path))
        if not path.is_file():
            raise DataError(f"image list {list_file}, line {number}: {path} does not exist; fix the path or remove "
                            "the line")
        if path.resolve() in first_line:
            raise DataError(f"image list {list_file}, line {number}: {entry!r} is the same file as line "
                            f"{first_line[path.resolve()]}; remove one of the two lines")
        first_line[path.resolve()] = number
        ids.append(_sample_id(path, Path(os.path.normpath(root))))
    return sorted(ids)


def list_pool(data: Mapping[str, Any]) -> tuple[Path, list[str]]:
    """(root, sorted ids) of the pool's images: data.images if set, else data.root searched with
    data.glob (image files only)."""
    root = _root(data)
    if data.get("images"):
        return root, _listed(Path(data["images"]).expanduser(), root)
    pattern = data.get("glob") or "**/*"
    try:
        ids = sorted(_sample_id(p, root) for p in root.glob(pattern) if p.is_file() and is_image(p))
    except (ValueError, NotImplementedError) as error:  # an absolute or malformed pattern
        raise ConfigError(f"data.glob {pattern!r}: {error}; give a pattern relative to data.root, e.g. **/*") from None
    if not ids:
        raise DataError(f"no image files under {root} match data.glob {pattern!r} (image files end in "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}); fix data.root or data.glob")
    return root, ids


def listing_fingerprint(data: Mapping[str, Any]) -> str:
    """A hash of the pool's ids and file sizes ("" for the other datasets): a param of define_pool,
    so that images added to the folder rerun it. Computed when the workflow is planned."""
    if data.get("dataset") != UNLABELLED:
        return ""
    root, ids = list_pool(data)
    digest = hashlib.sha256()
    for sample_id in ids:
        path = Path(sample_id) if Path(sample_id).is_absolute() else root / sample_id
        digest.update(f"{sample_id}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def pool_order(previous: Sequence[str], current: Sequence[str], where: str) -> list[str]:
    """The pool's ids in pool-index order: the previous pool's, then the new ones sorted.

    `where` names the previous pool's record for the message when images have disappeared."""
    present = set(current)
    gone = [sample_id for sample_id in previous if sample_id not in present]
    if gone:
        raise DataError(f"{len(gone)} image(s) of the pool ({where}) are no longer in the image folder, e.g. "
                        f"{', '.join(gone[:5])}; put them back (their labels and features refer to them), or start "
                        "a new experiment (another `experiment` name) for the new set of images")
    known = set(previous)
    return list(previous) + sorted(sample_id for sample_id in current if sample_id not in known)


def _test_source(data: Mapping[str, Any], classes: list[str]) -> FileSource:
    """data.test's labelled images: a folder per class, or a CSV of path,class; none: zero rows."""
    from asvp.oracle import answer_rows, folder_name, match_classes

    if not data.get("test"):
        return FileSource(UNLABELLED, "test", Path("."), [], np.zeros(0, dtype=np.int64), classes)
    test = Path(data["test"]).expanduser()
    if test.is_dir():
        folders = {folder_name(name): k for k, name in enumerate(classes)}
        paths, labels = [], []
        for folder in sorted(p for p in test.iterdir() if p.is_dir()):
            if folder.name not in folders:
                raise DataError(f"test folder {folder} (data.test) is not a class of data.classes; rename it to one of "
                                f"{', '.join(folders)} or remove it")
            found = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
            paths += found
            labels += [folders[folder.name]] * len(found)
        if not paths:
            raise DataError(f"test folder {test} (data.test) holds no images in class folders; put each test image in "
                            "the folder of its class, or unset data.test")
        return FileSource(UNLABELLED, "test", test, paths, labels, classes)
    if not test.is_file():
        raise DataError(f"test set {test} (data.test) does not exist; give a folder with one sub-folder per class or "
                        "a CSV file with columns path,class")
    rows = answer_rows(test)
    ids = [row[1] for row in rows]
    for number, sample_id, _ in rows:
        path = Path(sample_id).expanduser()
        if not (path if path.is_absolute() else test.parent / path).is_file():
            raise DataError(f"{test}, line {number}: image {sample_id} does not exist (paths are relative to the CSV "
                            "file's folder); fix the path or remove the line")
    labels = match_classes(test, rows, ids, classes)
    return FileSource(UNLABELLED, "test", test.parent, [test.parent / Path(i).expanduser() for i in ids], labels, classes)


def open_unlabelled(data: Mapping[str, Any], split: str) -> FileSource:
    """The pool ("train": every listed image, label NO_LABEL) or the test set of data.test."""
    classes = read_classes(data.get("classes"))
    if split == "test":
        return _test_source(data, classes)
    root, ids = list_pool(data)
    paths = [Path(i) if Path(i).is_absolute() else root / i for i in ids]
    return FileSource(UNLABELLED, "train", root, paths, np.full(len(ids), NO_LABEL, dtype=np.int64), classes)


def read_initial_labels(path: str | Path, pool_ids: Sequence[str], root: Path | None,
                        classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices in the file's order, their class indices) of data.initial_labels.

    Validated as a person's answers (asvp.oracle): empty file, header, unknown class with a near
    miss, an image named twice; and every image must be in the pool (`pool_ids`, in pool order)."""
    from asvp.oracle import answer_rows, match_classes

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"initial labels file {path} (data.initial_labels) does not exist; fix the path or unset it")
    rows = answer_rows(path)
    position = {sample_id: k for k, sample_id in enumerate(pool_ids)}
    normalised = []
    for number, sample_id, name in rows:
        candidate = Path(sample_id).expanduser()
        if root is not None and candidate.is_absolute():
            sample_id = _sample_id(candidate, root)
        if sample_id not in position:
            on_disk = (candidate if candidate.is_absolute() or root is None else root / candidate).is_file()
            why = ("is not in the pool (data.glob or data.images leaves it out, or data.bad_images skipped it)"
                   if on_disk else "does not exist")
            raise DataError(f"{path}, line {number}: image {sample_id!r} {why}; give its path relative to data.root "
                            "as in pool.csv's sample_id, or remove the line")
        normalised.append((number, sample_id, name))
    ids = [row[1] for row in normalised]
    labels = match_classes(path, normalised, list(pool_ids), classes)
    rows_in_pool = np.array([position[i] for i in ids], dtype=np.int64)
    return rows_in_pool, labels[rows_in_pool]


def count_initial_labels(path: str | Path) -> int:
    """How many images data.initial_labels lists (read when the workflow is planned)."""
    from asvp.oracle import answer_rows

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"initial labels file {path} (data.initial_labels) does not exist; fix the path or unset it")
    return len(answer_rows(path))
