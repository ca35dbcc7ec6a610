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


def _plan(methods: list[str], budgets: list[int], **evaluation: object) -> Plan:
    return Plan(validate_config({"experiment": "t", "methods": methods, "schedule": {"budgets": budgets},
                                 "evaluation": evaluation}))


def test_start_up_warns_that_the_grid_censors_the_last_points_and_names_the_random_points_to_add() -> None:
    plan = _plan(["random", "svpp"], [100, 100, 100, 100], random_beyond=[])
    assert plan.random_points_to_add() == [500, 600]  # up to 1.5 x 400 in steps of the last budget
    warning = plan.describe().splitlines()[1]
    assert "WARNING" in warning and "400 labels at most 0%" in warning and "300 labels at most 25%" in warning
    assert "500, 600 labels" in warning
    assert "\n" not in _plan(["svpp"], [100, 100, 100]).describe()  # nothing compared with random
    assert "\n" not in _plan(["random"], [100, 100, 100]).describe()


def test_random_runs_on_past_the_methods_last_point_by_default_and_is_evaluated_there() -> None:
    plan = _plan(["random", "svpp"], [100, 100, 100, 100], at=[200, 400])
    assert plan.random_points == [600]  # 'auto': the first step of the last budget at or past 1.5 x 400
    assert plan.budgets_of("random") == [100, 100, 100, 100, 200] and plan.budgets_of("svpp") == [100] * 4
    assert plan.rounds_of("random") == [0, 1, 2, 3, 4] and plan.rounds_of("svpp") == [0, 1, 2, 3]
    assert plan.eval_rounds_of("random") == [1, 3, 4] and plan.eval_rounds_of("svpp") == [1, 3]
    random_metrics = [f for f in plan.metrics_files() if "/random/" in f]
    assert [f.split("/")[-2] for f in random_metrics] == ["round001", "round003", "round004"]
    assert not any("round004" in f for f in plan.metrics_files() if "/svpp/" in f)
    described = plan.describe()
    assert "random also at 600 labels" in described and "WARNING" not in described
    # The delivered model stays the methods' last point.
    assert plan.delivered_rounds("random") == [3]


def test_an_explicit_list_of_random_points_makes_one_round_per_point() -> None:
    plan = _plan(["random", "asvp"], [200] * 10, at=[400, 800, 1200, 1600, 2000], random_beyond=[2400, 3000])
    assert plan.budgets_of("random")[10:] == [400, 600]
    assert [plan.labels_after[r] for r in plan.eval_rounds] == [400, 800, 1200, 1600, 2000]
    assert plan.eval_rounds_of("random")[-2:] == [10, 11]


@pytest.mark.parametrize("evaluation, other, message", [
    ({"random_beyond": [300, 500]}, {}, "must increase and start past the last round's 400 labels"),
    ({"random_beyond": [600, 500]}, {}, "must increase"),
    ({"random_beyond": [900]}, {"data": {"pool_subset": 800}}, "pool_subset is only 800"),
    ({"random_beyond": [600]}, {"oracle": "human"}, "asks people (oracle: human)"),
])
def test_random_points_that_cannot_be_run_are_refused_naming_the_key(evaluation: dict, other: dict, message: str) -> None:
    from asvp.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluation.random_beyond") as raised:
        validate_config({"experiment": "t", "methods": ["random", "svpp"], "schedule": {"budgets": [100] * 4},
                         "evaluation": evaluation, **other})
    assert message in str(raised.value)


def test_auto_adds_no_random_rounds_for_people_nor_without_a_method_to_compare() -> None:
    assert _plan(["random"], [100, 100, 100]).random_points == []
    human = Plan(validate_config({"experiment": "t", "methods": ["random", "svpp"], "oracle": "human",
                                  "schedule": {"budgets": [100, 100, 100]}}))
    assert human.random_points == [] and human.budgets_of("random") == [100, 100, 100]


def test_random_points_past_the_methods_extend_the_curve_but_are_no_point_of_the_comparison() -> None:
    from asvp.metrics import compared_points

    rows = [("random", seed, n, a) for seed in range(3) for n, a in [*RANDOM, (600, 0.88)]]
    rows += [("asvp", seed, n, a) for seed in range(3) for n, a in [(100, 0.6), (200, 0.75), (400, 0.85)]]
    summary = _summary(rows)
    table = saving_table(summary)
    assert table["n_labelled"].max() == 400  # random's 600 is not a row of its own
    asvp = table[table["method"] == "asvp"].set_index(["seed", "n_labelled"])
    # 0.85 at 400: random reaches it at 400 + 200 x (0.05 / 0.08) = 525 labels, measured, not capped.
    assert asvp.loc[(0, 400), "equivalent_labels"] == pytest.approx(525.0)
    assert asvp.loc[(0, 400), "censored"] == "" and asvp.loc[(0, 400), "saving"] == "23.8%"
    assert compared_points(summary)["n_labelled"].max() == 400
