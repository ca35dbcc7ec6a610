"""A small folder of real, unlabelled photos to try the "your own images" path on, offline.

The images are Fashion-MNIST pictures (Debian's dataset-fashion-mnist, which the set-up
installs) written out as PNG files, laid out the way a practitioner's folder usually is: nested
sub-folders, no class in the path. Beside them:

* `classes.txt`: the class names, one per line (what `data.classes` reads);
* `test/<class>/`: a small labelled test set (what `data.test` reads), so the run can report
  accuracy; a real user may have none;
* `answer_key.csv` (`sample_id,class`): the true class of every pool image. The workflow never
  reads it; it stands in for the annotator, so a demo or a test can answer each round's request
  without looking at the pictures.

Class names are written without "/" (Fashion-MNIST's "T-shirt/top" is "T-shirt") because a
test folder is named after its class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asvp.atomic import atomic_path, write_csv, write_text
from asvp.data.sources import default_fashion_mnist_root, open_source
from asvp.errors import DataError

EXAMPLE_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FOLDERS_PER_POOL = 4  # nested sub-folders the pool is spread over, as camera dumps usually are


def write_example_images(out: str | Path, pool_size: int = 600, test_size: int = 200, seed: int = 0,
                         root: str | Path | None = None) -> Path:
    """Write `pool_size` unlabelled pool images, a labelled test set of `test_size` images, the
    class list and the answer key under `out`; return `out`. Draws are seeded, so the same call
    writes the same files. Refuses to write into a folder that already holds images."""
    import pandas as pd

    out = Path(out)
    if out.is_dir() and any(out.rglob("*.png")):
        raise DataError(f"{out} already holds images; pass an empty or new folder")
    rng = np.random.default_rng(seed)
    fashion_root = Path(root) if root is not None else default_fashion_mnist_root()
    train, test = (open_source("fashion_mnist", fashion_root, split) for split in ("train", "test"))
    pool_rows = np.sort(rng.choice(len(train), size=pool_size, replace=False))
    test_rows = np.sort(rng.choice(len(test), size=test_size, replace=False))
    answers = []
    for k, row in enumerate(pool_rows):
        sample_id = f"shoot{k % FOLDERS_PER_POOL + 1}/IMG_{k:05d}.png"
        _save(train.load_image(int(row)), out / "photos" / sample_id)
        answers.append({"sample_id": sample_id, "class": EXAMPLE_CLASSES[int(train.labels[row])]})
    for k, row in enumerate(test_rows):
        name = EXAMPLE_CLASSES[int(test.labels[row])]
        _save(test.load_image(int(row)), out / "test" / name / f"test_{k:05d}.png")
    write_csv(out / "answer_key.csv", pd.DataFrame(answers))
    write_text(out / "classes.txt", "".join(f"{name}\n" for name in EXAMPLE_CLASSES))
    return out


def _save(image: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")  # type: ignore[attr-defined]


def answer_from_key(request: str | Path, key: str | Path, out: str | Path) -> Path:
    """Play the annotator: answer a round's `to_label.csv` from the answer key, as a person would
    in `labels/round<r>.csv` (sample_id,class). Only the images asked for are answered."""
    import pandas as pd

    asked = pd.read_csv(request, dtype={"sample_id": str})["sample_id"]
    truth = pd.read_csv(key, dtype={"sample_id": str}).set_index("sample_id")["class"]
    missing = sorted(set(asked) - set(truth.index))
    if missing:
        raise DataError(f"{key} has no class for {len(missing)} requested image(s), e.g. {missing[0]}; "
                        "it answers only the pool that `asvp example-images` wrote")
    write_csv(out, pd.DataFrame({"sample_id": asked, "class": truth.loc[asked].to_numpy()}))
    return Path(out)
