"""ASVP's refresh decision (paper sec. 5) and the feature pass-through link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from asvp.config import validate_config
from asvp.decision import decide_round
from asvp.errors import DataError
from asvp.features import link_features


def settings(**overrides) -> dict:
    """The schema's decision settings with the paper's rule: these tests compare a labelled set
    with itself, which only the raw difference can (tests/test_refresh_rule.py has the others)."""
    decision = validate_config({"experiment": "t"})["decision"]
    decision.update(rule="paper", **overrides)
    return decision


def overlapping(n_per_class: int = 30, classes: int = 3, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    features = rng.normal(size=(len(labels), dim)) + 0.1 * labels[:, None]
    return features, labels


def separated(dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 30)
    features = 0.01 * rng.normal(size=(90, dim)) + 100.0 * np.eye(dim)[labels]
    return features, labels


def reference(dim: int = 8) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(200, dim))


def test_first_round_keeps_features_but_records_a_score() -> None:
    x, y = overlapping()
    record = decide_round(x, y, reference(), None, settings())
    assert record["verdict"] == "keep" and record["reason"] == "first round"
    assert record["ped_steps"] > 1 and np.isfinite(record["score"])
    assert record["train_method"] == "lpft" and record["next_feature_version"] == 0


def test_small_score_change_triggers_refresh_and_switches_to_ft() -> None:
    x, y = overlapping()
    first = decide_round(x, y, reference(), None, settings(threshold=1e9))
    second = decide_round(x, y, reference(), first, settings(threshold=1e9))
    assert second["verdict"] == "refresh" and second["refresh_features"]
    assert second["previous_score"] == first["score"] and second["difference"] == 0.0
    assert second["train_method"] == "ft" and second["next_feature_version"] == 1


def test_large_score_change_keeps_features() -> None:
    x, y = overlapping()
    first = decide_round(x, y, reference(), None, settings(threshold=0.0))
    second = decide_round(x, y, reference(), first, settings(threshold=0.0))
    assert second["verdict"] == "keep" and "threshold" in second["reason"]
    assert second["train_method"] == "lpft"


def test_ped_convergence_means_no_refresh_whatever_the_threshold() -> None:
    x, y = separated()
    first = decide_round(x, y, reference(), None, settings(threshold=1e9))
    second = decide_round(x, y, reference(), first, settings(threshold=1e9))
    assert second["ped_steps"] == 0
    assert second["verdict"] == "keep" and second["reason"].startswith("PED converged")


def test_scores_on_refreshed_features_are_not_compared_with_old_ones() -> None:
    x, y = overlapping()
    first = decide_round(x, y, reference(), None, settings(threshold=1e9))
    refreshed = decide_round(x, y, reference(), first, settings(threshold=1e9))
    after = decide_round(x, y, reference(), refreshed, settings(threshold=1e9, max_refreshes=5))
    assert after["feature_version"] == 1 and after["previous_score"] is None
    assert after["verdict"] == "keep"
    again = decide_round(x, y, reference(), after, settings(threshold=1e9, max_refreshes=5))
    assert again["verdict"] == "refresh" and again["next_feature_version"] == 2


def test_max_refreshes_caps_the_number_of_refreshes() -> None:
    x, y = overlapping()
    first = decide_round(x, y, reference(), None, settings(threshold=1e9, max_refreshes=0))
    second = decide_round(x, y, reference(), first, settings(threshold=1e9, max_refreshes=0))
    assert second["verdict"] == "keep" and "max_refreshes" in second["reason"]


def test_refresh_at_places_the_one_refresh_where_it_is_told_whatever_the_rule_says() -> None:
    x, y = overlapping()  # 90 labels
    before = decide_round(x, y, reference(), None, settings(threshold=0.0, refresh_at=91))
    assert before["verdict"] == "keep" and before["reason"] == "decision.refresh_at 91: not reached"
    # threshold 0 would never fire; the position forces it, and the rule's score is still recorded.
    at = decide_round(x, y, reference(), before, settings(threshold=0.0, refresh_at=90))
    assert at["verdict"] == "refresh" and at["refresh_features"] and np.isfinite(at["score"])
    assert at["reason"] == "decision.refresh_at 90: reached" and at["train_method"] == "ft"
    after = decide_round(x, y, reference(), at, settings(threshold=0.0, refresh_at=90))
    assert after["verdict"] == "keep" and "max_refreshes (1) reached" in after["reason"]


def test_feature_alignment_off_keeps_features_but_still_switches_training() -> None:
    x, y = overlapping()
    s = settings(threshold=1e9, feature_alignment=False)
    second = decide_round(x, y, reference(), decide_round(x, y, reference(), None, s), s)
    assert second["verdict"] == "refresh" and not second["refresh_features"]
    assert second["next_feature_version"] == 0 and second["train_method"] == "ft"


def test_training_alignment_off_always_trains_with_ft() -> None:
    x, y = overlapping()
    record = decide_round(x, y, reference(), None, settings(training_alignment=False))
    assert record["verdict"] == "keep" and record["train_method"] == "ft"


def test_single_labelled_class_keeps_features_without_a_score() -> None:
    x, _ = overlapping()
    record = decide_round(x, np.zeros(len(x), dtype=int), reference(), None, settings())
    assert record["verdict"] == "keep" and record["score"] is None
    json.dumps(record, allow_nan=False)


def test_nan_features_stop_the_decision() -> None:
    x, y = overlapping()
    x[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        decide_round(x, y, reference(), None, settings())


def test_decision_record_is_plain_json_without_nan() -> None:
    x, y = overlapping()
    record = decide_round(x, y, reference(), None, settings())
    json.dumps(record, allow_nan=False)  # raises on NaN/Inf


def test_link_points_at_the_real_file_never_at_another_link(tmp_path: Path) -> None:
    real = tmp_path / "features" / "pretrained.h5"
    real.parent.mkdir()
    real.write_bytes(b"data")
    previous = real
    for r in range(50):  # longer than the kernel's 40-link chain limit
        out = tmp_path / f"round{r:03d}" / "features.h5"
        out.parent.mkdir()
        link_features(previous, out)
        previous = out
    assert os.readlink(previous) == os.path.join("..", "features", "pretrained.h5")
    assert previous.read_bytes() == b"data"


def test_link_to_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        link_features(tmp_path / "missing.h5", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
