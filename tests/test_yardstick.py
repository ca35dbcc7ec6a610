"""The yardstick is not capped silently: censored saving ratios read as bounds, comparisons carry
confidence intervals, and start-up names the random points the grid is missing."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from asvp.config import validate_config
from asvp.metrics import average_bound, average_saving, combine_bounds, paired_differences, saving_table
from asvp.plan import Plan


def _summary(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["method", "seed", "n_labelled", "accuracy"])
    frame["strategy"] = frame["method"].map(lambda m: "random" if m == "random" else "margin")
    frame["round"] = frame.groupby(["method", "seed"]).cumcount()
    return frame


RANDOM = [(100, 0.60), (200, 0.70), (400, 0.80)]


def _three_seeds(asvp_200: list[float], asvp_400: list[float]) -> pd.DataFrame:
    rows = [("random", seed, n, a) for seed in range(3) for n, a in RANDOM]
    for seed in range(3):
        rows += [("asvp", seed, 100, 0.60), ("asvp", seed, 200, asvp_200[seed]), ("asvp", seed, 400, asvp_400[seed])]
    return _summary(rows)


def test_a_censored_point_reads_as_the_bound_it_is_not_as_a_value() -> None:
    # 0.85 at 400 lies above random's last point: N2 >= 400, so the ratio is >= 0%, not 0%.
    # 0.55 at 200 lies below random's first point: N2 <= 100, so the ratio is <= -100%, not -100%.
    table = saving_table(_three_seeds([0.75, 0.55, 0.70], [0.85, 0.75, 0.80]))
    asvp = table[table["method"] == "asvp"].set_index(["seed", "n_labelled"])
    assert asvp.loc[(0, 400), "saving"] == ">= 0.0%"
    assert asvp.loc[(1, 200), "saving"] == "<= -100.0%"
    assert asvp.loc[(0, 200), "saving"] == "33.3%"  # inside the curve: a measured ratio
    average = average_saving(table).set_index("method")
    assert average.loc["asvp", "bound"] == "mixed"  # seed 0 is a lower bound, seed 1 an upper one


def test_an_average_is_a_bound_only_when_its_censored_points_agree() -> None:
    assert average_bound(["", ""]) == ""
    assert average_bound(["above", ""]) == "lower" and average_bound(["below"]) == "upper"
    assert average_bound(["above", "below"]) == "mixed"
    assert combine_bounds(["", "lower", "lower"]) == "lower" and combine_bounds(["lower", "upper"]) == "mixed"


def test_comparisons_give_each_saving_ratio_and_the_paired_difference_a_t_interval() -> None:
    # Every point inside random's curve: asvp's average ratios per seed are about 1/6, 0 and 0.
    table = saving_table(_three_seeds([0.75, 0.70, 0.75], [0.80 - 1e-9, 0.80 - 1e-9, 0.75]))
    row = paired_differences(table).set_index("versus").loc["random"]
    per_seed = table[table["round"] > 0].groupby(["method", "seed"])["saving_ratio"].mean()
    gaps = (per_seed["asvp"] - per_seed["random"]).to_numpy()
    half = stats.t.ppf(0.975, 2) * gaps.std(ddof=1) / math.sqrt(3)
    assert row["difference_mean"] == pytest.approx(gaps.mean())
    assert (row["difference_ci_low"], row["difference_ci_high"]) == pytest.approx((gaps.mean() - half, gaps.mean() + half))
    assert row["difference"] == f"{gaps.mean() * 100:.1f}% [{(gaps.mean() - half) * 100:.1f}%, {(gaps.mean() + half) * 100:.1f}%]"
    assert row["difference_per_seed"] == " ".join(f"{s}:{g * 100:+.1f}%" for s, g in enumerate(gaps))
    assert row["reference_saving"].startswith(f"{per_seed['asvp'].mean() * 100:.1f}% [")
    assert row["versus_saving"].replace("-", "") == "0.0% [0.0%, 0.0%]"  # random against itself: zero up to rounding


def test_a_comparison_with_censored_points_is_marked_as_a_bound() -> None:
    table = saving_table(_three_seeds([0.75, 0.70, 0.75], [0.85, 0.85, 0.85]))  # every 400 point above random
    row = paired_differences(table).set_index("versus").loc["random"]
    assert row["reference_saving"].startswith(">= ") and row["difference"].startswith(">= ")
    assert not row["versus_saving"].startswith((">=", "<="))


def _plan(methods: list[str], budgets: list[int]) -> Plan:
    return Plan(validate_config({"experiment": "t", "methods": methods, "schedule": {"budgets": budgets}}))


def test_start_up_warns_that_the_grid_censors_the_last_points_and_names_the_random_points_to_add() -> None:
    plan = _plan(["random", "svpp"], [100, 100, 100, 100])
    assert plan.random_points_to_add() == [500, 600]  # up to 1.5 x 400 in steps of the last budget
    warning = plan.describe().splitlines()[1]
    assert "WARNING" in warning and "400 labels at most 0%" in warning and "300 labels at most 25%" in warning
    assert "500, 600 labels" in warning
    assert "\n" not in _plan(["svpp"], [100, 100, 100]).describe()  # nothing compared with random
    assert "\n" not in _plan(["random"], [100, 100, 100]).describe()
