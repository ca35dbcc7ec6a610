"""Strategy benchmark at ImageNet shape: wall time and peak RSS of proxy scoring and of every
strategy picking k samples, next to the plain references (LabelBench-style chunked exact
k-center greedy and k-means++: one full distance pass per pick).

    python benchmarks/strategies.py                      # 1.28M x 2048 float16, 1000 classes
    python benchmarks/strategies.py --scale 0.01         # 12.8k rows: seconds
    python benchmarks/strategies.py --picks 10000 50000 --ref-picks 200 --out BENCHMARKS.md

The synthetic pool (clustered: 1000 class centres plus noise, so distances are not all alike)
is written once under --data-dir as .npy memory maps and reused. Every measurement runs in its
own process, so its peak RSS is its own. The references are timed on their first --ref-picks
picks and extrapolated linearly to the full pick count (said so in the table); pick identity
with the fast version is checked on those first picks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

FULL_ROWS, FULL_DIM, FULL_CLASSES = 1_281_167, 2048, 1000
TASKS = ("bare_forward", "proxy_margin", "margin", "coreset", "badge", "activeft", "coreset_ref", "badge_ref")


def shape(scale: float) -> tuple[int, int, int]:
    """Rows, dims and classes at a scale: rows shrink linearly, dims and classes more slowly."""
    if scale >= 1:
        return FULL_ROWS, FULL_DIM, FULL_CLASSES
    return max(200, int(FULL_ROWS * scale)), max(32, int(FULL_DIM * scale ** 0.5)), max(10, int(FULL_CLASSES * scale ** 0.5))


def make_pool(data_dir: Path, scale: float, seed: int = 0) -> dict[str, Path]:
    """Write (once) pool features (U, D) float16, proxy probabilities (U, C) float16 and random
    proxy weights; return their paths."""
    rows, dim, classes = shape(scale)
    stem = data_dir / f"pool_{rows}x{dim}x{classes}"
    paths = {"features": stem.with_suffix(".features.npy"), "probabilities": stem.with_suffix(".probabilities.npy"),
             "weights": stem.with_suffix(".proxy.npz")}
    if all(p.exists() for p in paths.values()):
        return paths
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    head = rng.normal(size=(dim, classes)).astype(np.float32) / np.sqrt(dim)
    features = np.lib.format.open_memmap(paths["features"].with_suffix(".tmp.npy"), "w+", np.float16, (rows, dim))
    probabilities = np.lib.format.open_memmap(paths["probabilities"].with_suffix(".tmp.npy"), "w+", np.float16, (rows, classes))
    for start in range(0, rows, 65536):
        n = min(65536, rows - start)
        x = np.maximum(centres[rng.integers(classes, size=n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32), 0)
        features[start : start + n] = x
        logits = x @ head * 4
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        probabilities[start : start + n] = p / p.sum(axis=1, keepdims=True)
    features.flush(), probabilities.flush()
    del features, probabilities
    np.savez(paths["weights"].with_suffix(".tmp.npz"), hidden_weight=rng.normal(size=(dim, dim)) / np.sqrt(dim),
             hidden_bias=np.zeros(dim), bn_weight=np.ones(dim), bn_bias=np.zeros(dim), bn_running_mean=np.zeros(dim),
             bn_running_var=np.ones(dim), classifier_weight=rng.normal(size=(classes, dim)) / np.sqrt(dim),
             classifier_bias=np.zeros(classes))
    for name, path in paths.items():
        (path.with_suffix(".tmp.npz") if name == "weights" else path.with_suffix(".tmp.npy")).replace(path)
    return paths


def worker(task: str, paths: dict[str, Path], picks: int, labelled: int) -> dict[str, object]:
    """One measurement in this process: seconds, the picks' checksum (or the picks themselves)."""
    from asvp.proxy_scoring import load_weights, proxy_chunks
    from asvp.strategies import PoolState, get_strategy
    from asvp.strategies.badge import kmeanspp, kmeanspp_reference
    from asvp.strategies.coreset import kcenter_greedy, kcenter_greedy_reference

    features = np.load(paths["features"], mmap_mode="r")
    probabilities = np.load(paths["probabilities"], mmap_mode="r")
    rows = len(features)
    unlabelled = np.arange(labelled, rows, dtype=np.int64)
    pool, lab = features[labelled:], features[:labelled]
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    result: object = None
    if task in ("bare_forward", "proxy_margin"):
        weights = load_weights(paths["weights"])
        if task == "bare_forward":  # the floor: the MLP's matrix products over the same features
            w1, w2 = weights["hidden_weight"].T.copy(), weights["classifier_weight"].T.copy()
            for start in range(0, rows, 16384):
                np.maximum(np.asarray(features[start : start + 16384], dtype=np.float32) @ w1, 0) @ w2
        else:
            margin = get_strategy("margin")
            scores = np.empty(rows)
            for start, p, _ in proxy_chunks(weights, features, np.arange(rows), 16384):
                scores[start : start + len(p)] = margin.score(PoolState(unlabelled=np.arange(len(p)), labelled=unlabelled[:0],
                                                                        probabilities=p), rng)
    elif task == "margin":
        result = get_strategy("margin").select(PoolState(unlabelled, unlabelled[:0], probabilities=np.asarray(
            probabilities[labelled:], dtype=np.float32)), picks, rng)[0]
    elif task == "coreset":
        result = kcenter_greedy(pool, lab, picks, rng)[0]
    elif task == "coreset_ref":
        result = kcenter_greedy_reference(pool, lab, picks, rng)[0]
    elif task == "badge":
        result = kmeanspp(probabilities[labelled:], pool, picks, rng)
    elif task == "badge_ref":
        result = kmeanspp_reference(probabilities[labelled:], pool, picks, rng)
    elif task == "activeft":
        from asvp.strategies.activeft import activeft_select

        result = activeft_select(pool, lab, picks, rng)[0]
    seconds = time.perf_counter() - started
    return {"task": task, "seconds": seconds, "picks": picks,
            "first_picks": np.asarray(result)[:1000].tolist() if result is not None else None,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_worker(task: str, data_dir: Path, scale: float, picks: int, labelled: int) -> dict[str, object]:
    command = [sys.executable, __file__, "--worker", task, "--data-dir", str(data_dir), "--scale", str(scale),
               "--picks", str(picks), "--labelled", str(labelled)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark(scale: float, picks: list[int], ref_picks: int, data_dir: Path, labelled: int) -> list[dict[str, object]]:
    make_pool(data_dir, scale)
    rows: list[dict[str, object]] = []
    for task in ("bare_forward", "proxy_margin"):
        rows.append(run_worker(task, data_dir, scale, 0, labelled))
    for k in picks:
        for task in ("margin", "coreset", "badge", "activeft"):
            rows.append(run_worker(task, data_dir, scale, k, labelled))
    for task in ("coreset_ref", "badge_ref"):
        measured = run_worker(task, data_dir, scale, ref_picks, labelled)
        fast = next(r for r in rows if r["task"] == task.removesuffix("_ref"))
        measured["same_picks"] = measured["first_picks"] == fast["first_picks"][:ref_picks]
        rows.append(measured)
    return rows


def table(rows: list[dict[str, object]], scale: float, picks: list[int], ref_picks: int) -> str:
    u, d, c = shape(scale)
    lines = [f"### Strategies at {u} x {d} float16, {c} classes ({dt.date.today()}, {platform.node()}, "
             f"{os.cpu_count()} CPUs)", "", f"`python benchmarks/strategies.py --scale {scale} --picks {' '.join(map(str, picks))} "
             f"--ref-picks {ref_picks}`", "", "| task | picks | seconds | peak RSS (GB) | note |", "|---|--:|--:|--:|---|"]
    for r in rows:
        note = ""
        if r["task"].endswith("_ref"):
            per_pick = r["seconds"] / max(1, r["picks"])
            note = (f"first {r['picks']} picks {'identical' if r.get('same_picks') else 'DIFFER'}; extrapolated: "
                    + ", ".join(f"{per_pick * k:.0f} s for {k}" for k in picks))
        lines.append(f"| {r['task']} | {r['picks']} | {r['seconds']:.2f} | {r['peak_rss_gb']:.2f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--picks", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--ref-picks", type=int, default=200)
    parser.add_argument("--labelled", type=int, default=None, help="rows treated as labelled (default: 10000 x scale)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / "data")
    parser.add_argument("--out", type=Path, default=None, help="append the table to this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--worker", choices=TASKS)
    args = parser.parse_args(argv)
    labelled = args.labelled if args.labelled is not None else max(10, int(10000 * min(args.scale, 1)))
    if args.worker:
        paths = make_pool(args.data_dir, args.scale)
        print(json.dumps(worker(args.worker, paths, args.picks[0], labelled)))
        return 0
    rows = benchmark(args.scale, args.picks, args.ref_picks, args.data_dir, labelled)
    text = table(rows, args.scale, args.picks, args.ref_picks)
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
