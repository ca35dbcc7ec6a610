"""Which backbone? Score candidate backbones on a small labelled pilot before a run (paper sec. 8).

The paper closes by asking which pre-trained model to start from; a wrong pick costs a whole run.
Every candidate is measured on the run's own round 0 (the seeded draw of schedule.budgets[0] pool
images that the workflow labels first, or data.initial_labels), so the numbers speak of the labels
the run will actually start from:

  * cross-validated linear-probe accuracy (stratified k-fold, the probe's L2 chosen by the LP-FT
    probe's own cross-validation, asvp.probe): what a classifier on the frozen features reaches,
    which bounds what SVPp's proxy can learn from them;
  * LogME, both variants (asvp.logme): a label-evidence score with no training;
  * PED's step count (asvp.ped, as ASVP's decision runs it): 0-1 steps mean the classes already
    sit apart, so fine-tuning should move the features little and a proxy on them stays faithful;
  * extraction speed and peak memory, extrapolated to the whole pool;
  * with --finetune, the gap between a fine-tune (the schema's FT recipe) and the linear probe,
    both on the test split: a large gap means the fine-tuned model will see the pool differently
    from the frozen features, which is what ASVP's refresh corrects.

Candidates are ranked by CV probe accuracy, with LogME (icml variant) breaking ties: probe
accuracy is measured on held-out pilot images in the quantity the user cares about, while LogME
is an evidence estimate whose fixed-point variant is inflated while N < D by an amount that grows
with the feature width (asvp.logme), so it misorders backbones of different widths at pilot
sizes; the icml variant, the corrected evidence, only settles exact ties of accuracy (which are
common: accuracy moves in steps of 1/N).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asvp.atomic import write_csv, write_json
from asvp.backbone_candidates import Candidate, candidate_config, parse_candidate
from asvp.errors import AsvpError, ConfigError, DataError
from asvp.ped import reference_sample

# A fine-tune this much (test accuracy) above the linear probe on the same pilot: the frozen
# features miss what fine-tuning finds, so a proxy on them drifts from the fine-tuned model.
GAP_NEEDS_REFRESH = 0.05
# Features are measured raw, as the workflow's consumers take them: the LP-FT probe fits raw
# features and the proxy's first BatchNorm (eps 1e-5) cannot see pre-activations far below 1e-3.
# A randomly initialised torchvision MobileNetV2 outputs features of about 1e-10 (its blocks
# shrink the signal): useless to the proxy as they are, although standardised they would probe
# about as well as ImageNet's. Below this RMS the advice says so.
VANISHING_RMS = 1e-6


@dataclass(frozen=True)
class Pilot:
    """The labelled pilot and the unlabelled PED reference, as pool rows, with the files the steps read."""

    pool_csv: Path
    test_csv: Path
    labelled_csv: Path
    rows: np.ndarray  # (N,) int64 pool indices of the pilot
    labels: np.ndarray  # (N,) int64 their classes
    reference_rows: np.ndarray  # (M,) int64 unlabelled pool indices, ascending
    pool_size: int
    test_size: int
    classes: list[str]
    origin: str  # in words: where the labels came from


def pilot_set(config: dict[str, Any], work: Path, reference_images: int) -> Pilot:
    """Round 0 of seeds[0] as the workflow makes it (define_pool, then select_initial's seeded draw
    labelled from the dataset, or data.initial_labels), plus a seeded sample of the unlabelled pool
    for PED's rescaling, drawn as asvp.steps.decide draws it."""
    from asvp.atomic import read_json
    from asvp.pool import label_selection, read_labelled, read_selected, read_split_table, unlabelled_indices
    from asvp.steps.features import define_pool
    from asvp.steps.select import Query, initial_labels, select_initial

    files = {name: work / name for name in ("pool.csv", "test.csv", "dataset.json", "selected.csv", "scores.npy",
                                            "labelled.csv")}
    define_pool(config, str(files["pool.csv"]), str(files["test.csv"]), str(files["dataset.json"]))
    pool = read_split_table(files["pool.csv"])
    seed, budget = config["seeds"][0], config["schedule"]["budgets"][0]
    given = config["data"].get("initial_labels")
    if given:
        initial_labels(config, given, str(files["pool.csv"]), str(files["dataset.json"]), str(files["selected.csv"]),
                       str(files["scores.npy"]), str(files["labelled.csv"]))
        origin = f"data.initial_labels ({given})"
    else:
        select_initial(Query("random", budget, seed, 0, str(files["pool.csv"]), None, str(files["selected.csv"]),
                             str(files["scores.npy"])))
        selected = read_selected(files["selected.csv"], len(pool))
        if (pool["label"].to_numpy()[selected["pool_index"].to_numpy()] < 0).any():
            raise ConfigError("the pool's images have no labels (data.dataset: unlabelled), so the pilot cannot be "
                              "labelled by the simulated oracle: set data.initial_labels to a file of labels you have")
        write_csv(files["labelled.csv"], label_selection(selected, pool, None, 0))
        origin = (f"round 0 of seed {seed}: the seeded draw of schedule.budgets[0] = {budget} of the "
                  f"{len(pool)}-image pool, labelled from the dataset's labels")
    labelled = read_labelled(files["labelled.csv"], len(pool))
    classes = read_json(files["dataset.json"])["classes"]
    _check_pilot(labelled["label"].to_numpy(np.int64), classes, "data.initial_labels" if given else "schedule.budgets[0]")
    unlabelled = reference_sample(unlabelled_indices(len(pool), labelled), reference_images, seed, 0)
    # Copies: pandas hands out read-only views, which torch warns about when the probe takes them.
    return Pilot(files["pool.csv"], files["test.csv"], files["labelled.csv"], np.array(labelled["pool_index"], np.int64),
                 np.array(labelled["label"], np.int64), unlabelled, len(pool), len(read_split_table(files["test.csv"])),
                 classes, origin)


def _check_pilot(labels: np.ndarray, classes: list[str], key: str) -> None:
    """DataError naming `key` when the pilot cannot be cross-validated: fewer than 2 classes, or a
    class with a single image (a fold would test a class its training folds never saw)."""
    present, counts = np.unique(labels, return_counts=True)
    fix = ("list more labelled images in data.initial_labels" if key == "data.initial_labels" else
           "raise schedule.budgets[0] (round 0's labels) or pick another seeds[0]")
    if len(present) < 2:
        raise DataError(f"the pilot ({key}: {len(labels)} images) holds {len(present)} class; comparing backbones "
                        f"needs at least 2 classes: {fix}")
    single = [classes[c] if c < len(classes) else str(c) for c, n in zip(present, counts) if n < 2]
    if single:
        raise DataError(f"the pilot ({key}: {len(labels)} images) has a single image of class(es) "
                        f"{', '.join(map(str, single))}; stratified cross-validation needs at least 2 per class: {fix}")


def cv_probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float, int]:
    """(accuracy, L2 strength, folds): the linear probe's stratified k-fold accuracy on held-out pilot
    images, at the L2 that asvp.probe's cross-validation picks. Both use the same folds, which
    flatters every candidate alike (the choice is among 5 values), so the ranking is unaffected."""
    import torch

    from asvp.probe import PROBE_DECAY_GRID, choose_probe_decay, fit_logistic_head, fold_count, stratified_folds

    classes, y_np = np.unique(labels, return_inverse=True)
    x, y = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(y_np, dtype=torch.int64)
    decay, _ = choose_probe_decay(x, y, len(classes), PROBE_DECAY_GRID, seed)
    k = fold_count(y_np)
    folds = torch.as_tensor(stratified_folds(y_np, k, seed))
    correct = 0
    for fold in range(k):
        held_out = folds == fold
        head = fit_logistic_head(x[~held_out], y[~held_out], len(classes), decay)
        with torch.no_grad():
            correct += int((head(x[held_out]).argmax(1) == y[held_out]).sum())
    return correct / len(labels), decay, k


def _extract(config: dict[str, Any], backbone: Any, pilot: Pilot, pool_rows: np.ndarray, test_rows: np.ndarray,
             out: Path, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) of these pool and test rows, through the workflow's own extraction."""
    from asvp import extraction
    from asvp.data import dataset_for
    from asvp.features import load_rows
    from asvp.pool import read_split_table

    splits = {}
    for split, csv, rows in (("pool", pilot.pool_csv, pool_rows), ("test", pilot.test_csv, test_rows)):
        table = read_split_table(csv).iloc[rows]
        dataset = dataset_for(config, split, table["source_index"].to_numpy(), train_mode=False)
        splits[split] = extraction.SplitInput(dataset, table["label"].to_numpy(), table["sample_id"].astype(str).tolist())
    extraction.extract_features(backbone, splits, out, attrs={"backbone": config["backbone"]["arch"]},
                                dtype=config["features"]["dtype"], batch_size=config["features"]["batch_size"],
                                num_workers=config["data"]["num_workers"], device=device)
    return load_rows(out, "pool")[0], load_rows(out, "test")[0]


def warm_up(config: dict[str, Any], candidate: Candidate, pilot: Pilot, folder: Path) -> None:
    """One small unmeasured extraction: the process's one-off costs (lazy imports, the math
    libraries' buffers, about 70 MB on a CPU) would otherwise count in the first candidate's peak."""
    from asvp.backbones import build_backbone, preprocessing_for
    from asvp.device import resolve_device

    settings = candidate_config(config, candidate)
    backbone = build_backbone(candidate.arch, candidate.checkpoint, prefix=config["backbone"]["prefix"],
                              image_size=preprocessing_for(settings).resolution)
    _extract(settings, backbone, pilot, pilot.rows[:8], np.zeros(0, np.int64), folder / "warm_up.h5",
             resolve_device(config["device"]))


def measure(config: dict[str, Any], candidate: Candidate, pilot: Pilot, folder: Path) -> dict[str, Any]:
    """Every metric of one candidate on the pilot (see the module docstring); scratch files go to `folder`."""
    import torch

    from asvp.backbones import build_backbone, preprocessing_for
    from asvp.device import resolve_device
    from asvp.logme import VARIANTS, logme
    from asvp.ped import ped

    settings = candidate_config(config, candidate)
    resolution = preprocessing_for(settings).resolution
    device = resolve_device(config["device"])
    seed = config["seeds"][0]
    measured = np.concatenate([pilot.rows, pilot.reference_rows])
    torch.manual_seed(seed)  # random init (:none) gives the same network, and the same advice, every time
    started = time.perf_counter()
    backbone = build_backbone(candidate.arch, candidate.checkpoint, prefix=config["backbone"]["prefix"],
                              image_size=resolution)
    built = time.perf_counter()
    features, _ = _extract(settings, backbone, pilot, measured, np.zeros(0, np.int64), folder / "pilot.h5", device)
    extracted = time.perf_counter()
    x, reference = features[: len(pilot.rows)], features[len(pilot.rows):]
    accuracy, decay, folds = cv_probe_accuracy(x, pilot.labels, seed)
    per_image = (extracted - built) / len(measured)
    row: dict[str, Any] = {
        "candidate": candidate.text,
        "arch": candidate.arch,
        "resolution": resolution,
        "checkpoint": candidate.checkpoint,
        "feature_dim": int(backbone.feature_dim),
        "feature_rms": float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))),
        "cv_probe_accuracy": accuracy,
        "cv_probe_stderr": float(np.sqrt(accuracy * (1 - accuracy) / len(pilot.labels))),
        "cv_folds": folds,
        "probe_l2": decay,
        **{f"logme_{variant}": logme(x, pilot.labels, variant=variant) for variant in VARIANTS},
        "ped_steps": ped(x, pilot.labels, reference if len(reference) else x).n_steps,
        "build_seconds": built - started,
        "extract_images": len(measured),
        "extract_seconds_per_1000": 1000 * per_image,
        "pool_images": pilot.pool_size,
        "pool_extract_seconds": per_image * pilot.pool_size,
        "pool_features_mb": pilot.pool_size * int(backbone.feature_dim) * np.dtype(config["features"]["dtype"]).itemsize / 2**20,
    }
    return row


def extraction_memory(config: dict[str, Any], candidate: Candidate, pilot: Pilot, folder: Path) -> dict[str, Any]:
    """Peak memory of building the candidate and extracting what `measure` extracted, and that
    extrapolated to the whole pool (the in-memory dataset holds every decoded image: 3 x PX^2 bytes
    each, where it applies). A pass of its own, after every candidate was timed: the way it keeps
    the peaks apart (asvp.peak_memory) slows extraction, up to a third at 32 px."""
    import torch

    from asvp.backbones import build_backbone, preprocessing_for
    from asvp.data.sources import open_data
    from asvp.data.tensor_dataset import supports
    from asvp.device import resolve_device
    from asvp.peak_memory import peak_memory

    settings = candidate_config(config, candidate)
    resolution = preprocessing_for(settings).resolution
    device = resolve_device(config["device"])
    measured = np.concatenate([pilot.rows, pilot.reference_rows])
    torch.manual_seed(config["seeds"][0])
    with peak_memory(device) as memory:
        backbone = build_backbone(candidate.arch, candidate.checkpoint, prefix=config["backbone"]["prefix"],
                                  image_size=resolution)
        _extract(settings, backbone, pilot, measured, np.zeros(0, np.int64), folder / "memory.h5", device)
    del backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the next candidate's peak starts from what it allocates itself
    in_memory = supports(open_data(settings["data"], "train"), pilot.pool_size, False, resolution)
    growth = in_memory * 3 * resolution * resolution * max(0, pilot.pool_size - len(measured))
    return {"peak_memory_mb": memory["bytes"] / 2**20, "memory_measure": memory["kind"],
            "pool_peak_memory_mb": (memory["bytes"] + growth) / 2**20}


@contextlib.contextmanager
def _naming(candidate: Candidate) -> Iterator[None]:
    """Errors of one candidate's measurement, with the candidate named (and the fix for a model
    that cannot run these images)."""
    try:
        yield
    except AsvpError as error:
        raise type(error)(f"candidate {candidate.text!r}: {error}") from None
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"candidate {candidate.text!r}: feature extraction failed ({first}); drop it from "
                        "--candidates or give it another @PX") from None


def finetune_gap(config: dict[str, Any], candidate: Candidate, pilot: Pilot, folder: Path,
                 decay: float) -> dict[str, Any]:
    """FT (the config's finetune recipe, asvp.finetune) vs the linear probe at the L2 `measure`
    chose, both trained on the pilot and scored on the test split (test.csv of define_pool).
    Run after the memory pass: what a fine-tune leaves in the process raised the peaks measured
    after it by 120-250 MB."""
    import torch

    from asvp.backbones import build_backbone, preprocessing_for
    from asvp.device import resolve_device
    from asvp.features import load_rows
    from asvp.finetune import finetune_and_evaluate
    from asvp.pool import read_split_table
    from asvp.probe import fit_logistic_head

    settings = candidate_config(config, candidate)
    device = resolve_device(config["device"])
    torch.manual_seed(config["seeds"][0])
    backbone = build_backbone(candidate.arch, candidate.checkpoint, prefix=config["backbone"]["prefix"],
                              image_size=preprocessing_for(settings).resolution)
    x = load_rows(folder / "pilot.h5", "pool", np.arange(len(pilot.rows)))[0]
    _, test = _extract(settings, backbone, pilot, np.zeros(0, np.int64), np.arange(pilot.test_size), folder / "test.h5",
                       device)
    truth = read_split_table(pilot.test_csv)["label"].to_numpy()
    head = fit_logistic_head(torch.as_tensor(x), torch.as_tensor(pilot.labels), len(pilot.classes), decay)
    with torch.no_grad():
        probe = float((head(torch.as_tensor(test)).argmax(1).numpy() == truth).mean())
    started = time.perf_counter()
    torch.manual_seed(config["seeds"][0])  # random init (:none): the network the probe measured
    metrics = finetune_and_evaluate(settings, "ft", pilot.pool_csv, pilot.labelled_csv, pilot.test_csv,
                                    settings["seeds"][0], folder / "ft.json", cache_dir=folder / "finetunes")
    return {"lp_test_accuracy": probe, "ft_test_accuracy": metrics["accuracy"],
            "ft_minus_lp": metrics["accuracy"] - probe, "ft_status": metrics["status"],
            "ft_seconds": time.perf_counter() - started, "test_images": pilot.test_size}


def ranked(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table, best first: CV probe accuracy, then LogME (icml) for ties (module docstring)."""
    table = pd.DataFrame(rows).sort_values(["cv_probe_accuracy", "logme_icml"], ascending=False, kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def _faithfulness(row: dict[str, Any], gap_threshold: float) -> str:
    """Will a proxy on these frozen features select as a fine-tuned model would? The measured FT-LP
    gap when there is one, else PED's verdict on the pilot (ASVP's own test, paper sec. 5)."""
    from asvp.ped import CONVERGED_STEPS

    if "ft_minus_lp" in row:
        gap = row["ft_minus_lp"]
        if gap <= gap_threshold:
            return (f"faithful proxy: fine-tuning gains {gap:+.3f} test accuracy over the linear probe (<= "
                    f"{gap_threshold}), so SVPp should select close to standard AL at a fraction of its cost")
        return (f"needs ASVP's refresh: fine-tuning gains {gap:+.3f} over the linear probe (> {gap_threshold}), so "
                "the fine-tuned model will see the pool differently from these frozen features; use method asvp")
    steps = row["ped_steps"]
    if steps <= CONVERGED_STEPS:
        return (f"likely faithful proxy: PED converged in {steps} step(s), so fine-tuning should move these features "
                "little and SVPp should select close to standard AL (measure it: --finetune)")
    return (f"likely needs ASVP's refresh: PED took {steps} steps to separate the pilot's classes, so fine-tuning will "
            "move these features; use method asvp (measure the gap: --finetune)")


def advice(table: pd.DataFrame, pilot: Pilot, gap_threshold: float = GAP_NEEDS_REFRESH) -> str:
    """The recommendation in plain words, with its caveats and each candidate's whole-pool cost."""
    best = table.iloc[0].to_dict()
    lines = [f"Use {best['candidate']}: the best cross-validated linear-probe accuracy on the pilot "
             f"({best['cv_probe_accuracy']:.3f} +- {best['cv_probe_stderr']:.3f})."]
    if len(table) > 1:
        second = table.iloc[1].to_dict()
        margin = best["cv_probe_accuracy"] - second["cv_probe_accuracy"]
        if margin < best["cv_probe_stderr"]:
            lines.append(f"  It leads {second['candidate']} by {margin:.3f}, within the pilot's noise (one standard "
                         f"error, {best['cv_probe_stderr']:.3f}): the two are a toss-up on {len(pilot.rows)} labels; "
                         "prefer the cheaper to extract, or label a larger pilot.")
        else:
            lines.append(f"  It leads {second['candidate']} by {margin:.3f} (more than one standard error).")
    lines.append(f"  Proxy: {_faithfulness(best, gap_threshold)}.")
    if "ft_test_accuracy" in table:
        top = table.sort_values("ft_test_accuracy", ascending=False, kind="stable").iloc[0].to_dict()
        if top["candidate"] != best["candidate"]:
            lines.append(f"  Fine-tuned on the pilot, {top['candidate']} reaches the best test accuracy "
                         f"({top['ft_test_accuracy']:.3f} vs {best['ft_test_accuracy']:.3f}): the frozen features "
                         "(the proxy's) and the fine-tuned model (the final one) favour different backbones; prefer "
                         "it if the final model's accuracy matters more than the selection's.")
    for row in table.to_dict("records"):
        if row["feature_rms"] < VANISHING_RMS:
            lines.append(f"  {row['candidate']}: its features vanish (RMS {row['feature_rms']:.1e}): the proxy and "
                         "the probe cannot use them as they are (random weights without a checkpoint often do this).")
    lines.append(f"Extracting the whole pool ({pilot.pool_size} images), extrapolated from the pilot's extraction:")
    for row in table.to_dict("records"):
        lines.append(f"  {row['candidate']:<32} {row['pool_extract_seconds']:9.1f} s, peak memory ~"
                     f"{row['pool_peak_memory_mb']:.0f} MB, features file {row['pool_features_mb']:.1f} MB")
    return "\n".join(lines)


SHOWN = {"rank": "rank", "candidate": "candidate", "feature_dim": "width", "cv_probe_accuracy": "cv_acc",
         "logme_fixed_point": "logme_fp", "logme_icml": "logme_icml", "ped_steps": "ped",
         "extract_seconds_per_1000": "s/1000img", "peak_memory_mb": "peak_MB", "ft_minus_lp": "ft-lp"}


def advise_backbone(configfile: str, candidates: list[str], finetune: bool = False, out: str | None = None,
                    reference_images: int = 1000, gap_threshold: float = GAP_NEEDS_REFRESH) -> str:
    """Rank candidate backbones on the run's round-0 pilot and say which to use. Each candidate is
    ARCH[@PX][:CHECKPOINT] (ARCH a torchvision model or timm/<name>; PX the side in pixels, default
    data.resolution; CHECKPOINT a file, default (the packaged ImageNet MobileNetV2), none (random
    init), omitted = the config's backbone.checkpoint, for the config's arch only), e.g.
    mobilenet_v2@64:default resnet18@32:none. --finetune adds a fine-tune vs linear-probe gap on the
    test split; the table goes to --out (default results/<experiment>/backbone_advice/).

    reference_images: unlabelled pool images for PED's rescaling (also timed for the speed figure);
    gap_threshold: the FT-LP test-accuracy gap above which the advice is ASVP's refresh.
    """
    from asvp.backbones import check_arch
    from asvp.config import load_config

    config = load_config(configfile)
    parsed = [parse_candidate(text, config) for text in candidates]
    if len({c.text for c in parsed}) < len(parsed):
        raise ConfigError("--candidates names the same candidate twice; list each once")
    for candidate in parsed:
        try:
            check_arch(candidate.arch)
        except ConfigError as error:
            raise ConfigError(f"candidate {candidate.text!r}: {error}") from None
    out_dir = Path(out) if out else Path(config["results_dir"]) / config["experiment"] / "backbone_advice"
    rows = []
    with tempfile.TemporaryDirectory(prefix="asvp-backbone-advice-") as tmp:
        pilot = pilot_set(config, Path(tmp), reference_images)
        if finetune and pilot.test_size == 0:
            raise ConfigError("--finetune scores the fine-tune and the probe on the test split, and this data source "
                              "has no labelled test images: give it one (data.test_root for your own images) or drop "
                              "--finetune")
        with _naming(parsed[0]):
            warm_up(config, parsed[0], pilot, Path(tmp))
        print(f"pilot: {len(pilot.rows)} images of {len(np.unique(pilot.labels))} classes from {pilot.origin}; "
              f"PED reference and timing: {len(pilot.reference_rows)} unlabelled pool images", flush=True)
        folders = [Path(tmp) / f"candidate{number}" for number in range(len(parsed))]
        for candidate, folder in zip(parsed, folders):
            print(f"measuring {candidate.text} ...", flush=True)
            folder.mkdir()
            with _naming(candidate):
                rows.append(measure(config, candidate, pilot, folder))
        print("measuring peak memory ...", flush=True)
        for candidate, folder, row in zip(parsed, folders, rows):
            with _naming(candidate):
                row.update(extraction_memory(config, candidate, pilot, folder))
        for candidate, folder, row in zip(parsed, folders, rows) if finetune else ():
            print(f"fine-tuning {candidate.text} on the pilot ...", flush=True)
            with _naming(candidate):
                row.update(finetune_gap(config, candidate, pilot, folder, row["probe_l2"]))
    table = ranked(rows)
    text = advice(table, pilot, gap_threshold)
    write_csv(out_dir / "backbone_advice.csv", table)
    write_json(out_dir / "backbone_advice.json", {
        "configfile": str(configfile), "pilot_images": len(pilot.rows), "pilot": pilot.origin,
        "reference_images": len(pilot.reference_rows), "ranked_by": "cv_probe_accuracy, then logme_icml",
        "finetune_gap_on": "test split" if finetune else None, "gap_threshold": gap_threshold,
        "candidates": table.to_dict("records"), "advice": text})
    shown = table[[c for c in SHOWN if c in table]].rename(columns=SHOWN)
    return (f"{shown.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n\n{text}\n"
            f"(table: {out_dir / 'backbone_advice.csv'}, {out_dir / 'backbone_advice.json'})")
