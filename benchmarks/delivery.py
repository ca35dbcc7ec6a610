"""What writing a run's delivery (asvp.steps.evaluate.deliver) costs past the fine-tune: the
model file, the TorchScript export and the predictions for the unlabelled pool, at the default
experiment's scale (workflow_config.yaml: Fashion-MNIST pool of 10,000, MobileNetV2 at 32 px,
400 labels at the last round).

The weights are the packaged ImageNet backbone with a fresh head: the timing and the file sizes
do not depend on what the weights hold, and the fine-tune is measured elsewhere.

    PYTHONPATH=src python benchmarks/delivery.py [--labels 400] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asvp import delivery
from asvp.atomic import write_csv
from asvp.backbones import pretrained_backbone
from asvp.config import load_config
from asvp.device import resolve_device
from asvp.pool import read_split_table
from asvp.steps.features import define_pool
from asvp.training import Classifier

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=400)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    config = load_config(REPO / "workflow_config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        define_pool(config, str(folder / "pool.csv"), str(folder / "test.csv"), str(folder / "dataset.json"))
        pool = read_split_table(folder / "pool.csv")
        rows = np.sort(np.random.default_rng(0).choice(len(pool), args.labels, replace=False))
        labelled = pd.DataFrame({"pool_index": rows, "sample_id": pool["sample_id"].to_numpy()[rows],
                                 "label": pool["label"].to_numpy()[rows], "round": 0})
        backbone, _ = pretrained_backbone(config["backbone"])
        torch.manual_seed(0)
        model = Classifier(backbone, 10)
        classes = [str(i) for i in range(10)]
        seconds = {}
        started = time.perf_counter()
        delivery.save_model(folder / "model.pt", model, config["backbone"]["arch"], classes,
                            delivery.preprocessing_of(config["data"]), {"n_labelled": args.labels})
        seconds["model.pt"] = time.perf_counter() - started
        started = time.perf_counter()
        loaded = delivery.load_model(folder / "model.pt")
        seconds["load"] = time.perf_counter() - started
        started = time.perf_counter()
        delivery.export_torchscript(loaded, folder / "model.torchscript.pt")
        seconds["torchscript"] = time.perf_counter() - started
        started = time.perf_counter()
        predictions = delivery.pool_predictions(loaded, config["data"], pool, labelled, resolve_device(args.device))
        write_csv(folder / "predictions.csv", predictions)
        seconds["predictions"] = time.perf_counter() - started
        print(f"pool {len(pool)}, {args.labels} labelled, {len(predictions)} predicted on {args.device}, "
              f"torch threads {torch.get_num_threads()}")
        print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
              + f"; total {sum(seconds.values()):.2f}")
        print(f"model.pt {(folder / 'model.pt').stat().st_size / 1e6:.1f} MB, model.torchscript.pt "
              f"{(folder / 'model.torchscript.pt').stat().st_size / 1e6:.1f} MB, predictions.csv "
              f"{(folder / 'predictions.csv').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
