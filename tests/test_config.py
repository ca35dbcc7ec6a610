"""Tests for asvp.config: schema validation, defaults, and messages that name the key and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from asvp.config import REMOVED_KEYS, SCHEMA_PATH, load_config, validate_config
from asvp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"experiment": "unit"}


def _assert_keeps_values(raw: dict, validated: dict, where: str = "") -> None:
    """Every value the file sets survives validation unchanged (only absent keys are filled)."""
    for key, value in raw.items():
        assert key in validated, f"{where}{key}"
        if isinstance(value, dict):
            _assert_keeps_values(value, validated[key], f"{where}{key}.")
        else:
            assert validated[key] == value, f"{where}{key}"


@pytest.mark.parametrize("relative", ["workflow_config.yaml", "tests/configs/tiny.yaml"])
def test_shipped_configs_validate_and_keep_their_values(relative: str) -> None:
    path = REPO / relative
    config = load_config(path)
    _assert_keeps_values(yaml.safe_load(path.read_text()), config)
    assert config["proxy"]["lr"] > 0 and config["schedule"]["budgets"]
    if config["data"]["pool_subset"] is not None:
        assert sum(config["schedule"]["budgets"]) <= config["data"]["pool_subset"]


def test_defaults_are_filled_for_absent_sections_and_keys() -> None:
    config = validate_config({"experiment": "unit", "proxy": {"epochs": 3}})
    assert config["proxy"]["epochs"] == 3
    assert config["proxy"]["lr"] == 0.01  # paper appendix A, not the scripts' 0.1
    assert config["proxy"]["batch_size"] == 2048
    # whole sections absent from the input come back complete, nested ones included
    assert config["finetune"]["milestones"] == [20, 25]
    assert config["strategy_options"]["badge"]["candidates"] is None
    assert config["data"]["dataset"] == "fashion_mnist"
    assert config["seeds"] == [0]


def test_filled_defaults_are_independent_copies() -> None:
    first = validate_config(MINIMAL)
    first["finetune"]["milestones"].append(99)
    second = validate_config(MINIMAL)
    assert second["finetune"]["milestones"] == [20, 25]


def test_unknown_top_level_key_names_it_and_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"experiment": "unit", "seedz": [1]})
    message = str(info.value)
    assert "'seedz'" in message
    for allowed in ("experiment", "seeds", "proxy", "schedule"):
        assert allowed in message


def test_unknown_nested_key_names_its_path_and_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"experiment": "unit", "proxy": {"lrr": 1}})
    message = str(info.value)
    assert "proxy.lrr" in message
    for allowed in ("lr", "epochs", "weight_decay", "batch_size"):
        assert allowed in message


def test_wrong_type_names_the_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"experiment": "unit", "proxy": {"lr": "abc"}})
    message = str(info.value)
    assert "proxy.lr" in message
    assert "abc" in message


def test_yaml_exponent_without_sign_read_as_text_gets_a_hint(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML, Snakemake's loader) reads 1.0e6 as the string '1.0e6'
    path = tmp_path / "exp.yaml"
    path.write_text("experiment: unit\ndecision:\n  threshold: 1.0e6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "decision.threshold" in str(info.value) and "1.0e+6" in str(info.value)
    path.write_text("experiment: unit\ndecision:\n  threshold: 1.0e+6\n")
    assert load_config(path)["decision"]["threshold"] == 1.0e6


def test_bad_enum_value_lists_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"experiment": "unit", "features": {"dtype": "float8"}})
    message = str(info.value)
    assert "features.dtype" in message and "float8" in message
    for allowed in ("float16", "float32"):
        assert allowed in message


def test_bad_enum_value_inside_a_list_names_the_item() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"experiment": "unit", "strategies": ["margin", "badgee"]})
    message = str(info.value)
    assert "strategies.1" in message and "badgee" in message and "entropy" in message


def test_source_is_named_in_the_message() -> None:
    with pytest.raises(ConfigError, match="my_config.yaml"):
        validate_config({"experiment": "unit", "nope": 1}, source="my_config.yaml")


def test_missing_required_experiment_raises() -> None:
    with pytest.raises(ConfigError, match="experiment"):
        validate_config({"seeds": [0]})


def test_budgets_summing_above_the_pool_subset_raise() -> None:
    config = {"experiment": "unit", "data": {"pool_subset": 100}, "schedule": {"budgets": [50, 40, 20]}}
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert "110" in message and "pool_subset" in message and "100" in message
    config["schedule"]["budgets"] = [50, 50]
    assert validate_config(config)["schedule"]["budgets"] == [50, 50]  # exactly the pool is fine


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"finetune": {"epochs": 10, "milestones": [5, 12]}}, "finetune.milestones"),
        # the lr steps after each epoch, so a milestone at the last epoch never affects training either
        ({"finetune": {"epochs": 10, "milestones": [10]}}, "finetune.milestones"),
        # LP-FT's probe takes the first lp_epochs of finetune.epochs: it must leave FT epochs, and no
        # milestone may fall inside it
        ({"methods": ["asvp"], "finetune": {"epochs": 10, "milestones": []}, "lpft": {"lp_epochs": 10}}, "lpft.lp_epochs"),
        ({"methods": ["standard_lpft"], "finetune": {"epochs": 10, "milestones": [2, 8]}, "lpft": {"lp_epochs": 3}},
         "finetune.milestones"),
    ],
)
def test_milestones_beyond_the_epochs_or_inside_the_probe_raise(sections: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config({"experiment": "unit", **sections})


def test_a_short_ft_schedule_is_accepted_when_no_method_trains_with_lp_ft() -> None:
    config = validate_config({"experiment": "unit", "methods": ["random", "svpp"], "finetune": {"epochs": 2, "milestones": []}})
    assert config["finetune"]["epochs"] == 2 and config["lpft"]["lp_epochs"] == 3


def test_milestones_within_the_epochs_are_accepted() -> None:
    config = validate_config({"experiment": "unit", "finetune": {"epochs": 10, "milestones": [5, 9]}})
    assert config["finetune"]["milestones"] == [5, 9]


def test_dataset_that_needs_a_root_without_one_raises() -> None:
    with pytest.raises(ConfigError, match="data.root"):
        validate_config({"experiment": "unit", "data": {"dataset": "imagefolder"}})


def test_validate_config_does_not_mutate_its_input() -> None:
    raw = {"experiment": "unit", "proxy": {"epochs": 3}, "schedule": {"budgets": [5, 5]}}
    snapshot = copy.deepcopy(raw)
    validate_config(raw)
    assert raw == snapshot


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(missing)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiment: unit\nproxy: {lr: [0.1\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


def test_non_mapping_yaml_names_the_file(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- experiment\n- unit\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(listing)


def test_load_config_reports_errors_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"experiment": "unit", "proxy": {"lrr": 1}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "typo.yaml" in str(info.value) and "proxy.lrr" in str(info.value)


def test_strategy_options_are_filled_typed_and_checked_against_the_budgets() -> None:
    config = validate_config({"experiment": "unit"})
    assert config["strategy_options"] == {"badge": {"candidates": None, "projection_dim": None}}
    with pytest.raises(ConfigError, match="strategy_options.badge.cands"):
        validate_config({"experiment": "unit", "strategy_options": {"badge": {"cands": 5}}})
    with pytest.raises(ConfigError, match="candidates is 50, fewer than the largest round budget"):
        validate_config({"experiment": "unit", "strategies": ["badge"], "schedule": {"budgets": [100, 100]},
                         "strategy_options": {"badge": {"candidates": 50}}})


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_a_removed_key_names_itself_and_where_its_setting_went(key: str) -> None:
    *sections, name = key.split(".")
    raw: dict = {"experiment": "unit"}
    inner = raw
    for section in sections:
        inner = inner.setdefault(section, {})
    inner[name] = {} if key in ("decision.ped", "strategy_options.activeft") else 1
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    message = str(info.value)
    assert f"'{key}' was removed" in message and REMOVED_KEYS[key] in message and "Remove the key" in message


def _schema_defaults(schema: dict, prefix: str = "") -> dict:
    """{dotted leaf key: default} of every schema key that has one."""
    found = {}
    for name, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            found.update(_schema_defaults(sub, f"{prefix}{name}."))
        elif "default" in sub:
            found[f"{prefix}{name}"] = sub["default"]
    return found


def _leaves(config: dict, prefix: str = "") -> dict:
    found = {}
    for name, value in config.items():
        if isinstance(value, dict):
            found.update(_leaves(value, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = value
    return found


def test_no_removed_key_is_still_in_the_schema() -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    keys = set(_schema_defaults(schema))
    assert not [k for k in REMOVED_KEYS if k in keys or any(s.startswith(k + ".") for s in keys)]


# The two keys a user replaces first, named in the default experiment although they equal the
# schema's defaults (workflow_config.yaml says so beside each).
SHOWN_FOR_THE_USER = {"data.dataset", "backbone.arch", "backbone.checkpoint"}


def test_workflow_config_sets_only_what_the_default_experiment_changes() -> None:
    """One set of defaults: the schema's. The default experiment does not restate them."""
    defaults = _schema_defaults(yaml.safe_load(SCHEMA_PATH.read_text()))
    raw = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    restated = sorted(k for k, v in _leaves(raw).items() if k in defaults and defaults[k] == v and k not in SHOWN_FOR_THE_USER)
    assert not restated, f"workflow_config.yaml restates the schema's defaults of {restated}: remove them"
    assert not {"finetune", "lpft", "proxy"} & set(raw), "the recipes are the schema's, not the default experiment's"
