"""Compute time and overall cost (paper sec. 6.3-6.4), from the jobs' measured wall times.

What a run is charged for, at an evaluation point after round r:
  * the *selection* compute of rounds 0..r: every job of the selection loop (select, label,
    proxy training, decide, the pre-trained extraction for feature methods, ASVP's refresh:
    its fine-tune and re-extraction; standard AL's per-round fine-tunes of rounds < r);
  * for ActiveFT(pre), whose points are independent single shots: that point's extraction,
    selection and label jobs only;
  * the *final model* at r: one fine-tune (FT or LP-FT), which every method, random included,
    must train once to deliver a model. Its test evaluation is the experiment's measurement,
    not a cost a practitioner pays, and is not charged.
A fine-tune is charged by its cache key, once per run, at the seconds it took where it was
trained: a job that found it in the cache (round 0 is shared by every method of a seed; an
ASVP evaluation reuses the refresh's fine-tune) ran for seconds, but a user running that method
alone would have paid the whole fine-tune.

Overall cost = N1 x label_price + compute hours x compute_price_per_hour, where compute hours
measured on a CPU are multiplied by `cost.cpu_to_gpu_factor` (the report says when it did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from asvp.errors import DataError
from asvp.methods import method
from asvp.metrics import RUN_KEYS

LOOP_RULES = ("seconds_select_initial", "seconds_select", "seconds_label", "seconds_train_proxy", "seconds_decide",
              "seconds_extract_pretrained")


@dataclass(frozen=True)
class Prices:
    label_price: float
    compute_price_per_hour: float
    cpu_to_gpu_factor: float = 1.0

    @classmethod
    def from_config(cls, cost: dict[str, Any]) -> Prices:
        values = {}
        for name in ("label_price", "compute_price_per_hour", "cpu_to_gpu_factor"):
            value = cost.get(name, 1.0 if name == "cpu_to_gpu_factor" else None)
            if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DataError(f"cost.{name} is {value!r}: give a non-negative number (USD; the factor is a ratio)")
            values[name] = float(value)
        return cls(**values)

    def cost(self, labels: float, compute_hours: float) -> float:
        return labels * self.label_price + compute_hours * self.compute_price_per_hour


def finetune_seconds(rounds: pd.DataFrame) -> dict[str, float]:
    """Training seconds per fine-tune key, from the job that trained it.

    metrics.json records `train_seconds`; results from before it did fall back to the wall
    time of the job that trained the key (which then includes its test pass and start-up).
    """
    seconds: dict[str, float] = {}
    for prefix, job in (("eval", "seconds_evaluate"), ("refresh", "seconds_refresh_features")):
        if f"{prefix}_key" not in rounds.columns:
            continue
        for row in rounds.dropna(subset=[f"{prefix}_key"]).to_dict("records"):
            key, measured = row[f"{prefix}_key"], row.get(f"{prefix}_train_seconds", math.nan)
            if measured is not None and math.isfinite(measured):
                seconds[key] = float(measured)
            elif not row.get(f"{prefix}_reused", True) and key not in seconds:
                seconds[key] = float(row.get(job, math.nan))
    return seconds


def _num(value: Any) -> float:
    """A table cell as seconds: absent or NaN (a job that did not run in that round) is 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _trained_here(row: dict[str, Any], prefix: str) -> float:
    """Seconds of a job spent in a fine-tune it trained itself (0 when it reused one)."""
    if row.get(f"{prefix}_reused", True) or not isinstance(row.get(f"{prefix}_key"), str):
        return 0.0
    return sum(_num(row.get(f"{prefix}_{part}_seconds")) for part in ("train", "test"))


def run_compute(run_rounds: pd.DataFrame, finetunes: dict[str, float]) -> pd.DataFrame:
    """Per round of one run: selection seconds up to and including the round, and the seconds
    of the final model if the run stopped there (0 when that fine-tune was already charged)."""
    run_rounds = run_rounds.sort_values("round")
    entry = method(run_rounds["method"].iloc[0])
    standard, single_shot = entry.finetunes_every_round, entry.single_shot
    charged: set[str] = set()
    selection = 0.0
    rows = []
    for row in run_rounds.to_dict("records"):
        if single_shot:  # each point is its own run: its extraction, its selection, its fine-tune
            selection, charged = 0.0, set()
        selection += sum(_num(row.get(c)) for c in LOOP_RULES)
        if _num(row.get("seconds_refresh_features")):
            selection += max(0.0, _num(row["seconds_refresh_features"]) - _trained_here(row, "refresh"))
            key = row.get("refresh_key")
            if isinstance(key, str) and key not in charged:
                charged.add(key)
                selection += _known(finetunes, key)
        eval_key = row.get("eval_key")
        final = 0.0
        if isinstance(eval_key, str) and eval_key not in charged:
            final = _known(finetunes, eval_key)
        rows.append({**{k: row[k] for k in [*RUN_KEYS, "round", "n_labelled"]}, "selection_seconds": selection,
                     "final_seconds": final})
        if standard and isinstance(eval_key, str):
            # This round's model selects the next round: from the next round on it is selection.
            selection += max(0.0, _num(row.get("seconds_evaluate")) - _trained_here(row, "eval"))
            if eval_key not in charged:
                charged.add(eval_key)
                selection += _known(finetunes, eval_key)
    return pd.DataFrame(rows)


def _known(finetunes: dict[str, float], key: str) -> float:
    if key not in finetunes or not math.isfinite(finetunes[key]):
        raise DataError(f"fine-tune {key} has no recorded training time (its metrics.json and job benchmark are missing): "
                        "rerun the workflow so that round is evaluated again")
    return finetunes[key]


def compute_table(summary: pd.DataFrame, rounds: pd.DataFrame, prices: Prices) -> pd.DataFrame:
    """One row per evaluation point: labels, compute hours (selection + final model), costs."""
    finetunes = finetune_seconds(rounds)
    per_round = pd.concat([run_compute(group, finetunes) for _, group in rounds.groupby(RUN_KEYS)], ignore_index=True)
    table = summary[[*RUN_KEYS, "round", "n_labelled", "accuracy", "status"]].merge(
        per_round.drop(columns="n_labelled"), on=[*RUN_KEYS, "round"], how="left", validate="one_to_one")
    missing = table[table["selection_seconds"].isna()]
    if not missing.empty:
        raise DataError(f"no round timings for {missing[[*RUN_KEYS, 'round']].to_dict('records')[:3]}: rounds.csv is older "
                        "than summary.csv; rerun the workflow (the summarize rule writes both)")
    on_cpu = cpu_factor_applies(summary)
    factor = prices.cpu_to_gpu_factor if on_cpu else 1.0
    table["compute_hours"] = (table["selection_seconds"] + table["final_seconds"]) / 3600.0 * factor
    table["selection_hours"] = table["selection_seconds"] / 3600.0 * factor
    table["label_cost"] = table["n_labelled"] * prices.label_price
    table["compute_cost"] = table["compute_hours"] * prices.compute_price_per_hour
    table["total_cost"] = table["label_cost"] + table["compute_cost"]
    return table


def cpu_factor_applies(summary: pd.DataFrame) -> bool:
    """True when the fine-tunes ran on a CPU (then compute hours are scaled to GPU hours)."""
    devices = summary["device"].dropna().astype(str) if "device" in summary.columns else pd.Series(dtype=str)
    return devices.empty or bool((devices == "cpu").any())


def reach_target(points: pd.DataFrame, target: float) -> dict[str, float]:
    """Labels, selection hours and compute hours at which one run first reaches `target`
    accuracy, interpolated linearly between its two evaluation points around it; NaN if never."""
    points = points[points["status"] != "diverged"].sort_values("n_labelled")
    previous = None
    for row in points.to_dict("records"):
        if row["accuracy"] >= target:
            if previous is None:
                return {k: float(row[k]) for k in ("n_labelled", "selection_hours", "compute_hours")}
            f = (target - previous["accuracy"]) / (row["accuracy"] - previous["accuracy"])
            return {k: float(previous[k] + f * (row[k] - previous[k])) for k in ("n_labelled", "selection_hours", "compute_hours")}
        previous = row
    return {"n_labelled": math.nan, "selection_hours": math.nan, "compute_hours": math.nan}


def random_target(summary: pd.DataFrame) -> float:
    """The accuracy of the random baseline at its last evaluation point (mean over seeds): pass
    `metrics.compared_points`, so that it is the methods' last point, not random's own extension."""
    rows = summary[summary["method"] == "random"]
    if rows.empty:
        raise DataError("no random baseline in the summary: the cost to reach its accuracy needs it")
    last = rows["n_labelled"].max()
    return float(rows[rows["n_labelled"] == last]["accuracy"].mean())


def cost_to_target(costs: pd.DataFrame, prices: Prices, target: float, random_at_last: bool = True) -> pd.DataFrame:
    """Per run: labels and compute to reach `target`, and the overall cost at those prices.

    With `random_at_last` the random baseline is charged at its last point (the target's own
    definition when the target is random's final accuracy); otherwise along its own curve."""
    rows = []
    for (method_name, strategy, seed), points in costs.groupby(RUN_KEYS):
        if method_name == "random" and random_at_last:
            last = points.sort_values("n_labelled").iloc[-1]
            reached = {k: float(last[k]) for k in ("n_labelled", "selection_hours", "compute_hours")}
        else:
            reached = reach_target(points, target)
        rows.append({"method": method_name, "strategy": strategy, "seed": seed, **reached,
                     "cost": prices.cost(reached["n_labelled"], reached["compute_hours"])})
    return pd.DataFrame(rows)


def cost_summary(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std cost per (method, strategy), how many seeds reached the target, and the cost
    saving ratio against random (1 - cost / random's mean cost: the share of its cost saved)."""
    random_cost = per_run[per_run["method"] == "random"]["cost"].mean()
    grouped = per_run.groupby(["method", "strategy"])
    table = grouped.agg(cost_mean=("cost", "mean"), cost_std=("cost", "std"), labels_mean=("n_labelled", "mean"),
                        compute_hours_mean=("compute_hours", "mean"), seeds=("seed", "nunique"),
                        reached=("cost", lambda c: int(np.isfinite(c).sum()))).reset_index()
    ratios = per_run.assign(ratio=1.0 - per_run["cost"] / random_cost).groupby(["method", "strategy"])["ratio"]
    table["cost_saving_mean"] = ratios.mean().to_numpy()
    table["cost_saving_std"] = ratios.std().to_numpy()
    return table


def time_model(rounds: pd.DataFrame, costs: pd.DataFrame | None) -> pd.DataFrame:
    """Paper sec. 6.4's terms per (method, strategy), means over seeds, in seconds, with the
    total its formula predicts next to the measured selection time (to the last round)."""
    finetunes = finetune_seconds(rounds)
    rows = []
    for (method_name, strategy), group in rounds.groupby(["method", "strategy"]):
        standard = method(method_name).finetunes_every_round
        later = group[group["round"] > 0]
        n_al = int(later.groupby("seed")["round"].count().mean()) if not later.empty else 0
        extraction = group[group["round"] == 0].get("seconds_extract_pretrained", pd.Series(dtype=float))
        t_pre = float(extraction.mean()) if (extraction > 0).any() else math.nan  # methods without features: none
        is_proxy = "seconds_train_proxy" in group.columns and (later.get("seconds_train_proxy", 0) > 0).any()
        t_tr_proxy = float(later["seconds_train_proxy"].mean()) if is_proxy else math.nan
        t_f = float(later["seconds_select"].mean()) if "seconds_select" in later.columns else math.nan
        refreshes = group[group.get("refreshed", pd.Series(False, index=group.index)).fillna(False).astype(bool)]
        n_pre = 1 + len(refreshes) / max(1, group["seed"].nunique())
        if standard:
            t_tr_full = float(np.mean([finetunes[k] for k in group["eval_key"].dropna() if k in finetunes]))
            formula = n_al * (t_tr_full + t_f)
        elif len(refreshes):
            t_tr_full = float(np.mean([finetunes[k] for k in refreshes["refresh_key"].dropna() if k in finetunes]))
            formula = n_al * (t_tr_proxy + t_f) + n_pre * t_pre + (n_pre - 1) * t_tr_full
        else:
            t_tr_full = math.nan
            formula = n_al * (t_tr_proxy + t_f) + t_pre if is_proxy else math.nan
        last = pd.DataFrame() if costs is None else costs[(costs["method"] == method_name) & (costs["strategy"] == strategy)]
        if not last.empty:
            last = last[last["round"] == last["round"].max()]
        rows.append({
            "method": method_name, "strategy": strategy, "N_al": n_al, "N_pre": n_pre if not standard else math.nan,
            "T_pre": t_pre, "T_tr_proxy": t_tr_proxy, "T_f_proxy": t_f if is_proxy else math.nan,
            "T_tr_full": t_tr_full, "T_f_full": t_f if standard else math.nan,
            "formula_seconds": formula,
            "measured_seconds": float(last["selection_seconds"].mean()) if not last.empty else math.nan,
        })
    return pd.DataFrame(rows)
