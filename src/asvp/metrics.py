"""The sample saving ratio (paper sec. 6.2): how many labels a method saves against random.

For a method that reached accuracy A with N1 labels, N2 is the number of labels the random
baseline needs for A, read off the random curve (the mean over seeds, made non-decreasing) by
linear interpolation; the saving ratio is (N2 - N1) / N2.

An accuracy outside the random curve has no N2 on it, and we do not extrapolate (a curve that
flattens makes any straight line through its last two points a guess): the point is *censored*.
  * above the curve's last point: N2 is at least the last label count, so the ratio we give
    (with N2 = that count) is a lower bound, marked `censored = "above"`;
  * below its first point: N2 is at most the first label count, the ratio given is an upper
    bound, marked `censored = "below"`.
Tables and plots carry the mark and print a censored ratio as the bound it is (">= 0.0%",
"<= -100.0%"), never as a plain value; an average over points censored one way only is itself a
bound that way (`average_bound`), one over points censored both ways is no bound at all.

Round 0 is the same seeded random draw for every method, so it measures no selection: the
average saving ratio (the paper's headline figure) runs over the rounds after it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from asvp.errors import DataError

RUN_KEYS = ["method", "strategy", "seed"]
CENSOR_ABOVE, CENSOR_BELOW = "above", "below"
# How an average over censored points is bounded: from below (its censored points all lie above
# random's curve, so each is a lower bound), from above, or not at all (both kinds).
BOUND_LOWER, BOUND_UPPER, BOUND_NONE = "lower", "upper", "mixed"
CONFIDENCE = 0.95  # of the paired differences' t interval


def average_bound(marks: Any) -> str:
    """'' when no point is censored, else how the average over them is bounded (BOUND_*)."""
    kinds = {mark for mark in marks if isinstance(mark, str) and mark}
    if not kinds:
        return ""
    if kinds == {CENSOR_ABOVE}:
        return BOUND_LOWER
    if kinds == {CENSOR_BELOW}:
        return BOUND_UPPER
    return BOUND_NONE


def combine_bounds(bounds: Any) -> str:
    """The bound of a mean over runs whose averages carry these bounds."""
    kinds = {b for b in bounds if isinstance(b, str) and b}
    if not kinds:
        return ""
    return kinds.pop() if len(kinds) == 1 else BOUND_NONE


def bounded(text: str, bound: str) -> str:
    """`text` (a formatted ratio) marked as the bound it is: '>= ' lower, '<= ' upper, ' (censored
    both ways: no bound)' when its points are censored in both directions."""
    if bound in (BOUND_LOWER, CENSOR_ABOVE):
        return ">= " + text
    if bound in (BOUND_UPPER, CENSOR_BELOW):
        return "<= " + text
    if bound == BOUND_NONE:
        return text + " (censored both ways: no bound)"
    return text


def monotone_curve(random_n: np.ndarray, random_acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The random curve sorted by labels and made non-decreasing (more labels never hurt random;
    a dip is seed noise, and an inverse needs a monotone curve)."""
    random_n = np.asarray(random_n, dtype=np.float64)
    random_acc = np.asarray(random_acc, dtype=np.float64)
    if random_n.ndim != 1 or random_n.shape != random_acc.shape or random_n.size == 0:
        raise DataError(f"random curve: need two 1-D arrays of equal, non-zero length (got {random_n.shape} and {random_acc.shape})")
    if not (np.isfinite(random_n).all() and np.isfinite(random_acc).all()):
        raise DataError("random curve has NaN or infinite points: a random-baseline evaluation is missing or failed")
    order = np.argsort(random_n, kind="stable")
    return random_n[order], np.maximum.accumulate(random_acc[order])


def censoring(random_acc: np.ndarray, acc: float) -> str:
    """'above' or 'below' when `acc` lies outside the (monotone) random curve, '' inside it."""
    if acc > random_acc[-1]:
        return CENSOR_ABOVE
    if acc < random_acc[0]:
        return CENSOR_BELOW
    return ""


def equivalent_labels(random_n: np.ndarray, random_acc: np.ndarray, acc: float) -> float:
    """N2: labels the random baseline needs for accuracy `acc`.

    Outside the curve it returns the bound (the last or first label count); `censoring` says
    which. On a flat stretch it returns the fewest labels that reach `acc`.
    """
    if not math.isfinite(acc):
        raise DataError(f"accuracy {acc} is not a number: that evaluation failed; rerun it")
    n, curve = monotone_curve(random_n, random_acc)
    where = censoring(curve, acc)
    if where == CENSOR_ABOVE:
        return float(n[-1])
    if where == CENSOR_BELOW:
        return float(n[0])
    k = int(np.searchsorted(curve, acc, side="left"))  # first point with curve >= acc
    if k == 0:
        return float(n[0])
    fraction = (acc - curve[k - 1]) / (curve[k] - curve[k - 1])
    return float(n[k - 1] + fraction * (n[k] - n[k - 1]))


def saving_ratio(n1: float, n2: float) -> float:
    """(N2 - N1) / N2: the fraction of random's labels the method did without."""
    if n2 <= 0:
        raise DataError(f"equivalent label count N2 = {n2} must be positive")
    return float((n2 - n1) / n2)


def random_curve(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean random-baseline accuracy per label count, with how many seeds each point has."""
    rows = summary[summary["method"] == "random"]
    if rows.empty:
        raise DataError("the summary has no random baseline: add `random` to `methods` (the saving ratio is measured against it)")
    if rows["accuracy"].isna().any():
        bad = rows[rows["accuracy"].isna()][["seed", "n_labelled"]].to_dict("records")
        raise DataError(f"random baseline has NaN accuracies at {bad}: rerun those evaluations")
    curve = rows.groupby("n_labelled")["accuracy"].agg(["mean", "count"]).reset_index()
    seeds = rows["seed"].nunique()
    short = curve[curve["count"] < seeds]
    if not short.empty:
        raise DataError(f"random baseline lacks seeds at label counts {short['n_labelled'].tolist()} "
                        f"(fewer than its {seeds} seeds): its curve would mix seeds; rerun the missing evaluations")
    return curve.rename(columns={"mean": "accuracy", "count": "seeds"})


def compared_points(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary without random's points past the other methods' last label count
    (evaluation.random_beyond): those extend the random curve that saving ratios are read off,
    and are no point of the comparison itself (costs, per-class tables, random's own rows)."""
    others = summary[summary["method"] != "random"]
    if others.empty:
        return summary
    beyond = (summary["method"] == "random") & (summary["n_labelled"] > others["n_labelled"].max())
    return summary[~beyond]


def saving_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated point of every run: N1, A, N2, the saving ratio and its censoring.

    Points whose fine-tune diverged (status) or whose accuracy is NaN keep a row, with no N2 and
    `excluded` saying why: a gap to show, never a number to average.
    """
    curve = random_curve(summary)
    n, acc = curve["n_labelled"].to_numpy(), curve["accuracy"].to_numpy()
    _, monotone = monotone_curve(n, acc)
    rows = []
    for record in compared_points(summary).to_dict("records"):
        status = record.get("status", "ok")
        row = {k: record[k] for k in [*RUN_KEYS, "round", "n_labelled", "accuracy"]}
        row.update(equivalent_labels=math.nan, saving_ratio=math.nan, saving="", censored="", excluded="")
        if not math.isfinite(float(record["accuracy"])):
            row["excluded"] = "no accuracy"
        elif status == "diverged":
            row["excluded"] = "diverged fine-tune"
        else:
            n2 = equivalent_labels(n, acc, float(record["accuracy"]))
            row.update(equivalent_labels=n2, saving_ratio=saving_ratio(record["n_labelled"], n2),
                       censored=censoring(monotone, float(record["accuracy"])))
            row["saving"] = bounded(f"{row['saving_ratio'] * 100:.1f}%", row["censored"])
        row["initial_round"] = int(record["round"]) == 0
        rows.append(row)
    return pd.DataFrame(rows)


def per_run_saving(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's average sample saving ratio of each run (the rounds after round 0)."""
    points = table[~table["initial_round"]]
    return (
        points.groupby(RUN_KEYS)
        .agg(
            average_saving_ratio=("saving_ratio", "mean"),
            points=("saving_ratio", "count"),
            censored=("censored", lambda c: int((c != "").sum())),
            bound=("censored", average_bound),
            excluded=("excluded", lambda e: int((e != "").sum())),
        )
        .reset_index()
    )


def average_saving(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the runs' average saving ratios per (method, strategy), with
    the count of censored and excluded points."""
    per_run = per_run_saving(table)
    seeds_per_method = per_run.groupby(["method", "strategy"])["seed"].nunique()
    if seeds_per_method.nunique() > 1:
        counts = ", ".join(f"{m}/{s}: {k}" for (m, s), k in seeds_per_method.items())
        raise DataError(f"methods ran with different numbers of seeds ({counts}): their mean +- std would not be comparable; "
                        "finish the missing seeds or drop them from the config")
    return (
        per_run.groupby(["method", "strategy"])
        .agg(
            saving_ratio_mean=("average_saving_ratio", "mean"),
            saving_ratio_std=("average_saving_ratio", "std"),
            seeds=("seed", "nunique"),
            censored_points=("censored", "sum"),
            bound=("bound", combine_bounds),
            excluded_points=("excluded", "sum"),
        )
        .reset_index()
    )


def points_are_comparable(summary: pd.DataFrame) -> None:
    """Every method must be evaluated at label counts the random curve covers (or the saving
    ratio is read off an extrapolation we refuse to make): raise naming the gap otherwise."""
    curve = random_curve(summary)
    low, high = curve["n_labelled"].min(), curve["n_labelled"].max()
    outside = summary[(summary["method"] != "random") & ((summary["n_labelled"] < low) | (summary["n_labelled"] > high))]
    if not outside.empty:
        where = sorted(set(zip(outside["method"], outside["n_labelled"])))
        raise DataError(f"random baseline evaluated only from {low} to {high} labels, but {where} lie outside: "
                        "evaluate random at those points too (evaluation.at)")


def mean_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (low, high) of the mean; NaN bounds with under 2 values."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def format_interval(mean: float, low: float, high: float, bound: str = "") -> str:
    """'12.3% [4.5%, 20.1%]' as percentages, marked with its censoring bound (`bounded`)."""
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean * 100:.1f}%" + (f" [{low * 100:.1f}%, {high * 100:.1f}%]" if math.isfinite(low) else "")
    return bounded(text, bound)


def _difference_bound(ours: str, theirs: str) -> str:
    """The bound of (ours - theirs) when each side is a bound: a lower bound minus an upper bound
    (or an exact value) is a lower bound, and the reverse an upper one; other mixes are no bound."""
    if not ours and not theirs:
        return ""
    if ours in ("", BOUND_LOWER) and theirs in ("", BOUND_UPPER):
        return BOUND_LOWER
    if ours in ("", BOUND_UPPER) and theirs in ("", BOUND_LOWER):
        return BOUND_UPPER
    return BOUND_NONE


def paired_differences(table: pd.DataFrame, reference: str = "asvp") -> pd.DataFrame:
    """`reference` minus every other method in average saving ratio, paired by seed (a seed's
    runs share round 0 and the test set): each side's mean saving ratio with its 95 % t interval
    over seeds, the difference per seed, its mean with a 95 % paired t interval, and a paired
    t-test (is the gap larger than the seeds' spread? p is NaN with fewer than 2 common seeds).
    Each figure is marked with its censoring bound (">=" / "<="), so a capped ratio never reads
    as a measured one."""
    from scipy import stats

    per_run = per_run_saving(table)
    rows = []
    for strategy in sorted(per_run.loc[per_run["method"] == reference, "strategy"].unique()):
        ours_runs = per_run[(per_run["method"] == reference) & (per_run["strategy"] == strategy)].set_index("seed")
        ours = ours_runs["average_saving_ratio"]
        for (method, other_strategy), group in per_run.groupby(["method", "strategy"]):
            if method == reference or (method != "random" and other_strategy != strategy):
                continue
            theirs_runs = group.set_index("seed")
            theirs = theirs_runs["average_saving_ratio"]
            seeds = ours.index.intersection(theirs.index)
            gap = (ours[seeds] - theirs[seeds]).to_numpy()
            p_value = math.nan
            if len(seeds) >= 2 and np.std(gap) > 0:
                p_value = float(stats.ttest_rel(ours[seeds], theirs[seeds]).pvalue)
            our_bound = combine_bounds(ours_runs.loc[seeds, "bound"])
            their_bound = combine_bounds(theirs_runs.loc[seeds, "bound"])
            difference = mean_interval(gap)
            rows.append({"reference": reference, "strategy": strategy, "versus": method, "seeds": len(seeds),
                         "reference_saving": format_interval(*mean_interval(ours[seeds].to_numpy()), our_bound),
                         "versus_saving": format_interval(*mean_interval(theirs[seeds].to_numpy()), their_bound),
                         "difference": format_interval(*difference, _difference_bound(our_bound, their_bound)),
                         "difference_per_seed": " ".join(f"{seed}:{value * 100:+.1f}%" for seed, value in zip(seeds, gap)),
                         "difference_mean": difference[0],
                         "difference_ci_low": difference[1], "difference_ci_high": difference[2],
                         "difference_std": float(gap.std(ddof=1)) if len(gap) > 1 else math.nan,
                         "wins": int((gap > 0).sum()), "paired_t_p": p_value})
    return pd.DataFrame(rows)
