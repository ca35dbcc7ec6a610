"""Speed benchmarks, run on demand (`make bench`); results are appended to BENCHMARKS.md.

Measures, on the default setting (Fashion-MNIST at 32 px, ImageNet MobileNetV2):
  1. feature extraction throughput of `asvp.features.extract_features` (HDF5, chunked,
     resumable), next to a bare torch forward loop over the same, already-transformed images
     (the ceiling), and the same bare loop including the image transforms;
  2. one proxy round (train the MLP proxy on the labelled features + score the unlabelled
     pool) next to one fine-tuning evaluation on the same labelled set (the default FT recipe).
Warm-up calls precede every timing: oneDNN's first calls per input shape are very slow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asvp.backbones import build_backbone, resolve_checkpoint
from asvp.config import load_config
from asvp.data import ImageDataset, build_transform, open_source
from asvp.features import SplitInput, extract_features, load_rows
from asvp.proxy import ProxyRecipe, proxy_outputs, train_proxy
from asvp.training import Classifier, recipe_from_config, recipe_fingerprint, train

REPO = Path(__file__).resolve().parents[1]


def bench_extraction(config: dict, n_images: int) -> dict[str, float]:
    source = open_source("fashion_mnist", config["data"]["root"], "train")
    transform = build_transform(False, config["data"]["resolution"])
    dataset = ImageDataset(source, np.arange(n_images), transform)
    model = build_backbone("mobilenet_v2", resolve_checkpoint("default")).eval()
    batch = config["features"]["batch_size"]
    images = torch.stack([dataset[i][0] for i in range(n_images)])
    cl_model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            cl_model(images[:batch].contiguous(memory_format=torch.channels_last))
        start = time.perf_counter()
        for i in range(0, n_images, batch):
            cl_model(images[i : i + batch].contiguous(memory_format=torch.channels_last))
        bare = n_images / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, n_images, batch):
            x = torch.stack([dataset[j][0] for j in range(i, min(i + batch, n_images))])
            cl_model(x.contiguous(memory_format=torch.channels_last))
        bare_with_transforms = n_images / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        split = SplitInput(dataset, source.labels[:n_images], [source.sample_id(i) for i in range(n_images)])
        start = time.perf_counter()
        extract_features(model, {"pool": split, "test": split}, Path(tmp) / "f.h5", attrs={"bench": 1},
                         batch_size=batch, chunk_rows=config["features"]["chunk_rows"])
        ours = 2 * n_images / (time.perf_counter() - start)
    return {"bare forward (img/s)": bare, "bare forward + transforms (img/s)": bare_with_transforms,
            "extract_features to HDF5 (img/s)": ours}


def bench_round(config: dict, n_labelled: int, n_pool: int) -> dict[str, float]:
    source = open_source("fashion_mnist", config["data"]["root"], "train")
    rng = np.random.default_rng(0)
    labelled = np.sort(rng.choice(n_pool, n_labelled, replace=False))
    model = build_backbone("mobilenet_v2", resolve_checkpoint("default")).eval()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = ImageDataset(source, np.arange(n_pool), build_transform(False, 32))
        split = SplitInput(dataset, source.labels[:n_pool], [source.sample_id(i) for i in range(n_pool)])
        extract_features(model, {"pool": split, "test": split}, Path(tmp) / "f.h5", attrs={}, batch_size=256)
        features, labels = load_rows(Path(tmp) / "f.h5", "pool")
    recipe = ProxyRecipe.from_config(config["proxy"])
    start = time.perf_counter()
    proxy = train_proxy(features[labelled], labels[labelled], 10, recipe, seed=0)
    unlabelled = np.setdiff1d(np.arange(n_pool), labelled)
    proxy_outputs(proxy, features, unlabelled, recipe.inference_batch_size)
    proxy_seconds = time.perf_counter() - start
    train_set = ImageDataset(source, labelled, build_transform(True, 32))
    ft = recipe_from_config("ft", config)
    torch.manual_seed(0)
    classifier = Classifier(build_backbone("mobilenet_v2", resolve_checkpoint("default")), 10)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(classifier, train_set, ft, seed=0, device=torch.device("cpu"), checkpoint=Path(tmp) / "c.pt",
              fingerprint=recipe_fingerprint(ft, 0, "bench"), log=lambda _: None)
        ft_seconds = time.perf_counter() - start
    return {f"proxy round: train + score {n_pool - n_labelled} (s)": proxy_seconds,
            f"one FT evaluation, {ft.stages[0].epochs} epochs (s)": ft_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--labelled", type=int, default=400)
    parser.add_argument("--pool", type=int, default=10000)
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(REPO / "workflow_config.yaml")
    results = {**bench_extraction(config, args.images), **bench_round(config, args.labelled, args.pool)}
    lines = [f"\n## {dt.datetime.now().isoformat(timespec='minutes')} on {platform.node()} "
             f"({torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()})\n",
             f"Command: `python benchmarks/run_benchmarks.py --images {args.images} --labelled {args.labelled} --pool {args.pool}`\n",
             "| measurement | value |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in results.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Benchmarks\n\nAppended by `make bench`; numbers depend on the machine and its load.\n")
    with out.open("a") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
