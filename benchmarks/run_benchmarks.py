"""Speed benchmarks, run on demand (`make bench`); results are appended to BENCHMARKS.md.

Measures, on the default setting (Fashion-MNIST at 32 px, ImageNet MobileNetV2), each next to
its ceiling so that a ratio says how much of the hardware's speed the workflow gets:
  1. extraction: `asvp.extraction.extract_features` (HDF5, chunked, resumable) fed by the
     dataset the workflow uses (`make_dataset`), against a bare channels_last inference loop
     over the same, already-made tensors at the same batch size (target >= 0.90); plus the old
     per-image PIL path for comparison;
  2. fine-tuning: one FT epoch through `asvp.training.train` on the in-memory train dataset,
     against a bare train-step loop (forward, backward, SGD step) over the same augmented
     tensors at the same batch size (target >= 0.80);
  3. a proxy round as the workflow runs it: the `train-proxy` and `select` jobs as separate
     `python -m asvp` processes, against the same two functions timed in-process after imports
     (target <= 2), with the import time of each command;
  4. (kept from earlier runs) the proxy round's compute and one default FT evaluation.
Every timing is the best of `--repeats` after a warm-up: oneDNN's first calls per input shape
are very slow, and other work shares the CPUs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from asvp.atomic import write_csv
from asvp.backbones import build_backbone
from asvp.checkpoints import resolve_checkpoint
from asvp.config import load_config, validate_config
from asvp.data import ImageDataset, build_transform, make_dataset, open_source
from asvp.extraction import CHUNK_ROWS, SplitInput, extract_features
from asvp.features import load_rows
from asvp.precision import autocast_dtype, inference_autocast
from asvp.pool import LABELLED_COLUMNS, split_table
from asvp.proxy import ProxyRecipe, save_weights, train_proxy
from asvp.proxy_scoring import INFERENCE_BATCH_SIZE, load_weights, proxy_chunks
from asvp.recipes import recipe_fingerprint, recipe_from_config
from asvp.training import Classifier, train

REPO = Path(__file__).resolve().parents[1]
Results = dict[str, float]


def best_seconds(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best wall time of each run; the runs alternate, so a change of load hits them alike."""
    best = {name: math.inf for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def backbone(config: dict) -> torch.nn.Module:
    bb = config["backbone"]
    return build_backbone(bb["arch"], resolve_checkpoint(bb["checkpoint"]), prefix=bb["prefix"])


# ------------------------------------------------------------------------------- 1. extraction
def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timing ends when the work does (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_extraction(config: dict, n_images: int, repeats: int, device: torch.device = torch.device("cpu"),
                     per_image: bool = True) -> Results:
    """per_image: also time the old per-image PIL dataset (slow; CPU-bound even with a GPU)."""
    data = config["data"]
    source = open_source(data["dataset"], data["root"], "train")
    indices = np.arange(n_images)
    import torchvision.transforms  # noqa: F401  (imported by every extract job anyway: not decode time)

    start = time.perf_counter()
    dataset = make_dataset(source, indices, False, data["resolution"], data["resize"])
    decode = time.perf_counter() - start
    model = backbone(config).eval().to(device, memory_format=torch.channels_last)
    batch = config["features"]["batch_size"]
    images = dataset.batch(indices)[0] if hasattr(dataset, "batch") else torch.stack([dataset[i][0] for i in indices])

    @torch.inference_mode()
    def bare() -> None:  # with extraction's host-to-device copy and (CUDA) autocast
        with inference_autocast(device):
            for i in range(0, n_images, batch):
                model(images[i : i + batch].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
        synchronize(device)

    per_image_dataset = ImageDataset(source, indices, build_transform(False, data["resolution"], resize=data["resize"]))

    @torch.inference_mode()
    def bare_with_transforms() -> None:
        for i in range(0, n_images, batch):
            x = torch.stack([per_image_dataset[j][0] for j in range(i, min(i + batch, n_images))])
            with inference_autocast(device):
                model(x.to(device).contiguous(memory_format=torch.channels_last))
        synchronize(device)

    ids = [source.sample_id(i) for i in indices]

    def extract(ds: torch.utils.data.Dataset) -> Callable[[], None]:
        def run() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                split = SplitInput(ds, source.labels[indices], ids)
                extract_features(model, {"pool": split, "test": split}, Path(tmp) / "f.h5", attrs={"bench": 1},
                                 batch_size=batch, chunk_rows=CHUNK_ROWS, device=device)
        return run

    bare()  # warm-up: oneDNN primitives for these shapes
    best = best_seconds({"bare": bare, "ours": extract(dataset)}, repeats)
    bare_s, ours_s = best["bare"], best["ours"] / 2  # two splits of n_images each
    results = {
        "bare forward (img/s)": n_images / bare_s,
        "extract_features to HDF5 (img/s)": n_images / ours_s,
        "extract_features / bare forward (target >= 0.90)": bare_s / ours_s,
        f"{type(dataset).__name__} decode, per 1000 images (s)": 1000 * decode / n_images,
        "extraction incl. decode / bare forward": bare_s / (ours_s + decode),
    }
    if per_image:
        best = best_seconds({"bare": bare_with_transforms, "ours": extract(per_image_dataset)}, 1)
        results["bare forward + transforms (img/s)"] = n_images / best["bare"]
        results["extract_features, per-image PIL dataset (img/s)"] = n_images / (best["ours"] / 2)
    return results


# ------------------------------------------------------------------------------- 2. fine-tuning
def one_epoch_recipe(config: dict) -> Any:
    """The default FT recipe cut to one plain epoch: no step floor, warm-up, milestones or BN pass."""
    raw = copy.deepcopy(config)
    ft = raw["finetune"]
    # Two epochs for the config check (LP-FT's probe epochs must be fewer), then cut to one.
    ft.update(epochs=2, milestones=[], min_steps=0, warmup_steps=0)
    raw["lpft"]["lp_epochs"] = 1
    recipe = recipe_from_config("ft", validate_config(raw, source="benchmark override"))
    stages = tuple(dataclasses.replace(stage, epochs=1) for stage in recipe.stages)
    return dataclasses.replace(recipe, stages=stages, recalibrate_bn=False)


def bench_finetune_epoch(config: dict, n_images: int, repeats: int, device: torch.device = torch.device("cpu")) -> Results:
    data = config["data"]
    source = open_source(data["dataset"], data["root"], "train")
    indices = np.sort(np.random.default_rng(0).choice(len(source), n_images, replace=False))
    dataset = make_dataset(source, indices, True, data["resolution"], data["resize"])
    recipe = one_epoch_recipe(config)
    stage, batch = recipe.stages[0], recipe.batch_size
    torch.manual_seed(0)
    initial = Classifier(backbone(config), source.num_classes)
    steps = -(-n_images // batch)
    order = np.random.default_rng(1).permutation(np.resize(np.arange(n_images), steps * batch))
    batches = [dataset.batch(order[k * batch : (k + 1) * batch])[:2] for k in range(steps)]  # the same tensors

    half = autocast_dtype(device)  # what train() uses on this device (None on the CPU)

    def bare() -> None:  # train()'s arithmetic on CUDA too: channels_last, autocast, fp16's scaler
        model = copy.deepcopy(initial).to(device).train()
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        groups = [{"params": model.backbone.parameters(), "lr": stage.lr_backbone},
                  {"params": model.head.parameters(), "lr": stage.lr_head}]
        optimizer = torch.optim.SGD(groups, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=stage.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=half == torch.float16)
        loss_fn = torch.nn.CrossEntropyLoss()
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=half, enabled=half is not None):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        synchronize(device)

    trained = []

    def ours() -> None:
        model = copy.deepcopy(initial)
        with tempfile.TemporaryDirectory() as tmp:
            history = train(model, dataset, recipe, seed=0, device=device, checkpoint=Path(tmp) / "c.pt",
                            fingerprint=recipe_fingerprint(recipe, 0, "bench"), log=lambda _: None)
        synchronize(device)
        trained.append(sum(h.get("steps", steps) for h in history) * batch)

    bare()  # warm-up
    best = best_seconds({"bare": bare, "ours": ours}, repeats)
    bare_s, ours_s, ours_images = best["bare"], best["ours"], trained[-1]
    return {
        f"bare train steps, batch {batch} (img/s)": steps * batch / bare_s,
        "one FT epoch through train() (img/s)": ours_images / ours_s,
        "FT epoch / bare train steps (target >= 0.80)": (ours_images / ours_s) / (steps * batch / bare_s),
    }


# ------------------------------------------------------------------------------- 3. proxy round jobs
def write_round_files(config: dict, folder: Path, n_pool: int, n_labelled: int) -> dict[str, Path]:
    """features.h5 (real backbone features of n_pool images), pool.csv and a labelled.csv."""
    data = config["data"]
    source = open_source(data["dataset"], data["root"], "train")
    splits = {}
    for name, n in (("pool", n_pool), ("test", 256)):
        idx = np.arange(n)
        dataset = make_dataset(source, idx, False, data["resolution"], data["resize"])
        splits[name] = SplitInput(dataset, source.labels[idx], [source.sample_id(i) for i in idx])
        if name == "pool":
            write_csv(folder / "pool.csv", split_table(idx, splits[name].sample_ids, source.labels[idx]))
    extract_features(backbone(config), splits, folder / "features.h5", attrs={"num_classes": source.num_classes},
                     batch_size=config["features"]["batch_size"], chunk_rows=CHUNK_ROWS)
    rows = np.sort(np.random.default_rng(0).choice(n_pool, n_labelled, replace=False))
    labelled = pd.DataFrame({"pool_index": rows, "sample_id": [source.sample_id(i) for i in rows],
                             "label": source.labels[rows], "round": 0})[LABELLED_COLUMNS]
    write_csv(folder / "labelled.csv", labelled)
    return {"features": folder / "features.h5", "pool": folder / "pool.csv", "labelled": folder / "labelled.csv"}


def import_seconds(stderr: str) -> float:
    """Total of the top-level entries of a `python -X importtime` report."""
    total = 0
    for line in stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and not parts[2].startswith("  ") and parts[1].strip().isdigit():
            total += int(parts[1])
    return total / 1e6


def bench_proxy_jobs(config: dict, n_pool: int, n_labelled: int, budget: int, repeats: int) -> Results:
    """The two jobs as the rules run them: train-proxy (torch) and select (numpy, proxy.npz)."""
    from asvp.steps import select

    proxy_cfg = json.dumps({"proxy": config["proxy"]}, sort_keys=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_round_files(config, folder, n_pool, n_labelled)
        commands = {
            "train-proxy": ["--threads", "2", "train-proxy", "--config-json", proxy_cfg, "--features", str(files["features"]),
                            "--labelled", str(files["labelled"]), "--seed", "0", "--round", "1",
                            "--weights-out", str(folder / "proxy.npz")],
            "select": ["--threads", "2", "select-proxy", "--strategy", "margin", "--budget", str(budget), "--seed", "0", "--round", "1",
                       "--pool", str(files["pool"]), "--labelled", str(files["labelled"]), "--features", str(files["features"]),
                       "--proxy-weights", str(folder / "proxy.npz"), "--config-json", proxy_cfg,
                       "--selected-out", str(folder / "selected.csv"), "--scores-out", str(folder / "scores.npy")],
        }

        def jobs() -> None:
            for args in commands.values():
                subprocess.run([sys.executable, "-m", "asvp", *args], check=True, capture_output=True)

        def in_process() -> None:
            select.train_proxy({"proxy": config["proxy"]}, str(files["features"]), str(files["labelled"]), 0, 1,
                               str(folder / "proxy_in.npz"))
            select.select_proxy(select.Query("margin", budget, 0, 1, str(files["pool"]), str(files["labelled"]),
                                             str(folder / "sel_in.csv"), str(folder / "scores_in.npy")),
                                str(files["features"]), str(folder / "proxy_in.npz"))

        in_process()  # warm-up
        best = best_seconds({"in_process": in_process, "jobs": jobs}, repeats)
        compute_s, jobs_s = best["in_process"], best["jobs"]
        imports = {name: import_seconds(subprocess.run([sys.executable, "-X", "importtime", "-m", "asvp", *args],
                                                       check=True, capture_output=True, text=True).stderr)
                   for name, args in commands.items()}
    return {
        f"proxy round in-process: train + select, {n_pool} pool (s)": compute_s,
        "proxy round as 2 workflow jobs (s)": jobs_s,
        "proxy round jobs / in-process (target <= 2)": jobs_s / compute_s,
        "import time of `train-proxy` (s)": imports["train-proxy"],
        "import time of `select` (s)": imports["select"],
    }


# ------------------------------------------------------------------------------- 4. earlier entries
def bench_round(config: dict, n_labelled: int, n_pool: int, ft_evaluation: bool) -> Results:
    data = config["data"]
    source = open_source(data["dataset"], data["root"], "train")
    labelled = np.sort(np.random.default_rng(0).choice(n_pool, n_labelled, replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(source, np.arange(n_pool), False, data["resolution"], data["resize"])
        split = SplitInput(dataset, source.labels[:n_pool], [source.sample_id(i) for i in range(n_pool)])
        extract_features(backbone(config), {"pool": split, "test": split}, Path(tmp) / "f.h5", attrs={}, batch_size=256)
        features, labels = load_rows(Path(tmp) / "f.h5", "pool")
    recipe = ProxyRecipe.from_config(config["proxy"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proxy = train_proxy(features[labelled], labels[labelled], source.num_classes, recipe, seed=0)
        save_weights(proxy, Path(tmp) / "proxy.npz")  # scored as the select job scores: numpy, from proxy.npz
        weights = load_weights(Path(tmp) / "proxy.npz")
        for _ in proxy_chunks(weights, features, np.setdiff1d(np.arange(n_pool), labelled), INFERENCE_BATCH_SIZE):
            pass
        results = {f"proxy round: train + score {n_pool - n_labelled} (s)": time.perf_counter() - start}
    if ft_evaluation:
        ft = recipe_from_config("ft", config)
        torch.manual_seed(0)
        classifier = Classifier(backbone(config), source.num_classes)
        train_set = make_dataset(source, labelled, True, data["resolution"], data["resize"])
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train(classifier, train_set, ft, seed=0, device=torch.device("cpu"), checkpoint=Path(tmp) / "c.pt",
                  fingerprint=recipe_fingerprint(ft, 0, "bench"), log=lambda _: None)
            results[f"one FT evaluation, {ft.stages[0].epochs} epochs (s)"] = time.perf_counter() - start
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096, help="images per extraction pass")
    parser.add_argument("--ft-images", type=int, default=2048, help="labelled images of the timed fine-tune epoch")
    parser.add_argument("--labelled", type=int, default=400, help="labelled set of the proxy round")
    parser.add_argument("--pool", type=int, default=None, help="pool size of the proxy round (default: data.pool_subset)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; the best is kept")
    parser.add_argument("--skip-ft-evaluation", action="store_true", help="leave out the full default FT evaluation")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: checks that everything runs")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()
    config = load_config(REPO / "workflow_config.yaml")
    if args.quick:
        args.images, args.ft_images, args.labelled, args.repeats, args.skip_ft_evaluation = 512, 256, 100, 1, True
        args.pool = args.pool or 2000
    args.pool = args.pool or config["data"]["pool_subset"]
    torch.set_num_threads(2)
    budget = config["schedule"]["budgets"][1] if len(config["schedule"]["budgets"]) > 1 else 100
    results = {
        **bench_extraction(config, args.images, args.repeats),
        **bench_finetune_epoch(config, args.ft_images, args.repeats),
        **bench_proxy_jobs(config, args.pool, args.labelled, budget, args.repeats),
        **bench_round(config, args.labelled, args.pool, not args.skip_ft_evaluation),
    }
    command = " ".join(["python benchmarks/run_benchmarks.py", *(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                                 if k not in ("out", "quick", "skip_ft_evaluation"))])
    command += " --skip-ft-evaluation" * args.skip_ft_evaluation
    lines = [f"\n## {dt.datetime.now().isoformat(timespec='minutes')} on {platform.node()} "
             f"({torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()})\n",
             f"Command: `{command}`\n",
             "| measurement | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" if value < 10 else f"| {name} | {value:.1f} |" for name, value in results.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Benchmarks\n\nAppended by `make bench`; numbers depend on the machine and its load.\n")
    with out.open("a") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
