"""The report's figures (paper Figs. 11-14), as PNG files, from the tables the report builds.

Nothing is dropped silently: a diverged fine-tune is drawn as a red cross at its accuracy, a
censored saving point as an open triangle pointing the way its bound goes, and a figure with
nothing to show says so in its middle instead of coming out blank.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from asvp.atomic import atomic_path  # noqa: E402


def _label(method: str, strategy: str) -> str:
    return method if method == "random" else f"{method} ({strategy})"


def _save(figure: plt.Figure, out: str | Path) -> None:
    figure.tight_layout()
    with atomic_path(Path(out)) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def _drew_gap(figure: plt.Figure, axis: plt.Axes, frame: pd.DataFrame, out: str | Path) -> bool:
    """A table that is a marked gap (yardstick.gap_frame) becomes a figure saying why."""
    if "gap" not in frame.columns:
        return False
    _empty(axis, "\n".join(textwrap.wrap(str(frame["gap"].iloc[0]), 60)))
    _save(figure, out)
    return True


def _legend(axis: plt.Axes, fontsize: int) -> None:
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=fontsize)


def _empty(axis: plt.Axes, message: str) -> None:
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes, wrap=True)


def accuracy_curves(summary: pd.DataFrame, out: str | Path, no_accuracy: str = "") -> None:
    """Fig. 11: test accuracy vs labels, mean over seeds with a min-max band (`no_accuracy`:
    why there is none to draw, said in the figure)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    if no_accuracy:
        _empty(axis, "\n".join(textwrap.wrap(no_accuracy, 60)))
        _save(figure, out)
        return
    ok = summary[summary["status"] != "diverged"]
    for (method, strategy), group in ok.groupby(["method", "strategy"]):
        stats = group.groupby("n_labelled")["accuracy"].agg(["mean", "min", "max"]).reset_index()
        line, = axis.plot(stats["n_labelled"], stats["mean"], marker="o", label=_label(method, strategy))
        axis.fill_between(stats["n_labelled"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    diverged = summary[summary["status"] == "diverged"]
    if not diverged.empty:
        axis.scatter(diverged["n_labelled"], diverged["accuracy"], marker="x", color="red", s=60, zorder=5,
                     label="diverged fine-tune (not in the mean)")
    axis.set(xlabel="labelled images", ylabel="test accuracy", title="Accuracy (mean over seeds, band: min-max)")
    axis.grid(alpha=0.3)
    _legend(axis, 8)
    _save(figure, out)


def equivalent_labels_plot(saving: pd.DataFrame, out: str | Path) -> None:
    """Fig. 12: equivalent non-AL labels N2 vs labels N1; above the diagonal = labels saved."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    if _drew_gap(figure, axis, saving, out):
        return
    points = saving[saving["method"] != "random"]
    usable = points[points["excluded"] == ""]
    for (method, strategy), group in usable.groupby(["method", "strategy"]):
        stats = group.groupby("n_labelled")["equivalent_labels"].mean().reset_index()
        line, = axis.plot(stats["n_labelled"], stats["equivalent_labels"], marker="o", label=_label(method, strategy))
        for marker, side in (("^", "above"), ("v", "below")):
            censored = group[group["censored"] == side]
            if not censored.empty:
                axis.scatter(censored["n_labelled"], censored["equivalent_labels"], marker=marker, s=70,
                             facecolors="none", edgecolors=line.get_color(), zorder=5)
    if usable.empty:
        _empty(axis, "no method besides random was evaluated")
    else:
        low, high = saving["n_labelled"].min(), saving["n_labelled"].max()
        axis.plot([low, high], [low, high], color="grey", linestyle="--", label="random (N2 = N1)")
        axis.scatter([], [], marker="^", facecolors="none", edgecolors="black", label="censored: N2 at least this")
        axis.scatter([], [], marker="v", facecolors="none", edgecolors="black", label="censored: N2 at most this")
    excluded = points[points["excluded"] != ""]
    if not excluded.empty:
        axis.scatter(excluded["n_labelled"], excluded["n_labelled"], marker="x", color="red", label="excluded (diverged)")
    axis.set(xlabel="labelled images (N1)", ylabel="random's labels for the same accuracy (N2)",
             title="Equivalent non-AL labels (mean over seeds)")
    axis.grid(alpha=0.3)
    _legend(axis, 8)
    _save(figure, out)


def cost_vs_time(per_run: pd.DataFrame, out: str | Path, compute_note: str) -> None:
    """Fig. 13: overall cost to reach random's final accuracy vs the selection compute."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    if _drew_gap(figure, axis, per_run, out):
        return
    reached = per_run[np.isfinite(per_run["cost"])]
    for (method, strategy), group in reached.groupby(["method", "strategy"]):
        axis.errorbar(group["selection_hours"].mean(), group["cost"].mean(),
                      xerr=group["selection_hours"].std() if len(group) > 1 else None,
                      yerr=group["cost"].std() if len(group) > 1 else None,
                      marker="o", capsize=3, linestyle="none", label=f"{_label(method, strategy)} ({len(group)} seeds)")
    missed = per_run[~np.isfinite(per_run["cost"])].groupby(["method", "strategy"]).size()
    if reached.empty:
        _empty(axis, "no run reached the random baseline's final accuracy")
    title = "Overall cost to reach random's final accuracy"
    if len(missed):
        title += "\nnot reached: " + ", ".join(f"{_label(m, s)} ({n} seeds)" for (m, s), n in missed.items())
    axis.set(xlabel=f"selection compute (hours{compute_note})", ylabel="labels + compute (USD)", title=title)
    axis.grid(alpha=0.3)
    _legend(axis, 8)
    _save(figure, out)


def decision_plot(decisions: pd.DataFrame, out: str | Path) -> None:
    """Fig. 14: the LogME-PED change per round as the rule compares it with the threshold (the raw
    |delta| under decision.rule paper, per doubling or per 200 labels otherwise), the threshold,
    and where the features were refreshed."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    scored = decisions.dropna(subset=["difference"]) if not decisions.empty else decisions
    if not scored.empty and "normalised_difference" in scored:
        scored = scored.assign(difference=scored["normalised_difference"].fillna(scored["difference"]))
    rules = sorted(set(scored["rule"].dropna())) if "rule" in scored else []
    if scored.empty:
        _empty(axis, "no ASVP run in this experiment, or no round with two comparable scores yet")
    else:
        for (method, strategy, seed), group in scored.groupby(["method", "strategy", "seed"]):
            group = group.sort_values("n_labelled")
            line, = axis.plot(group["n_labelled"], group["difference"], marker=".", label=f"{_label(method, strategy)} seed {seed}")
            refreshed = decisions[(decisions["method"] == method) & (decisions["strategy"] == strategy)
                                  & (decisions["seed"] == seed) & decisions["refresh_features"].astype(bool)]
            for n in refreshed["n_labelled"]:
                axis.axvline(n, color=line.get_color(), linestyle=":", alpha=0.7)
        axis.axhline(float(scored["threshold"].iloc[0]), color="black", linestyle="--", label="threshold")
        axis.set_yscale("log")
        axis.plot([], [], color="grey", linestyle=":", label="features refreshed")
    change = f"LogME-PED change ({', '.join(rules)})" if rules else "|LogME-PED(t) - LogME-PED(t-1)|"
    axis.set(xlabel="labelled images", ylabel=change, title="ASVP's refresh rule per round")
    axis.grid(alpha=0.3)
    _legend(axis, 7)
    _save(figure, out)


def predicted_classes_plot(predicted: pd.DataFrame, out: str | Path) -> None:
    """Share of each class among a run's labels and among its final model's predictions for the
    unlabelled pool: where the model (or the selection) leans towards a class."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    if predicted.empty:
        _empty(axis, "no final model delivered yet (final/predictions.csv)")
    else:
        names = list(dict.fromkeys(predicted["class"]))
        x = np.arange(len(names))
        for (method, strategy, seed), group in predicted.groupby(["method", "strategy", "seed"], sort=True):
            group = group.set_index("class").loc[names]
            line, = axis.plot(x, group["predicted_share"], marker="o", label=f"{_label(method, strategy)} seed {seed}: predicted")
            labelled = group["labelled"] / max(int(group["labelled"].sum()), 1)
            axis.plot(x, labelled, marker="x", linestyle="--", color=line.get_color(), alpha=0.7)
        axis.plot([], [], marker="x", linestyle="--", color="grey", label="labelled set (same colour)")
        axis.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    axis.set(ylabel="share of images", title="Final model's predicted classes over the unlabelled pool")
    axis.grid(alpha=0.3)
    _legend(axis, 7)
    _save(figure, out)
