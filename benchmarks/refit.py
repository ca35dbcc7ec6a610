"""Fine-tune one finished round's labelled set again, with recipe overrides or another training seed.

A point that falls on an accuracy curve is either the labelled set or the fine-tune; refitting the
same labelled.csv with another training seed or more steps tells which. Runs the workflow's own
fine-tune (`asvp.finetune.finetune_and_evaluate`, FT) with the experiment's effective config
(`results/<experiment>/config.yaml`), pool and test split, in a temporary cache.

  python benchmarks/refit.py results/fmnist_refresh_at600/asvp/margin/seed2/round009 --seed 12
  python benchmarks/refit.py results/.../round009 --seed 2 --set '{"finetune": {"epochs": 60, "milestones": [40, 50]}}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from asvp import finetune
from asvp.config import validate_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round_dir", type=Path, help="results/<experiment>/<method>/<strategy>/seed<k>/round<rrr>")
    parser.add_argument("--seed", type=int, required=True, help="the training seed (the run's is its seed)")
    parser.add_argument("--set", default="{}", help="JSON overrides of config sections")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    experiment = args.round_dir.parents[3]
    raw = yaml.safe_load((experiment / "config.yaml").read_text())
    for section, values in json.loads(args.set).items():
        raw.setdefault(section, {}).update(values)
    config = validate_config(raw, source="refit --set")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        metrics = finetune.finetune_and_evaluate(config, "ft", experiment / "data/pool.csv", args.round_dir / "labelled.csv",
                                                 experiment / "data/test.csv", args.seed, Path(tmp) / "metrics.json",
                                                 cache_dir=Path(tmp) / "cache")
    print(f"{args.round_dir} seed {args.seed} {args.set}: test accuracy {metrics['accuracy']:.4f}, final train accuracy "
          f"{metrics.get('final_train_accuracy', float('nan')):.3f}, loss {metrics['loss_curve'][-1]['loss']:.3f}, "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
