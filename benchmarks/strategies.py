"""Strategy benchmark at ImageNet shape: wall time and peak RSS of proxy scoring and of every
strategy picking k samples, next to the plain references (LabelBench-style chunked exact
k-center greedy and k-means++: one full distance pass per pick).

    python benchmarks/strategies.py                      # 1.28M x 2048 float16, 1000 classes
    python benchmarks/strategies.py --scale 0.01         # 12.8k rows: seconds
    python benchmarks/strategies.py --picks 10000 50000 --ref-picks 200 --out BENCHMARKS.md
    python benchmarks/strategies.py --tasks activeft --activeft-iterations 5   # extrapolated to 100

The synthetic pool (clustered: 1000 class centres plus noise, so distances are not all alike)
is written once under --data-dir as .npy memory maps and reused. Every measurement runs in its
own process, so its peak RSS is its own; the table gives the peak RSS (VmHWM, which counts the pages of
the memory-mapped pool read, dropped by the kernel when memory is short) and the peak of the
private (anonymous) memory, which is what a run must have. The references are timed on their first --ref-picks
picks and extrapolated linearly to the full pick count (said so in the table); pick identity
with the fast version is checked on those first picks. Approximate BADGE (candidate subset and a
random projection of the hidden embedding) is compared with exact BADGE by the share of picks
they have in common, next to the share two exact runs with different rngs have in common.

Each finished task is appended to <data-dir>/results_<pool>.jsonl; a rerun skips what is there
(`--fresh` forgets it), so a full-scale run that takes hours can be stopped and resumed.
`--task-timeout S` stops a task after S seconds and records that it did not finish.
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

# --activeft-iterations fewer than ActiveFT's default times the same work per iteration at full
# scale (hours on 2 CPU cores) and extrapolates to the default.
from asvp.strategies.activeft import ITERATIONS as ACTIVEFT_ITERATIONS  # noqa: E402 (after the path insert)

FULL_ROWS, FULL_DIM, FULL_CLASSES = 1_281_167, 2048, 1000
TASKS = ("bare_forward", "proxy_margin", "margin", "coreset", "badge", "badge_seed2", "badge_approx", "activeft",
         "coreset_ref", "badge_ref")
# The approximate BADGE measured: the official code's candidate count (320k of 1.28M) and a
# 256-d random projection of the hidden embedding, scaled with the pool.
APPROX_CANDIDATES, APPROX_PROJECTION = 320_000, 256


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


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM), in GB.

    Not ru_maxrss: Linux carries it over from the parent across fork and exec, so a worker
    started by a parent that had just written the pool (about 10 GB resident) reported the
    parent's peak, not its own.
    """
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # no /proc: the best there is


class AnonymousPeak:
    """Peak of the process's anonymous (private) resident memory, sampled from /proc every 0.2 s.

    The peak RSS also counts the pages of the memory-mapped pool that were read (file cache the
    kernel can drop at any time: up to the 5.2 GB of features); this is what the process holds.
    """

    def __init__(self) -> None:
        import threading

        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak_kb / 2**20


class PickClock:
    """Stands in for the rng of a k-means++ run: draws pass through to `rng`, and each draw (one
    per pick after the first) is timed, so a run stopped at `deadline` still says how many picks
    it made, and when."""

    class Stop(Exception):
        pass

    def __init__(self, rng: np.random.Generator, deadline: float | None) -> None:
        self.rng, self.deadline, self.times = rng, deadline, [time.perf_counter()]

    def random(self) -> float:
        now = time.perf_counter()
        if self.deadline is not None and now > self.deadline:
            raise PickClock.Stop
        self.times.append(now)
        return self.rng.random()


def worker(task: str, paths: dict[str, Path], picks: int, labelled: int, limit: float | None = None,
           activeft_iterations: int = ACTIVEFT_ITERATIONS) -> dict[str, object]:
    """One measurement in this process: seconds, the picks' checksum (or the picks themselves)."""
    from asvp.proxy_scoring import load_weights, proxy_chunks
    from asvp.strategies import PoolState, get_strategy
    from asvp.strategies.kmeanspp import kmeanspp, kmeanspp_reference
    from asvp.strategies.coreset import kcenter_greedy, kcenter_greedy_reference

    features = np.load(paths["features"], mmap_mode="r")
    probabilities = np.load(paths["probabilities"], mmap_mode="r")
    rows = len(features)
    unlabelled = np.arange(labelled, rows, dtype=np.int64)
    pool, lab = features[labelled:], features[:labelled]
    rng = np.random.default_rng(1)
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    result: object = None
    partial: dict[str, object] = {}
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
    elif task == "margin":  # as the workflow does: scores chunk by chunk, then the top `picks`
        from asvp.strategies.base import top_scores

        margin, scores = get_strategy("margin"), np.empty(len(unlabelled))
        for start in range(0, len(unlabelled), 16384):
            rows = unlabelled[start : start + 16384]
            scores[start : start + len(rows)] = margin.score(PoolState(rows, unlabelled[:0], probabilities=np.asarray(
                probabilities[rows[0] : rows[-1] + 1], dtype=np.float32)), rng)
        result = top_scores(unlabelled, scores, picks) - labelled
    elif task == "coreset":
        result = kcenter_greedy(pool, lab, picks, rng)[0]
    elif task == "coreset_ref":
        result = kcenter_greedy_reference(pool, lab, picks, rng)[0]
    elif task == "badge":  # stopped after `limit` seconds, if given: then the picks made are reported
        clock = PickClock(rng, None if limit is None else started + limit)
        try:
            result = kmeanspp(probabilities[labelled:], pool, picks, clock)  # type: ignore[arg-type]
            # seconds after every 1000th draw, so a 10k run extrapolates to 50k from its own trend
            partial = {"seconds_at_draw": {n: clock.times[n] - started for n in range(1000, len(clock.times), 1000)}}
        except PickClock.Stop:
            done = len(clock.times)
            last = clock.times[-1] - clock.times[max(0, done - 1 - max(1, done // 10))]
            partial = {"picks_done": done, "seconds_to_first_pick": clock.times[0] - started,
                       "seconds_per_pick_last_10pct": last / max(1, done // 10)}
    elif task == "badge_seed2":  # the overlap two exact runs with different rngs reach: the yardstick
        result = kmeanspp(probabilities[labelled:], pool, picks, np.random.default_rng(2))
    elif task == "badge_approx":
        from asvp.strategies.kmeanspp import kmeanspp_approximate

        candidates = max(picks, int(APPROX_CANDIDATES * rows / FULL_ROWS))
        result = kmeanspp_approximate(probabilities[labelled:], pool, picks, rng, candidates,
                                      min(APPROX_PROJECTION, pool.shape[1]))
    elif task == "badge_ref":
        result = kmeanspp_reference(probabilities[labelled:], pool, picks, rng)
    elif task == "activeft":  # its final matching timed apart, so fewer iterations extrapolate to the default
        from asvp.strategies import activeft

        match, matching = activeft._match, []

        def timed_match(*args: object, **kwargs: object) -> object:
            begun = time.perf_counter()
            out = match(*args, **kwargs)
            matching.append(time.perf_counter() - begun)
            return out

        activeft._match = timed_match
        result = activeft.activeft_select(pool, lab, picks, rng, iterations=activeft_iterations)[0]
        partial = {"iterations": activeft_iterations, "seconds_matching": matching[0]}
    seconds = time.perf_counter() - started
    if task == "activeft" and activeft_iterations < ACTIVEFT_ITERATIONS:
        optimising = seconds - float(partial["seconds_matching"])  # with the initial reads, so a little high
        partial["extrapolated_seconds"] = float(partial["seconds_matching"]) + optimising * ACTIVEFT_ITERATIONS / max(
            1, activeft_iterations)
    peak_anonymous = anonymous.stop()
    if task == "badge" and result is None:
        return {"task": task, "seconds": seconds, "picks": picks, "first_picks": None, "stopped_at_limit": True,
                **partial, "peak_rss_gb": peak_rss_gb(),
                "peak_anon_gb": peak_anonymous}
    if result is not None:
        np.save(picks_path(paths, task, picks), np.asarray(result, dtype=np.int64))
    return {"task": task, "seconds": seconds, "picks": picks, **partial,
            "first_picks": np.asarray(result)[:1000].tolist() if result is not None else None,
            "peak_rss_gb": peak_rss_gb(), "peak_anon_gb": peak_anonymous}


def picks_path(paths: dict[str, Path], task: str, picks: int) -> Path:
    return paths["features"].parent / f"picks_{paths['features'].name.split('.')[0]}_{task}_{picks}.npy"


def run_worker(task: str, data_dir: Path, scale: float, picks: int, labelled: int, timeout: float | None,
               activeft_iterations: int = ACTIVEFT_ITERATIONS) -> dict[str, object]:
    """One task in a child process; a task past `timeout` seconds is recorded as such, not lost."""
    command = [sys.executable, __file__, "--worker", task, "--data-dir", str(data_dir), "--scale", str(scale),
               "--picks", str(picks), "--labelled", str(labelled), "--activeft-iterations", str(activeft_iterations)]
    if timeout is not None and task == "badge":  # stop itself before the timeout and say how far it got
        command += ["--pick-limit", str(max(1.0, timeout - 120))]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    started = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"task": task, "picks": picks, "seconds": timeout, "timed_out": True, "peak_rss_gb": float("nan"),
                "peak_anon_gb": float("nan")}
    except subprocess.CalledProcessError as error:  # e.g. killed for memory: recorded, the others still run
        return {"task": task, "picks": picks, "seconds": time.perf_counter() - started, "failed": error.returncode,
                "stderr": error.stderr[-500:], "peak_rss_gb": float("nan"), "peak_anon_gb": float("nan")}
    return json.loads(out.stdout.strip().splitlines()[-1])


def overlap(paths: dict[str, Path], task: str, other: str, picks: int) -> float | None:
    """Share of `task`'s picks that `other` also picked (both of `picks` samples), if both ran."""
    a, b = picks_path(paths, task, picks), picks_path(paths, other, picks)
    if not (a.exists() and b.exists()):
        return None
    return len(np.intersect1d(np.load(a), np.load(b))) / picks


def kmeans_cost(paths: dict[str, Path], picked: np.ndarray, labelled: int, chunk: int = 2048) -> float:
    """Mean over the unlabelled rows of the squared gradient-embedding distance to the nearest pick.

    BADGE's D^2 sampling seeds k-means++ on this objective, so it says how well a set of picks
    covers the pool where pick overlap cannot: two exact runs with different rngs share barely
    more picks than random sets do, yet cover the pool alike. Exact, O(U x K x (C + D)): for
    pools of a few 100k rows (--coverage).
    """
    features = np.load(paths["features"], mmap_mode="r")[labelled:]
    probabilities = np.load(paths["probabilities"], mmap_mode="r")[labelled:]

    def gradient_factors(rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(probabilities[rows], dtype=np.float64)
        a[np.arange(len(a)), a.argmax(axis=1)] -= 1.0
        return a, np.asarray(features[rows], dtype=np.float64)

    centre_a, centre_h = gradient_factors(np.sort(picked))
    centre_sq = np.einsum("ij,ij->i", centre_a, centre_a) * np.einsum("ij,ij->i", centre_h, centre_h)
    total = 0.0
    for start in range(0, len(features), chunk):
        a, h = gradient_factors(slice(start, start + chunk))
        sq = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h)
        d = sq[:, None] + centre_sq[None, :] - 2.0 * (a @ centre_a.T) * (h @ centre_h.T)
        total += float(np.maximum(d.min(axis=1), 0.0).sum())
    return total / len(features)


def benchmark(scale: float, picks: list[int], ref_picks: int, data_dir: Path, labelled: int,
              tasks: tuple[str, ...] = TASKS, timeout: float | None = None, fresh: bool = False,
              activeft_iterations: int = ACTIVEFT_ITERATIONS, coverage: bool = False) -> list[dict[str, object]]:
    """Run every (task, picks) not yet in the results file of this pool; return all its rows.

    Results are appended to <data-dir>/results_<pool>.jsonl as each task ends, so an interrupted
    full-scale run (hours) resumes with the tasks it has not finished.
    """
    paths = make_pool(data_dir, scale)
    log = data_dir / f"results_{paths['features'].name.split('.')[0]}.jsonl"
    if fresh:
        log.unlink(missing_ok=True)
    done = {(r["task"], r["picks"]): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    plan = [(t, 0) for t in ("bare_forward", "proxy_margin")]
    plan += [(t, k) for k in picks for t in ("margin", "coreset", "badge", "badge_seed2", "badge_approx", "activeft")]
    plan += [(t, ref_picks) for t in ("coreset_ref", "badge_ref")]
    for task, k in plan:
        if task not in tasks or ((task, k) in done and (
                task != "activeft" or done[(task, k)].get("iterations", ACTIVEFT_ITERATIONS) == activeft_iterations)):
            continue
        row = run_worker(task, data_dir, scale, k, labelled, timeout, activeft_iterations)
        print(json.dumps({key: v for key, v in row.items() if key != "first_picks"}), file=sys.stderr, flush=True)
        done[(task, k)] = row
        with open(log, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    rows = [done[key] for key in plan if key in done]
    uniform_coverage: dict[int, float] = {}
    for r in rows:
        if r["task"].endswith("_ref") and not r.get("timed_out"):
            # any finished fast run of the same strategy will do, whatever its --picks: its first picks are the same
            fast = [f for f in done.values() if f["task"] == r["task"].removesuffix("_ref")
                    and len(f.get("first_picks") or []) >= r["picks"]]
            r["same_picks"] = None
            if fast:
                r["same_picks"] = r["first_picks"] == fast[0]["first_picks"][: r["picks"]]
        if r["task"] in ("badge_seed2", "badge_approx"):
            r["overlap"] = overlap(paths, r["task"], "badge", r["picks"])
        if coverage and r["task"] in ("badge", "badge_seed2", "badge_approx") and picks_path(paths, r["task"], r["picks"]).exists():
            r["coverage"] = kmeans_cost(paths, np.load(picks_path(paths, r["task"], r["picks"])), labelled)
            if r["picks"] not in uniform_coverage:  # the same yardstick for every BADGE run of this size
                uniform = np.random.default_rng(3).choice(shape(scale)[0] - labelled, r["picks"], replace=False)
                uniform_coverage[r["picks"]] = kmeans_cost(paths, uniform, labelled)
            r["coverage_random"] = uniform_coverage[r["picks"]]
    return rows


def table(rows: list[dict[str, object]], scale: float, picks: list[int], ref_picks: int, labelled: int = 0) -> str:
    u, d, c = shape(scale)
    lines = [f"### Strategies at {u} x {d} float16, {c} classes ({dt.date.today()}, {platform.node()}, "
             f"{os.cpu_count()} CPUs)", "", f"`python benchmarks/strategies.py --scale {scale} --picks {' '.join(map(str, picks))} "
             f"--ref-picks {ref_picks}`", "", "| task | picks | seconds | peak RSS (GB) | peak private (GB) | note |", "|---|--:|--:|--:|--:|---|"]
    for r in rows:
        note = ""
        if r.get("timed_out"):
            note = f"did not finish within {r['seconds']:.0f} s (stopped)"
        elif r.get("stopped_at_limit"):
            note = (f"stopped after {r['seconds']:.0f} s with {r['picks_done']} of {r['picks']} picks (first pick after "
                    f"{r['seconds_to_first_pick']:.0f} s; {r['seconds_per_pick_last_10pct']:.3f} s per pick over the last "
                    "tenth)")
        elif r.get("failed") is not None:
            note = f"FAILED (exit {r['failed']}{', killed: out of memory?' if r['failed'] == -9 else ''})"
        elif r["task"].endswith("_ref"):
            per_pick = r["seconds"] / max(1, r["picks"])
            identity = {True: "identical", False: "DIFFER", None: "not compared (the fast run did not finish)"}
            note = (f"first {r['picks']} picks {identity[r.get('same_picks')]}; extrapolated: "
                    + ", ".join(f"{per_pick * k:.0f} s for {k}" for k in picks))
        elif r.get("extrapolated_seconds") is not None:
            note = (f"{r['iterations']} of {ACTIVEFT_ITERATIONS} iterations, then the matching ({r['seconds_matching']:.0f} s); "
                    f"extrapolated: {r['extrapolated_seconds']:.0f} s with {ACTIVEFT_ITERATIONS} iterations")
        elif r.get("overlap") is not None:
            what = "exact BADGE, another rng" if r["task"] == "badge_seed2" else (
                f"candidates {max(r['picks'], int(APPROX_CANDIDATES * u / FULL_ROWS))}, projection {min(APPROX_PROJECTION, d)}")
            chance = 100 * r["picks"] / max(1, u - labelled)  # two uniform random picks of that size share this
            note = f"{what}: {100 * r['overlap']:.1f}% of the picks shared with exact BADGE (random picks: {chance:.1f}%)"
        if r.get("seconds_at_draw"):  # the pace, for extrapolating beyond the picks run
            marks = sorted((int(n), t) for n, t in r["seconds_at_draw"].items())
            note += ("; " if note else "") + "seconds at draw " + ", ".join(f"{n}: {t:.0f}" for n, t in marks)
        if r.get("coverage") is not None:
            note += ("; " if note else "") + (f"k-means cost {r['coverage']:.4g} (uniform random picks: "
                                              f"{r['coverage_random']:.4g})")
        lines.append(f"| {r['task']} | {r['picks']} | {r['seconds']:.2f} | {r['peak_rss_gb']:.2f} | "
                     f"{r.get('peak_anon_gb', float('nan')):.2f} | {note} |")
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
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="run only these")
    parser.add_argument("--pick-limit", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task-timeout", type=float, default=None, help="seconds before a task is stopped and recorded so")
    parser.add_argument("--activeft-iterations", type=int, default=ACTIVEFT_ITERATIONS,
                        help="ActiveFT iterations to time (fewer than the default extrapolate to it)")
    parser.add_argument("--coverage", action="store_true",
                        help="also the k-means cost of each BADGE run's picks (exact; for pools of a few 100k rows)")
    parser.add_argument("--fresh", action="store_true", help="forget the results file of this pool and rerun every task")
    args = parser.parse_args(argv)
    labelled = args.labelled if args.labelled is not None else max(10, int(10000 * min(args.scale, 1)))
    if args.worker:
        paths = make_pool(args.data_dir, args.scale)
        print(json.dumps(worker(args.worker, paths, args.picks[0], labelled, args.pick_limit, args.activeft_iterations)))
        return 0
    rows = benchmark(args.scale, args.picks, args.ref_picks, args.data_dir, labelled, tuple(args.tasks), args.task_timeout,
                     args.fresh, args.activeft_iterations, args.coverage)
    text = table(rows, args.scale, args.picks, args.ref_picks, labelled)
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
