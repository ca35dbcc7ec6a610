"""Does the proxy fit its labelled set at every size? Train loss and cycles of the proxy on
margin-selected labelled sets of growing size, from a finished run's features.

The sets are the run's last labelled set plus the pool images with the smallest margin under a
proxy trained on it (the images margin selection would add next), so they are as hard to fit as
the sets SVPp/ASVP reach. Each size trains the paper's single cycle (proxy.max_cycles 1) and the
config's default recipe.

  python benchmarks/proxy_convergence.py results/fmnist_default/features/pretrained.h5 \\
      results/fmnist_default/svpp/margin/seed0/round006/labelled.csv --sizes 100 400 1000 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from asvp import features as feature_store
from asvp.proxy import ProxyRecipe, train_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", help="a run's features/pretrained.h5")
    parser.add_argument("labelled", help="a labelled.csv of that run (the margin sets grow from it)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 400, 1000, 2000])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with feature_store.open_features(args.features) as handle:
        x, y = handle["pool/features"][:], handle["pool/labels"][:]
    labelled = pd.read_csv(args.labelled)["pool_index"].to_numpy()
    seed_proxy = train_proxy(x[labelled], y[labelled], int(y.max()) + 1, ProxyRecipe(max_cycles=1), seed=0)
    with torch.no_grad():
        top2 = torch.softmax(seed_proxy(torch.as_tensor(x)), 1).topk(2, dim=1).values.numpy()
    margin = top2[:, 0] - top2[:, 1]
    margin[labelled] = np.inf
    order = np.argsort(margin, kind="stable")
    print(f"{'labels':>6} {'recipe':<10} {'cycles':>6} {'steps':>5} {'last-pass loss':>14} {'eval-mode loss':>14} {'s':>6}")
    for n in args.sizes:
        rows = np.concatenate([labelled, order[: max(0, n - len(labelled))]])[:n]
        for name, recipe in (("paper", ProxyRecipe(max_cycles=1)), ("default", ProxyRecipe())):
            start = time.time()
            model = train_proxy(x[rows], y[rows], int(y.max()) + 1, recipe, seed=0)
            with torch.no_grad():
                loss = float(nn.functional.cross_entropy(model(torch.as_tensor(x[rows])), torch.as_tensor(y[rows])))
            record = model.fit_record
            print(f"{n:>6} {name:<10} {record['cycles']:>6.0f} {record['steps']:>5.0f} {record['final_train_loss']:>14.3f} "
                  f"{loss:>14.3f} {time.time() - start:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
