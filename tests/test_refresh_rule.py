"""The refresh rule's change per round, on hand-made LogME-PED curves and in decision.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from asvp.config import validate_config
from asvp.decision import RULES, decide_round, normalised_change
from asvp.plan import Plan

ROUND_SIZES = (25, 50, 100, 200)


def settings(**overrides) -> dict:
    decision = validate_config({"experiment": "t"})["decision"]
    decision.update(overrides)
    return decision


def fires_at(curve, round_size: int, rule: str, start: int = 100, stop: int = 4000, threshold: float = 1.0) -> int | None:
    """The first labelled-set size at which `rule` fires along rounds of `round_size` labels."""
    counts = list(range(start, stop + 1, round_size))
    for before, after in zip(counts, counts[1:]):
        if normalised_change(abs(curve(after) - curve(before)), before, after, rule) < threshold:
            return after
    return None


def test_paper_rule_is_the_raw_difference_and_both_others_match_it_at_the_papers_refresh() -> None:
    for rule in RULES:
        assert normalised_change(0.7, 400, 600, rule) == pytest.approx(0.7)
    assert normalised_change(0.7, 300, 325, "paper") == 0.7
    assert normalised_change(0.7, 300, 325, "per_labels") == pytest.approx(0.7 * 8)
    assert normalised_change(0.7, 1000, 2000, "per_doubling") == pytest.approx(0.7 * math.log2(1.5))
    # per_labels is the paper's value at every 200-label round
    assert normalised_change(0.7, 1200, 1400, "per_labels") == pytest.approx(0.7)


def test_a_round_that_adds_no_labels_has_no_slope() -> None:
    with pytest.raises(ValueError, match="n_before < n_after"):
        normalised_change(0.5, 300, 300, "per_doubling")
    with pytest.raises(ValueError, match="unknown decision rule"):
        normalised_change(0.5, 300, 400, "slope")


@pytest.mark.parametrize("curve", [lambda n: 5000 / n, lambda n: 2e5 * n ** -1.5],
                         ids=["a/n", "a/n^1.5"])
def test_normalised_rules_fire_near_the_same_size_whatever_the_round_size(curve) -> None:
    """The paper's rule spreads over hundreds of labels on a smooth falling curve; the normalised
    rules fire within about one 200-label round of each other."""
    for rule in ("per_doubling", "per_labels"):
        fired = [fires_at(curve, r, rule) for r in ROUND_SIZES]
        assert all(fired) and max(fired) - min(fired) <= 300, (rule, fired)
    paper = [fires_at(curve, r, "paper") for r in ROUND_SIZES]
    assert paper == sorted(paper) and paper[-1] - paper[0] >= 600, paper


def test_on_a_over_n_per_doubling_fires_where_the_log_slope_crosses_the_threshold() -> None:
    # a/n falls by a ln 2 per doubling at n: x log2(1.5) below 1 once n > a ln 1.5 (~2027 for a=5000)
    for r in ROUND_SIZES:
        assert 2027 <= fires_at(lambda n: 5000 / n, r, "per_doubling") <= 2027 + 2 * r


def overlapping(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    return rng.normal(size=(len(labels), 8)) + 0.1 * labels[:, None], labels


def test_decision_json_records_the_raw_change_the_labels_added_and_the_rule() -> None:
    x, y = overlapping(40)
    first_rows = np.concatenate([np.arange(c * 40, c * 40 + 20) for c in range(3)])  # 60 of the 120
    reference = np.random.default_rng(2).normal(size=(200, 8))
    first = decide_round(x[first_rows], y[first_rows], reference, None, settings())
    assert first["rule"] == "per_doubling" and first["labels_added"] is None and first["normalised_difference"] is None
    second = decide_round(x, y, reference, first, settings())
    assert second["previous_n_labelled"] == 60 and second["labels_added"] == 60
    assert second["normalised_difference"] == pytest.approx(second["difference"] * math.log2(1.5) / 1.0)
    assert "per doubling" in second["reason"]
    json.dumps(second, allow_nan=False)


def test_the_rule_decides_between_raw_and_normalised_change() -> None:
    x, y = overlapping(40)
    first_rows = np.concatenate([np.arange(c * 40, c * 40 + 35) for c in range(3)])  # 105 -> 120 labels
    reference = np.random.default_rng(2).normal(size=(200, 8))
    verdicts = {}
    for rule in ("paper", "per_labels"):
        first = decide_round(x[first_rows], y[first_rows], reference, None, settings(rule=rule))
        difference = decide_round(x, y, reference, first, settings(rule=rule))["difference"]
        # a threshold between the raw change and its value per 200 labels (x 200/15)
        threshold = 2 * difference
        verdicts[rule] = decide_round(x, y, reference, first, settings(rule=rule, threshold=threshold))["verdict"]
    assert verdicts == {"paper": "refresh", "per_labels": "keep"}


def test_the_same_labelled_set_twice_is_no_evidence_for_a_normalised_rule() -> None:
    x, y = overlapping(30)
    reference = np.random.default_rng(2).normal(size=(200, 8))
    first = decide_round(x, y, reference, None, settings(threshold=1e9))
    second = decide_round(x, y, reference, first, settings(threshold=1e9))
    assert second["verdict"] == "keep" and second["reason"] == "no labels added since the previous round"
    assert second["labels_added"] == 0 and second["normalised_difference"] is None


def plan_of(**config) -> Plan:
    return Plan(validate_config({"experiment": "t", "methods": ["svpp", "asvp"], **config}))


def test_start_up_says_when_the_schedule_leaves_the_rule_nothing_to_do() -> None:
    assert "\n" not in plan_of(schedule={"budgets": [100, 100, 100]}).describe()
    assert "\n" not in Plan(validate_config({"experiment": "t", "methods": ["svpp"],
                                             "schedule": {"budgets": [100]}})).describe()
    short = plan_of(schedule={"budgets": [100, 100]}).describe().splitlines()
    assert len(short) == 2 and "2 round(s)" in short[1] and "asvp" in short[1]
    off = plan_of(decision={"max_refreshes": 0}).describe().splitlines()
    assert len(off) == 2 and "max_refreshes is 0" in off[1]
