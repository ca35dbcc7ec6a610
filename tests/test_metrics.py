"""The sample saving ratio on curves worked out by hand, censoring included."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from asvp.errors import DataError
from asvp.metrics import average_saving, censoring, equivalent_labels, monotone_curve, points_are_comparable, saving_ratio, saving_table

RANDOM_N = np.array([100.0, 200.0, 400.0])
RANDOM_ACC = np.array([0.60, 0.70, 0.80])


def test_equivalent_labels_interpolates_linearly_between_random_points() -> None:
    # 0.75 lies halfway between 0.70 (200 labels) and 0.80 (400 labels): 300 labels.
    assert equivalent_labels(RANDOM_N, RANDOM_ACC, 0.75) == pytest.approx(300.0)
    # 0.65: halfway between 100 and 200.
    assert equivalent_labels(RANDOM_N, RANDOM_ACC, 0.65) == pytest.approx(150.0)
    # On a point exactly.
    assert equivalent_labels(RANDOM_N, RANDOM_ACC, 0.70) == pytest.approx(200.0)
    assert equivalent_labels(RANDOM_N, RANDOM_ACC, 0.60) == pytest.approx(100.0)


def test_saving_ratio_is_labels_saved_over_random_labels() -> None:
    assert saving_ratio(200, 300) == pytest.approx(1 / 3)
    assert saving_ratio(400, 300) == pytest.approx(-1 / 3)  # worse than random: negative
    with pytest.raises(DataError):
        saving_ratio(100, 0)


def test_accuracy_outside_the_curve_is_censored_at_the_bound() -> None:
    _, curve = monotone_curve(RANDOM_N, RANDOM_ACC)
    assert censoring(curve, 0.85) == "above" and equivalent_labels(RANDOM_N, RANDOM_ACC, 0.85) == 400.0
    assert censoring(curve, 0.50) == "below" and equivalent_labels(RANDOM_N, RANDOM_ACC, 0.50) == 100.0
    assert censoring(curve, 0.80) == "" and censoring(curve, 0.60) == ""


def test_random_curve_is_made_monotone_and_a_plateau_gives_the_fewest_labels() -> None:
    n = np.array([400.0, 100.0, 200.0, 300.0])  # unsorted on purpose
    acc = np.array([0.80, 0.60, 0.72, 0.70])  # the dip at 300 is seed noise
    sorted_n, curve = monotone_curve(n, acc)
    assert sorted_n.tolist() == [100, 200, 300, 400]
    assert curve.tolist() == [0.60, 0.72, 0.72, 0.80]
    assert equivalent_labels(n, acc, 0.72) == pytest.approx(200.0)  # first to reach it
    assert equivalent_labels(n, acc, 0.76) == pytest.approx(350.0)  # halfway from (300, 0.72) to (400, 0.80)


def test_nan_accuracy_or_curve_is_an_error() -> None:
    with pytest.raises(DataError, match="not a number"):
        equivalent_labels(RANDOM_N, RANDOM_ACC, math.nan)
    with pytest.raises(DataError, match="NaN"):
        equivalent_labels(RANDOM_N, np.array([0.6, math.nan, 0.8]), 0.7)


def _summary(rows: list[tuple[str, int, int, float]], status: dict[tuple[str, int, int], str] | None = None) -> pd.DataFrame:
    status = status or {}
    return pd.DataFrame([
        {"method": m, "strategy": "random" if m == "random" else "margin", "seed": s, "round": [100, 200, 400].index(n),
         "n_labelled": n, "accuracy": a, "status": status.get((m, s, n), "ok")}
        for m, s, n, a in rows
    ])


def _two_seed_summary() -> pd.DataFrame:
    rows = []
    for seed, shift in ((0, -0.01), (1, 0.01)):  # random's mean is exactly RANDOM_ACC
        rows += [("random", seed, n, a + shift) for n, a in zip([100, 200, 400], RANDOM_ACC)]
    # asvp seed 0: 0.60 at 100 (round 0), 0.75 at 200 (N2 = 300: ratio 1/3), 0.85 at 400 (above: N2 >= 400, ratio 0)
    # asvp seed 1: 0.60, 0.70 at 200 (N2 = 200: ratio 0), 0.75 at 400 (N2 = 300: ratio -1/3)
    rows += [("asvp", 0, 100, 0.60), ("asvp", 0, 200, 0.75), ("asvp", 0, 400, 0.85)]
    rows += [("asvp", 1, 100, 0.60), ("asvp", 1, 200, 0.70), ("asvp", 1, 400, 0.75)]
    return _summary(rows)


def test_saving_table_marks_censored_points_and_averages_after_round_zero() -> None:
    table = saving_table(_two_seed_summary())
    asvp = table[table["method"] == "asvp"].set_index(["seed", "n_labelled"])
    assert asvp.loc[(0, 200), "equivalent_labels"] == pytest.approx(300.0)
    assert asvp.loc[(0, 200), "saving_ratio"] == pytest.approx(1 / 3)
    assert asvp.loc[(0, 400), "censored"] == "above" and asvp.loc[(0, 400), "saving_ratio"] == pytest.approx(0.0)
    assert asvp.loc[(1, 400), "saving_ratio"] == pytest.approx(-1 / 3)
    assert bool(asvp.loc[(0, 100), "initial_round"])
    average = average_saving(table).set_index("method")
    # seed 0: mean(1/3, 0) = 1/6; seed 1: mean(0, -1/3) = -1/6; over seeds: 0 +- std(1/6, -1/6)
    assert average.loc["asvp", "saving_ratio_mean"] == pytest.approx(0.0, abs=1e-12)
    assert average.loc["asvp", "saving_ratio_std"] == pytest.approx(np.std([1 / 6, -1 / 6], ddof=1))
    assert average.loc["asvp", "censored_points"] == 1


def test_a_diverged_point_is_excluded_not_averaged() -> None:
    summary = _two_seed_summary()
    summary.loc[(summary["method"] == "asvp") & (summary["seed"] == 1) & (summary["n_labelled"] == 400), "status"] = "diverged"
    table = saving_table(summary)
    point = table[(table["method"] == "asvp") & (table["seed"] == 1) & (table["n_labelled"] == 400)].iloc[0]
    assert point["excluded"] == "diverged fine-tune" and math.isnan(point["saving_ratio"])
    average = average_saving(table).set_index("method")
    assert average.loc["asvp", "excluded_points"] == 1
    # seed 1 now averages its 200-label point only (0): mean over seeds (1/6 + 0) / 2
    assert average.loc["asvp", "saving_ratio_mean"] == pytest.approx(1 / 12)


def test_missing_random_baseline_or_seeds_is_a_clear_error() -> None:
    summary = _two_seed_summary()
    with pytest.raises(DataError, match="no random baseline"):
        saving_table(summary[summary["method"] != "random"])
    fewer = summary[~((summary["method"] == "random") & (summary["seed"] == 1) & (summary["n_labelled"] == 200))]
    with pytest.raises(DataError, match="lacks seeds"):
        saving_table(fewer)
    one_seed_asvp = summary[~((summary["method"] == "asvp") & (summary["seed"] == 1))]
    with pytest.raises(DataError, match="different numbers of seeds"):
        average_saving(saving_table(one_seed_asvp))


def test_a_method_evaluated_beyond_the_random_curve_is_refused() -> None:
    summary = pd.concat([_two_seed_summary(), _summary([("asvp", 0, 400, 0.9)]).assign(n_labelled=800)])
    with pytest.raises(DataError, match="evaluate random at those points"):
        points_are_comparable(summary)


def test_paired_differences_compare_asvp_to_each_method_seed_by_seed() -> None:
    summary = _two_seed_summary()
    svpp = summary[summary["method"] == "asvp"].assign(method="svpp")
    svpp.loc[svpp["n_labelled"] == 200, "accuracy"] = 0.70  # ratio 0 at 200 for both seeds
    table = saving_table(pd.concat([summary, svpp]))
    from asvp.metrics import paired_differences

    gaps = paired_differences(table).set_index("versus")
    # seed 0: asvp (1/3 + 0) / 2 vs svpp (0 + 0) / 2 -> +1/6; seed 1: asvp (0 - 1/3)/2 vs svpp (0 - 1/3)/2 -> 0
    assert gaps.loc["svpp", "difference_mean"] == pytest.approx(1 / 12)
    assert gaps.loc["svpp", "wins"] == 1 and gaps.loc["svpp", "seeds"] == 2
    assert 0 < gaps.loc["svpp", "paired_t_p"] <= 1
    assert "random" in gaps.index
