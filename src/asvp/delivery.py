"""What a user takes home from a run: the final model as one self-contained file, a TorchScript
export of it, its predictions for the pool images nobody labelled, and `asvp predict` for new
images.

The model file (`model.pt`) holds everything needed to classify an image without the workflow's
config: the weights, the architecture, the class names in label order and the eval-time
preprocessing the model was tested with (resize and its interpolation, centre crop, the
backbone's mean/std, grey replicated to RGB). It is a plain
dict of tensors, strings and numbers, so `torch.load(..., weights_only=True)` reads it and no
pickled code runs. The TorchScript file takes normalised (N, 3, R, R) float32 tensors and
returns logits; the same class names and preprocessing travel inside it as `asvp_model.json`
(`torch.jit.load(path, _extra_files=...)`), for a user without this package.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from asvp.atomic import atomic_path, write_csv
from asvp.data import read_image
from asvp.data.transforms import Preprocessing, Transform, transform_for
from asvp.errors import DataError
from asvp.training import PREDICT_BATCH_SIZE, Classifier, classifier_from

MODEL_FORMAT = "asvp-model"
FORMAT_VERSION = 1
TORCHSCRIPT_INFO = "asvp_model.json"  # the extra file inside the TorchScript archive
# Suffixes `asvp predict` takes from a folder (PIL reads them all).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
PREDICTION_COLUMNS = ["class", "probability", "margin"]


def preprocessing_of(config: dict[str, Any]) -> dict[str, Any]:
    """The eval-time transform the model was tested with (asvp.backbones.preprocessing_for), as data."""
    from asvp.backbones import preprocessing_for

    return {
        **preprocessing_for(config).record(),  # resolution, resize (shorter side, before the crop), interpolation, mean, std
        "crop": "center",
        "grey_to_rgb": True,  # grey images are replicated to 3 channels (asvp.data.read_image)
        "input": "float32 (N, 3, resolution, resolution), RGB scaled to [0, 1], then (x - mean) / std",
    }


@dataclass
class DeliveredModel:
    """A loaded model file: the network (CPU, eval mode) and what it needs to be used."""

    model: Classifier
    classes: list[str]
    preprocessing: dict[str, Any]
    info: dict[str, Any]  # provenance: recipe, labels, test accuracy, run, round

    def transform(self) -> Transform:
        """PIL image -> normalised (3, R, R) tensor, exactly as the model was tested."""
        return transform_for(False, Preprocessing.from_record(self.preprocessing))


def save_model(out: str | Path, model: Classifier, arch: str, classes: list[str], preprocessing: dict[str, Any],
               info: dict[str, Any]) -> None:
    """Write the self-contained model file (atomically)."""
    num_classes = int(model.head.out_features)
    if len(classes) != num_classes:
        raise DataError(f"model has {num_classes} outputs but the dataset names {len(classes)} classes")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "num_classes": num_classes,
               "classes": list(classes), "preprocessing": preprocessing, "info": info, "state_dict": state}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path) -> DeliveredModel:
    """Load a model file written by `save_model`; needs no config and runs no pickled code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file {path} does not exist; give the path of a run's final/model.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise DataError(f"model file {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                        "copy it again from the run's final/ folder") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise DataError(f"{path} is not an asvp model file (no format '{MODEL_FORMAT}'); use a run's final/model.pt "
                        "(the fine-tune cache's files hold weights only)")
    if int(payload["format_version"]) > FORMAT_VERSION:
        raise DataError(f"model file {path} has format version {payload['format_version']}; this asvp reads up to "
                        f"{FORMAT_VERSION}: upgrade asvp-flow")
    model = classifier_from(payload)
    return DeliveredModel(model, list(payload["classes"]), dict(payload["preprocessing"]), dict(payload["info"]))


def export_torchscript(delivered: DeliveredModel, out: str | Path) -> None:
    """Trace the model on the CPU in eval mode and save it, with its classes and preprocessing inside."""
    model = delivered.model.cpu().eval().to(memory_format=torch.contiguous_format)
    resolution = delivered.preprocessing["resolution"]
    example = torch.zeros(2, 3, resolution, resolution)
    extra = {TORCHSCRIPT_INFO: json.dumps({"classes": delivered.classes, "preprocessing": delivered.preprocessing})}
    # Recent torch marks TorchScript deprecated in favour of torch.export; it still is what C++
    # (libtorch) and mobile runtimes load, so the export stays and the warning stays out of the logs.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        # No trace check (a second forward pass): these backbones have no data-dependent control
        # flow, and tests/test_delivery.py compares the export with the eager model.
        traced = torch.jit.trace(model, example, check_trace=False)
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files=extra)


def top_two(probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Columns class, probability and margin (top-1 minus top-2) of (N, C) probabilities."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    rows = np.arange(len(probabilities))
    first = probabilities[rows, order[:, 0]] if len(rows) else np.zeros(0, dtype=np.float32)
    second = probabilities[rows, order[:, 1]] if len(rows) and probabilities.shape[1] > 1 else np.zeros_like(first)
    names = np.asarray(classes, dtype=object)[order[:, 0]] if len(rows) else np.zeros(0, dtype=object)
    return pd.DataFrame({"class": names, "probability": first.astype(np.float64), "margin": (first - second).astype(np.float64)})


def pool_predictions(delivered: DeliveredModel, data_config: dict[str, Any], pool: pd.DataFrame, labelled: pd.DataFrame,
                     device: torch.device) -> pd.DataFrame:
    """The model's class for every pool image without a label, in pool order: pool_index,
    sample_id, class, probability, margin. The images go through the model's own preprocessing
    (the evaluation's)."""
    from asvp.data import make_dataset, open_data
    from asvp.pool import unlabelled_indices
    from asvp.training import predict

    rows = unlabelled_indices(len(pool), labelled)
    frame = pd.DataFrame({"pool_index": rows, "sample_id": pool["sample_id"].to_numpy()[rows]})
    if not len(rows):
        return pd.concat([frame, top_two(np.zeros((0, len(delivered.classes))), delivered.classes)], axis=1)
    dataset = make_dataset(open_data(data_config, "train"), pool["source_index"].to_numpy()[rows], False,
                           Preprocessing.from_record(delivered.preprocessing))
    probabilities, _ = predict(delivered.model, dataset, batch_size=PREDICT_BATCH_SIZE, device=device,
                               num_workers=data_config["num_workers"])
    delivered.model.cpu().to(memory_format=torch.contiguous_format)
    return pd.concat([frame, top_two(probabilities, delivered.classes)], axis=1)


def copy_file(source: str | Path, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)


# --- asvp predict ---------------------------------------------------------------------------


def image_paths(images: str | Path) -> list[Path]:
    """The images to classify: every image file under a folder (recursively, sorted), or the
    paths a list file names (one per line; blank lines and '#' comments skipped; relative paths
    are relative to the list file's folder, so a list travels with its images)."""
    images = Path(images)
    if images.is_dir():
        found = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"folder {images} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return found
    if not images.is_file():
        raise DataError(f"--images {images}: no such folder or list file")
    paths = []
    for number, line in enumerate(images.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        paths.append(path if path.is_absolute() else images.parent / path)
    if not paths:
        raise DataError(f"list file {images} names no images (one path per line)")
    return paths


def classify_files(delivered: DeliveredModel, paths: list[Path], device: torch.device, *, batch_size: int,
                   skip_bad: bool) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """Classify image files in batches (tqdm shows progress): the prediction table (path, class,
    probability, margin) and the files skipped as undecodable (only with skip_bad; otherwise the
    first one raises DataError naming it)."""
    from tqdm import tqdm

    from asvp.precision import inference_autocast

    transform = delivered.transform()
    model = delivered.model.to(device).eval()
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    probabilities = []
    with tqdm(total=len(paths), unit="img", desc="predict") as progress, torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            tensors = []
            for path in paths[start:start + batch_size]:
                try:
                    tensors.append(transform(read_image(path)))
                    kept.append(path)
                except DataError as exc:
                    if not skip_bad:
                        raise DataError(f"{exc} (or pass --skip-bad to list and skip such files)") from None
                    skipped.append((path, str(exc)))
            if tensors:
                with inference_autocast(device):
                    logits = model(torch.stack(tensors).to(device))
                probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            progress.update(len(paths[start:start + batch_size]))
    stacked = np.concatenate(probabilities) if probabilities else np.zeros((0, len(delivered.classes)), np.float32)
    table = pd.concat([pd.DataFrame({"path": [str(p) for p in kept]}), top_two(stacked, delivered.classes)], axis=1)
    return table, skipped


def predict_images(model: str, images: str, out: str, skip_bad: bool = False, batch_size: int = 64,
                   device: str = "auto") -> None:
    """Classify new images with a delivered model: --images a folder (searched recursively) or
    a list file (one path per line); writes a CSV (path, class, probability, margin)."""
    from asvp.device import resolve_device

    delivered = load_model(model)
    paths = image_paths(images)
    table, skipped = classify_files(delivered, paths, resolve_device(device), batch_size=batch_size, skip_bad=skip_bad)
    write_csv(out, table)
    print(f"{len(table)} images classified into {out}")
    if skipped:
        print(f"skipped {len(skipped)} images that do not decode:")
        for path, error in skipped:
            print(f"  {path}: {error}")
