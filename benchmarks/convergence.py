"""Do the schema's default recipes converge? FT and LP-FT for every architecture, from the packaged
pre-trained weights and from randomly initialised weights saved as a checkpoint file.

Each cell is what a new user gets: a config that sets only `data:` and `backbone:` (plus
`--set` overrides, to try other recipes), validated against the schema, and the workflow's own
fine-tune (`asvp.finetune.finetune_and_evaluate`) on a seeded random labelled subset of
Fashion-MNIST at 32 px (--resolution). A cell converges when its final-epoch train accuracy is above 0.9 and
the divergence guard says `ok`.

  python benchmarks/convergence.py                                   # the whole grid
  python benchmarks/convergence.py --arch resnet50 --weights random --labels 1000 --recipe ft
  python benchmarks/convergence.py --set '{"finetune": {"lr_head": 0.1}}'
  python benchmarks/convergence.py --arch mobilenet_v2 --weights packaged --labels 400 --recipe ft --resolution 64

The test subset (--test-subset, default 2000 images) only sets how the test accuracy is
measured; training does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asvp import finetune
from asvp.steps.features import define_pool
from asvp.atomic import write_csv
from asvp.config import validate_config
from asvp.pool import read_split_table

ARCHS = ("mobilenet_v2", "resnet18", "resnet50")
PACKAGED = {"mobilenet_v2"}  # the archs with packaged pre-trained weights (backbone.checkpoint: default)


def random_checkpoint(arch: str, folder: Path) -> Path:
    """A randomly initialised backbone's state_dict (any torchvision or timm name), saved as a checkpoint file."""
    from asvp.backbones import build_backbone

    torch.manual_seed(0)
    path = folder / f"{arch.replace('/', '_')}_random_init.pth"
    torch.save(build_backbone(arch, None).state_dict(), path)
    return path


def merge(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def run_cell(arch: str, weights: str, n: int, recipe: str, args: argparse.Namespace, folder: Path) -> dict:
    checkpoint = "default" if weights == "packaged" else str(random_checkpoint(arch, folder))
    raw = {"experiment": "convergence", "device": "cpu",
           "data": {"dataset": "fashion_mnist", "test_subset": args.test_subset, "resolution": args.resolution},
           "backbone": {"arch": arch, "checkpoint": checkpoint}}
    config = validate_config(merge(raw, json.loads(args.set)), source="convergence grid")
    cell = folder / f"{arch.replace('/', '_')}_{weights}_{n}_{recipe}"
    cell.mkdir()
    define_pool(config, cell / "pool.csv", cell / "test.csv", cell / "info.json")
    pool = read_split_table(cell / "pool.csv")
    rows = np.random.default_rng([args.seed, 0]).choice(len(pool), n, replace=False)
    write_csv(cell / "labelled.csv", pd.DataFrame({"pool_index": rows, "sample_id": pool["sample_id"].to_numpy()[rows],
                                                   "label": pool["label"].to_numpy()[rows], "round": 0}))
    start = time.time()
    metrics = finetune.finetune_and_evaluate(config, recipe, cell / "pool.csv", cell / "labelled.csv",
                                               cell / "test.csv", args.seed, cell / "metrics.json", cache_dir=cell / "c")
    curve = metrics["loss_curve"]
    return {"arch": arch, "weights": weights, "labels": n, "recipe": recipe,
            "train_acc": metrics["final_train_accuracy"], "loss": curve[-1]["loss"], "test_acc": metrics["accuracy"],
            "status": metrics["status"], "seconds": round(time.time() - start),
            "curve": " ".join(f"{h['stage']}{h['epoch']}:{h['loss']:.2f}/{h['train_accuracy']:.2f}" for h in curve)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), help="any backbone.arch (default: the three CNNs)")
    parser.add_argument("--weights", nargs="+", default=["packaged", "random"], choices=["packaged", "random"])
    parser.add_argument("--labels", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--recipe", nargs="+", default=["ft", "lpft"], choices=["ft", "lpft"])
    parser.add_argument("--set", default="{}", help="JSON overrides laid over data: and backbone:")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=32, help="data.resolution: the side in pixels (default 32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--curves", action="store_true", help="print each cell's loss/accuracy per epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = f"{'arch':<13} {'weights':<9} {'labels':>6} {'recipe':<6} {'train acc':>9} {'loss':>7} {'test acc':>8} {'status':<9} {'s':>5}"
    print(f"overrides: {args.set}\n{header}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            for weights in args.weights:
                if weights == "packaged" and arch not in PACKAGED:
                    continue
                for n in args.labels:
                    for recipe in args.recipe:
                        r = run_cell(arch, weights, n, recipe, args, Path(tmp))
                        results.append(r)
                        print(f"{r['arch']:<13} {r['weights']:<9} {r['labels']:>6} {r['recipe']:<6} {r['train_acc']:>9.3f} "
                              f"{r['loss']:>7.3f} {r['test_acc']:>8.3f} {r['status']:<9} {r['seconds']:>5}", flush=True)
                        if args.curves:
                            print("   ", r["curve"], flush=True)
    failed = [r for r in results if not (r["train_acc"] > 0.9 and r["status"] == "ok")]
    print(f"{len(results) - len(failed)}/{len(results)} cells converged (train accuracy > 0.9, status ok)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
