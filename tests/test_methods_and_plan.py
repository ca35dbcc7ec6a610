"""The method table is the one list of methods, and the plan's params policy keeps old results valid."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from asvp import methods, plan
from asvp.config import load_schema, validate_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_the_schema_offers_exactly_the_methods_of_the_table() -> None:
    enum = load_schema()["properties"]["methods"]["items"]["enum"]
    assert enum == list(methods.METHODS)


def test_every_method_says_how_it_selects_and_trains() -> None:
    for entry in methods.METHODS.values():
        assert entry.selection in ("random", "proxy", "model", "single_shot")
        assert entry.final_recipe in ("ft", "lpft", "decided")
        assert (entry.final_recipe == "decided") == entry.decides  # only a decision can change the recipe
    assert methods.names(lambda m: m.finetunes_every_round) == ("standard", "standard_lpft")
    assert methods.training_recipe("asvp") == "auto" and methods.training_recipe("standard_lpft") == "lpft"


def test_the_ablations_switch_one_alignment_off() -> None:
    decision = validate_config({"experiment": "t"})["decision"]
    assert methods.decision_settings("asvp_features_only", decision)["training_alignment"] is False
    assert methods.decision_settings("asvp_training_only", decision)["feature_alignment"] is False
    assert methods.decision_settings("asvp", decision) == {**decision, "feature_alignment": True,
                                                           "training_alignment": True}
    with pytest.raises(ValueError, match="makes no refresh decisions"):
        methods.decision_settings("svpp", decision)


def _excerpt(config: dict, *sections: str) -> dict:
    return json.loads(shlex.split(plan.params_json(config, *sections))[0])


def test_a_new_key_at_its_neutral_value_leaves_every_jobs_params_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a key with a default must not make every job of an existing experiment look changed."""
    config = validate_config({"experiment": "t"})
    before = _excerpt(config, "data", "finetune")
    grown = json.loads(json.dumps(config))
    grown["finetune"]["a_new_knob"] = 3
    monkeypatch.setitem(plan.NEUTRAL_VALUES, "finetune", {**plan.NEUTRAL_VALUES["finetune"], "a_new_knob": 3})
    assert _excerpt(grown, "data", "finetune") == before
    grown["finetune"]["a_new_knob"] = 4  # set away from it, the key is a change like any other
    assert _excerpt(grown, "data", "finetune")["finetune"]["a_new_knob"] == 4


def test_a_step_reads_back_the_keys_its_params_left_out_at_their_neutral_value() -> None:
    config = validate_config({"experiment": "t", "finetune": {"lr_head": 0.01}})
    params = shlex.split(plan.params_json(config, "data", "finetune"))[0]
    assert "optimizer" not in json.loads(params)["finetune"]
    restored = plan.config_from_params(params)
    assert restored["finetune"] == config["finetune"] and restored["data"] == config["data"]


def test_a_fine_tune_key_is_the_same_from_a_jobs_params_and_from_the_whole_config(tmp_path: Path) -> None:
    """Fine-tunes are shared between jobs, benchmarks and the advisor through their keys."""
    import pandas as pd

    from asvp.finetune import finetune_key

    config = validate_config({"experiment": "t"})
    labelled = pd.DataFrame({"pool_index": [3, 1], "label": [0, 2]})
    (tmp_path / "test.csv").write_text("sample_id,label\n0,1\n")
    job = plan.config_from_params(shlex.split(plan.params_json(config, *plan.finetune_sections("asvp")))[0])
    for kind in ("ft", "lpft"):
        assert finetune_key(job, kind, labelled, 0, tmp_path / "test.csv") == finetune_key(
            config, kind, labelled, 0, tmp_path / "test.csv")


def test_every_registered_neutral_value_is_the_schemas_default() -> None:
    filled = validate_config({"experiment": "t"})  # nested defaults filled in, as a run sees them
    for section, keys in plan.NEUTRAL_VALUES.items():
        for key, value in keys.items():
            assert filled[section][key] == value, f"{section}.{key}"


def test_planning_keys_and_other_strategies_options_stay_out_of_a_jobs_params() -> None:
    config = validate_config({"experiment": "t", "evaluation": {"at": [100, 200]},
                              "strategies": ["margin", "badge", "activeft"]})
    assert "at" not in _excerpt(config, "evaluation")["evaluation"]
    margin, badge, activeft = (json.loads(shlex.split(plan.params_json(config, "proxy", strategy=s))[0])
                               for s in ("margin", "badge", "activeft"))
    assert "strategy_options" not in margin and "device" not in margin
    assert set(badge["strategy_options"]) == {"badge"} and "device" not in badge
    assert activeft["device"] == config["device"]  # ActiveFT computes on the device


def test_the_identity_check_finds_a_changed_selection_and_ignores_timings(tmp_path: Path) -> None:
    from compare_results import compare

    for side in ("before", "after"):
        round_dir = tmp_path / side / "exp" / "svpp" / "margin" / "seed0" / "round001"
        round_dir.mkdir(parents=True)
        (round_dir / "selected.csv").write_text("pool_index\n3\n")
        (round_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "train_seconds": len(side)}))
    assert compare(tmp_path / "before", tmp_path / "after") == (2, [])
    (tmp_path / "after" / "exp" / "svpp" / "margin" / "seed0" / "round001" / "selected.csv").write_text("pool_index\n4\n")
    assert compare(tmp_path / "before", tmp_path / "after")[1] == ["differs: exp/svpp/margin/seed0/round001/selected.csv"]


def test_a_rounds_inputs_follow_the_method_and_the_oracle() -> None:
    from types import SimpleNamespace

    from asvp.rule_inputs import RuleInputs

    config = validate_config({"experiment": "t", "methods": ["random", "svpp", "asvp"]})
    files = RuleInputs(plan.Plan(config))
    asvp_round2 = SimpleNamespace(method="asvp", strategy="margin", seed="1", r="002")
    svpp_round2 = SimpleNamespace(method="svpp", strategy="margin", seed="1", r="002")
    # ASVP's proxy trains on the features its last decision left; SVPp's never change.
    assert files.features_in_use(asvp_round2) == "results/t/asvp/margin/seed1/round001/features.h5"
    assert files.features_in_use(svpp_round2) == files.pretrained == "results/t/features/pretrained.h5"
    assert files.features_in_use(SimpleNamespace(method="asvp", strategy="margin", seed="1", r="000")) == files.pretrained
    # Only a deciding method's evaluation waits for its decision and refreshed features.
    assert set(files.evaluate_inputs(asvp_round2)) == {"pool", "test", "labelled", "decision", "features"}
    assert set(files.evaluate_inputs(svpp_round2)) == {"pool", "test", "labelled"}
    assert files.decide_inputs(asvp_round2)["previous"] == "results/t/asvp/margin/seed1/round001/decision.json"
    # The simulated oracle labels inside the selection job; a person labels in a job of its own.
    assert files.labelled_outputs("r") == {"labelled": "r/labelled.csv"}
    human = validate_config({"experiment": "t", "oracle": "human"})
    assert RuleInputs(plan.Plan(human)).labelled_outputs("r") == {}
