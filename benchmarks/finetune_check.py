"""One fine-tune on a seeded random labelled subset of the default pool: loss curve and test accuracy.

The harness behind the recipe figures in the README and workflow_config.yaml: it runs
the workflow's own fine-tune (`asvp.finetune.finetune_and_evaluate`, the one training loop)
with config overrides, so a recipe can be checked at one labelled-set size in a minute or two.

  python benchmarks/finetune_check.py 400 ft '{"finetune": {"batch_size": 100}}'
  python benchmarks/finetune_check.py 100 lpft '{"_seed": 2, "lpft": {"lp_epochs": 2}}'

benchmarks/convergence.py runs the schema's default recipes over architectures, weights and
labelled-set sizes.

Arguments: labelled images, recipe (ft | lpft), JSON overrides of config sections ("_seed"
picks the subset and training seed), optional torch threads (default 2).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from asvp import finetune
from asvp.steps.features import define_pool
from asvp.atomic import write_csv
from asvp.config import validate_config
from asvp.pool import read_split_table

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    n, kind, overrides = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}")
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    seed = int(overrides.pop("_seed", 0))
    raw = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values) if isinstance(values, dict) else raw.__setitem__(section, values)
    config = validate_config(raw, source="finetune_check overrides")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        define_pool(config, folder / "pool.csv", folder / "test.csv", folder / "info.json")
        pool = read_split_table(folder / "pool.csv")
        rows = np.random.default_rng([seed, 0]).choice(len(pool), n, replace=False)
        labelled = pd.DataFrame({"pool_index": rows, "sample_id": pool["sample_id"].to_numpy()[rows],
                                 "label": pool["label"].to_numpy()[rows], "round": 0})
        write_csv(folder / "labelled.csv", labelled)
        start = time.time()
        metrics = finetune.finetune_and_evaluate(config, kind, folder / "pool.csv", folder / "labelled.csv",
                                                   folder / "test.csv", seed, folder / "metrics.json", cache_dir=folder / "c")
    print(f"n={n} recipe={kind} seed={seed} overrides={json.dumps(overrides)} test accuracy {metrics['accuracy']:.4f} "
          f"({metrics['status']}, {time.time() - start:.0f} s)")
    print("loss per epoch:", " ".join(f"{h['stage']}{h['epoch']}:{h['loss']:.2f}" for h in metrics["loss_curve"]))


if __name__ == "__main__":
    main()
