"""The cost advisor: from a finished (pilot) run and a user's prices, which method reaches a
target accuracy at the lowest overall cost, by how much, and the label price above which ASVP
beats standard active learning. Every number comes from the run's measured labels and compute;
nothing from the paper. It says when the pilot cannot decide (one seed, or seeds that overlap).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from asvp import costs, methods, metrics
from asvp.errors import DataError
from asvp.tables import NO_TEST_SET, has_test_set

ASVP_LIKE = ("asvp",)


def _load(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    tables = []
    for name in ("summary.csv", "rounds.csv"):
        path = experiment_dir / name
        if not path.exists():
            raise DataError(f"{path} does not exist: run the workflow for this experiment first (its summarize rule writes it)")
        tables.append(pd.read_csv(path))
    return tables[0], tables[1]


def per_method_costs(summary: pd.DataFrame, rounds: pd.DataFrame, prices: costs.Prices, target: float) -> pd.DataFrame:
    """Labels, compute hours and cost per run to reach `target` (random too: its own curve)."""
    return costs.cost_to_target(costs.compute_table(summary, rounds, prices), prices, target, random_at_last=False)


def break_even(asvp: pd.Series, standard: pd.Series, gpu_hour_price: float) -> str:
    """The label price at which ASVP's and standard AL's overall costs to the target are equal."""
    label_gap = standard["n_labelled"] - asvp["n_labelled"]  # labels ASVP saves
    compute_gap = (asvp["compute_hours"] - standard["compute_hours"]) * gpu_hour_price  # compute it costs more
    name = f"{asvp['method']} vs {standard['method']} ({asvp['strategy']})"
    if abs(label_gap) < 1e-9:
        cheaper = asvp["method"] if compute_gap < 0 else standard["method"]
        return f"{name}: same labels to the target; {cheaper} is cheaper at any label price (less compute)"
    price = compute_gap / label_gap
    if label_gap > 0:
        if price <= 0:
            return f"{name}: {asvp['method']} needs fewer labels and less compute: cheaper at any label price"
        return f"{name}: {asvp['method']} is cheaper above {price:.4f} USD per label (it saves {label_gap:.0f} labels, costs {compute_gap:.4f} USD more compute)"
    if price <= 0:
        return f"{name}: {standard['method']} needs fewer labels and less compute: cheaper at any label price"
    return (f"{name}: {asvp['method']} is cheaper only below {price:.4f} USD per label "
            f"(it needs {-label_gap:.0f} more labels but saves {-compute_gap:.4f} USD of compute)")


def without_test_set(experiment_dir: Path, summary: pd.DataFrame, rounds: pd.DataFrame, prices: costs.Prices,
                     label_price: float, gpu_hour_price: float) -> str:
    """No accuracy, so no method can be said to reach a target cheaper: say so, and what each
    run spent to its last evaluation point at these prices."""
    lines = [f"asvp advise: {experiment_dir}: {NO_TEST_SET}",
             f"What each run spent to its last evaluation point, at {label_price:g} USD per label and "
             f"{gpu_hour_price:g} USD per GPU hour:"]
    table = costs.compute_table(summary, rounds, prices)
    last = table[table["n_labelled"] == table.groupby(costs.RUN_KEYS)["n_labelled"].transform("max")]
    for row in last.sort_values(costs.RUN_KEYS).to_dict("records"):
        lines.append(f"  {row['method']:<20} {row['strategy']:<10} seed {row['seed']}: {row['n_labelled']} labels, "
                     f"{row['compute_hours']:.3f} compute h, {row['total_cost']:.2f} USD")
    return "\n".join(lines)


def advise(experiment: str | Path, label_price: float, gpu_hour_price: float, target_accuracy: float | None = None,
           cpu_to_gpu_factor: float = 1.0) -> str:
    """From a finished (pilot) run, results/<experiment>: which method reaches a target accuracy
    (default: the random baseline's final one) at the lowest cost at these prices (USD per label,
    per GPU hour; cpu_to_gpu_factor: GPU hours per CPU hour measured, when the pilot ran on a CPU)."""
    experiment_dir = Path(experiment)
    summary, rounds = _load(experiment_dir)
    prices = costs.Prices.from_config({"label_price": label_price, "compute_price_per_hour": gpu_hour_price,
                                       "cpu_to_gpu_factor": cpu_to_gpu_factor})
    if not has_test_set(summary):
        return without_test_set(experiment_dir, summary, rounds, prices, label_price, gpu_hour_price)
    target = costs.random_target(metrics.compared_points(summary)) if target_accuracy is None else float(target_accuracy)
    per_run = per_method_costs(summary, rounds, prices, target)
    grouped = per_run.groupby(["method", "strategy"])
    table = grouped.agg(cost=("cost", "mean"), low=("cost", "min"), high=("cost", "max"), labels=("n_labelled", "mean"),
                        compute_hours=("compute_hours", "mean"), seeds=("seed", "nunique"),
                        reached=("cost", lambda c: int(c.notna().sum()))).reset_index()
    lines = [f"asvp advise: {experiment_dir} at {label_price:g} USD per label and {gpu_hour_price:g} USD per GPU hour; "
             f"target accuracy {target:.4f}" + (" (the random baseline's final accuracy)" if target_accuracy is None else "")]
    if costs.cpu_factor_applies(summary):
        lines.append(f"(compute was measured on a CPU; its hours count as GPU hours x {cpu_to_gpu_factor:g}: "
                     "pass --cpu-to-gpu-factor with your measured speed ratio)")
    complete = table[table["reached"] == table["seeds"]].sort_values("cost")
    for row in table.sort_values("cost", na_position="last").to_dict("records"):
        if row["reached"] < row["seeds"]:
            lines.append(f"  {row['method']:<20} {row['strategy']:<10} did not reach the target in "
                         f"{row['seeds'] - row['reached']} of {row['seeds']} seeds within the run")
        else:
            lines.append(f"  {row['method']:<20} {row['strategy']:<10} {row['cost']:10.2f} USD  (seeds {row['low']:.2f}-{row['high']:.2f}; "
                         f"{row['labels']:.0f} labels, {row['compute_hours']:.3f} compute h)")
    if complete.empty:
        lines.append("No method reached the target in every seed: lower --target-accuracy or run more rounds.")
        return "\n".join(lines)
    best = complete.iloc[0]
    verdict = f"Cheapest: {best['method']} ({best['strategy']}) at {best['cost']:.2f} USD"
    if len(complete) > 1:
        second = complete.iloc[1]
        gap = second["cost"] - best["cost"]
        verdict += f", {gap:.2f} USD ({gap / second['cost']:.1%}) below {second['method']} ({second['strategy']})"
        if best["seeds"] < 2:
            verdict += ". The pilot is too small to decide: one seed cannot tell a difference from noise; run more seeds."
        elif best["high"] >= second["low"]:
            verdict += (f". The pilot is too small to decide: the seeds overlap ({best['low']:.2f}-{best['high']:.2f} vs "
                        f"{second['low']:.2f}-{second['high']:.2f} USD); run more seeds or a larger pilot.")
        else:
            verdict += "; the seeds do not overlap."
    lines.append(verdict)
    means = complete.set_index(["method", "strategy"])
    for (method, strategy), asvp in means.iterrows():
        if method not in ASVP_LIKE:
            continue
        for standard_method in methods.names(lambda m: m.finetunes_every_round):
            if (standard_method, strategy) in means.index:
                standard = means.loc[(standard_method, strategy)]
                lines.append("Break-even: " + break_even(
                    pd.Series({**asvp.to_dict(), "method": method, "strategy": strategy, "n_labelled": asvp["labels"]}),
                    pd.Series({**standard.to_dict(), "method": standard_method, "strategy": strategy, "n_labelled": standard["labels"]}),
                    gpu_hour_price))
    if not any(line.startswith("Break-even") for line in lines):
        lines.append("Break-even: needs asvp and standard (or standard_lpft) in the run, both reaching the target.")
    return "\n".join(lines)
