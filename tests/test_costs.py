"""The time model, overall cost and cost advisor on timings and summaries made by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from asvp import costs
from asvp.advisor import advise, break_even
from asvp.errors import DataError

PRICES = costs.Prices(label_price=0.01, compute_price_per_hour=3.6)  # 0.001 USD per compute second


def _row(method: str, seed: int, r: int, n: int, **values: object) -> dict[str, object]:
    return {"method": method, "strategy": "random" if method == "random" else "margin", "seed": seed, "round": r,
            "n_labelled": n, **values}


def _eval(key: str, train: float, test: float = 10.0, reused: bool = False, job: float | None = None) -> dict[str, object]:
    job = (train + test + 5.0) if job is None else job
    return {"eval_key": key, "eval_reused": reused, "eval_train_seconds": train, "eval_test_seconds": test, "seconds_evaluate": job}


def _rounds() -> pd.DataFrame:
    return pd.DataFrame([
        # SVPp: extraction 60 s in round 0; proxy 5 s + scoring 2 s per round; fine-tunes at rounds 0 and 2.
        _row("svpp", 0, 0, 100, seconds_select_initial=1.0, seconds_label=1.0, seconds_extract_pretrained=60.0, **_eval("k0", 100.0)),
        _row("svpp", 0, 1, 200, seconds_train_proxy=5.0, seconds_select=2.0, seconds_label=1.0),
        _row("svpp", 0, 2, 300, seconds_train_proxy=5.0, seconds_select=2.0, seconds_label=1.0, **_eval("k2", 200.0)),
        # Standard: round 0 reused the cache (8 s job), then trained 150 s and 180 s.
        _row("standard", 0, 0, 100, seconds_select_initial=1.0, seconds_label=1.0, **_eval("k0", 100.0, reused=True, job=8.0)),
        _row("standard", 0, 1, 200, seconds_select=20.0, seconds_label=1.0, **_eval("s1", 150.0)),
        _row("standard", 0, 2, 300, seconds_select=20.0, seconds_label=1.0, **_eval("s2", 180.0)),
        # ASVP: refresh after round 1 (fine-tune 200 s trained in the refresh job, 40 s re-extraction);
        # round 1's evaluation reuses the refresh's fine-tune.
        _row("asvp", 0, 0, 100, seconds_select_initial=1.0, seconds_label=1.0, seconds_extract_pretrained=60.0,
             seconds_decide=3.0, seconds_refresh_features=0.5, refreshed=False, **_eval("a0", 90.0)),
        _row("asvp", 0, 1, 200, seconds_train_proxy=5.0, seconds_select=2.0, seconds_label=1.0, seconds_decide=3.0,
             seconds_refresh_features=250.0, refreshed=True, refresh_key="r1", refresh_reused=False,
             refresh_train_seconds=200.0, refresh_test_seconds=10.0, **_eval("r1", 200.0, reused=True, job=6.0)),
    ])


def test_selection_and_final_model_seconds_per_round() -> None:
    rounds = _rounds()
    finetunes = costs.finetune_seconds(rounds)
    assert finetunes == {"k0": 100.0, "k2": 200.0, "s1": 150.0, "s2": 180.0, "a0": 90.0, "r1": 200.0}
    svpp = costs.run_compute(rounds[rounds["method"] == "svpp"], finetunes).set_index("round")
    assert svpp.loc[0, "selection_seconds"] == pytest.approx(62.0) and svpp.loc[0, "final_seconds"] == 100.0
    assert svpp.loc[2, "selection_seconds"] == pytest.approx(62.0 + 8.0 + 8.0) and svpp.loc[2, "final_seconds"] == 200.0
    standard = costs.run_compute(rounds[rounds["method"] == "standard"], finetunes).set_index("round")
    # Round 0: its model is the final one (100 s, trained elsewhere but charged to this run).
    assert standard.loc[0, "selection_seconds"] == pytest.approx(2.0) and standard.loc[0, "final_seconds"] == 100.0
    # Round 1 selects with round 0's model: 2 + (8 s job) + 100 s + 21 s.
    assert standard.loc[1, "selection_seconds"] == pytest.approx(131.0) and standard.loc[1, "final_seconds"] == 150.0
    # Round 2: + round 1's job overhead (165 - 160) + its 150 s + 21 s.
    assert standard.loc[2, "selection_seconds"] == pytest.approx(131.0 + 5.0 + 150.0 + 21.0)
    asvp = costs.run_compute(rounds[rounds["method"] == "asvp"], finetunes).set_index("round")
    # Round 1: 65.5 + 11 + re-extraction (250 - 210) + the refresh fine-tune 200; the evaluation reuses it: free.
    assert asvp.loc[0, "selection_seconds"] == pytest.approx(65.5)
    assert asvp.loc[1, "selection_seconds"] == pytest.approx(65.5 + 11.0 + 40.0 + 200.0)
    assert asvp.loc[1, "final_seconds"] == 0.0


def test_time_model_terms_and_formula() -> None:
    rounds = _rounds()
    summary = pd.DataFrame([{**{k: r[k] for k in ("method", "strategy", "seed", "round", "n_labelled")},
                             "accuracy": 0.7, "status": "ok", "device": "cpu"}
                            for r in rounds.to_dict("records") if isinstance(r.get("eval_key"), str)])
    table = costs.compute_table(summary, rounds, PRICES)
    model = costs.time_model(rounds, table).set_index("method")
    standard = model.loc["standard"]
    assert standard["N_al"] == 2 and standard["T_f_full"] == pytest.approx(20.0)
    assert standard["T_tr_full"] == pytest.approx((100 + 150 + 180) / 3)
    assert standard["formula_seconds"] == pytest.approx(2 * ((100 + 150 + 180) / 3 + 20.0))
    assert standard["measured_seconds"] == pytest.approx(307.0)
    svpp = model.loc["svpp"]
    assert (svpp["T_pre"], svpp["T_tr_proxy"], svpp["T_f_proxy"]) == (60.0, 5.0, 2.0)
    assert svpp["formula_seconds"] == pytest.approx(2 * 7.0 + 60.0)
    asvp = model.loc["asvp"]
    assert asvp["N_pre"] == 2 and asvp["T_tr_full"] == 200.0
    assert asvp["formula_seconds"] == pytest.approx(1 * 7.0 + 2 * 60.0 + 1 * 200.0)
    # Cost at svpp's round 2: 300 labels x 0.01 + (78 + 200) s x 0.001 USD/s (CPU, factor 1).
    point = table[(table["method"] == "svpp") & (table["round"] == 2)].iloc[0]
    assert point["total_cost"] == pytest.approx(3.0 + 0.278)


def test_cpu_factor_scales_compute_and_prices_are_checked() -> None:
    assert costs.Prices.from_config({"label_price": 0.036, "compute_price_per_hour": 3.06}).cpu_to_gpu_factor == 1.0
    for bad in ({"label_price": -1, "compute_price_per_hour": 3.06}, {"compute_price_per_hour": 3.06},
                {"label_price": 0.036, "compute_price_per_hour": math.nan}):
        with pytest.raises(DataError, match="cost\\."):
            costs.Prices.from_config(bad)
    rounds = _rounds()[lambda f: f["method"] == "svpp"]
    summary = pd.DataFrame([_row("svpp", 0, 0, 100, accuracy=0.6, status="ok", device="cpu")])
    scaled = costs.compute_table(summary, rounds, costs.Prices(0.01, 3.6, cpu_to_gpu_factor=0.1))
    assert scaled.iloc[0]["compute_hours"] == pytest.approx(162.0 / 3600 * 0.1)
    on_gpu = costs.compute_table(summary.assign(device="cuda"), rounds, costs.Prices(0.01, 3.6, cpu_to_gpu_factor=0.1))
    assert on_gpu.iloc[0]["compute_hours"] == pytest.approx(162.0 / 3600)


def test_reach_target_interpolates_labels_and_compute() -> None:
    points = pd.DataFrame({"n_labelled": [100, 200, 400], "accuracy": [0.6, 0.75, 0.85], "status": "ok",
                           "selection_hours": [0.0, 0.1, 0.3], "compute_hours": [0.1, 0.2, 0.4]})
    reached = costs.reach_target(points, 0.80)
    assert reached == pytest.approx({"n_labelled": 300.0, "selection_hours": 0.2, "compute_hours": 0.3})
    assert math.isnan(costs.reach_target(points, 0.9)["n_labelled"])


def _pilot(tmp_path: Path, asvp_select_seconds: tuple[float, float] = (1800.0, 1800.0)) -> Path:
    """A finished pilot: random / standard / asvp, 2 seeds, evaluated at 100, 200, 400 labels.

    Target (random's final accuracy) 0.80. asvp reaches it at 200 labels with 1800 s of
    selection + a 360 s final fine-tune (0.6 h); standard at 300 labels (halfway from 0.75 at
    200 to 0.85 at 400) with 0.21 h -> 0.32 h of compute: 0.265 h.
    """
    experiment = tmp_path / "results" / "pilot"
    experiment.mkdir(parents=True)
    summary, rounds = [], []
    curves = {"random": [0.6, 0.7, 0.8], "standard": [0.6, 0.75, 0.85], "asvp": [0.6, 0.8, 0.85]}
    for method, accuracies in curves.items():
        for seed in (0, 1):
            for r, (n, accuracy) in enumerate(zip([100, 200, 400], accuracies)):
                key = f"{method}-{seed}-{r}"
                summary.append(_row(method, seed, r, n, accuracy=accuracy, status="ok", device="cpu"))
                select = {"asvp": asvp_select_seconds[seed], "standard": 36.0, "random": 0.0}[method] if r else 0.0
                rounds.append(_row(method, seed, r, n, seconds_select=select, **_eval(key, 360.0, test=0.0, job=360.0)))
    pd.DataFrame(summary).to_csv(experiment / "summary.csv", index=False)
    pd.DataFrame(rounds).to_csv(experiment / "rounds.csv", index=False)
    return experiment


def test_advisor_picks_the_cheapest_method_and_the_break_even_label_price(tmp_path: Path) -> None:
    text = advise(_pilot(tmp_path), label_price=0.036, gpu_hour_price=3.0)
    # asvp: 200 x 0.036 + 0.6 h x 3 = 9.00; standard: 300 x 0.036 + 0.265 h x 3 = 11.595; random: 400 x 0.036 + 0.1 h x 3 = 14.70
    assert "Cheapest: asvp (margin) at 9.00 USD, 2.60 USD (22.4%) below standard (margin)" in text
    assert "the seeds do not overlap" in text
    # Break-even: (0.6 - 0.265) h x 3 USD / (300 - 200) labels = 0.01005 USD per label.
    assert "asvp is cheaper above 0.0100 USD per label" in text
    assert "compute was measured on a CPU" in text


def test_advisor_says_when_the_pilot_cannot_decide(tmp_path: Path) -> None:
    # seed 1 of asvp spends 3 h selecting: its cost 200 x 0.036 + 3.1 h x 3 = 16.5 overlaps standard's 11.6
    text = advise(_pilot(tmp_path, asvp_select_seconds=(1800.0, 10800.0)), label_price=0.036, gpu_hour_price=3.0)
    assert "too small to decide: the seeds overlap" in text
    unreachable = advise(_pilot(tmp_path / "b"), label_price=0.036, gpu_hour_price=3.0, target_accuracy=0.84)
    assert "random" in unreachable and "did not reach the target in 2 of 2 seeds" in unreachable


def test_break_even_when_asvp_needs_more_labels() -> None:
    asvp = pd.Series({"method": "asvp", "strategy": "margin", "n_labelled": 300.0, "compute_hours": 0.1})
    standard = pd.Series({"method": "standard", "strategy": "margin", "n_labelled": 200.0, "compute_hours": 1.1})
    # ASVP saves 1 h x 3 USD = 3 USD of compute and needs 100 more labels: cheaper below 0.03 USD per label.
    assert "cheaper only below 0.0300 USD per label" in break_even(asvp, standard, 3.0)


def test_missing_tables_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the workflow"):
        advise(tmp_path, 0.036, 3.0)


def test_single_shot_points_are_charged_alone() -> None:
    """ActiveFT(pre): each evaluation point is its own selection; nothing accumulates over points."""
    rounds = pd.DataFrame([
        _row("activeft_pre", 0, 0, 100, seconds_select=30.0, seconds_label=1.0, seconds_extract_pretrained=60.0,
             **_eval("p0", 100.0)),
        _row("activeft_pre", 0, 2, 300, seconds_select=50.0, seconds_label=1.0, seconds_extract_pretrained=60.0,
             **_eval("p2", 200.0)),
    ])
    shots = costs.run_compute(rounds, costs.finetune_seconds(rounds)).set_index("round")
    assert shots.loc[0, "selection_seconds"] == pytest.approx(91.0) and shots.loc[0, "final_seconds"] == 100.0
    assert shots.loc[2, "selection_seconds"] == pytest.approx(111.0) and shots.loc[2, "final_seconds"] == 200.0
