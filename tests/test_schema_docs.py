"""The config schema documents itself: every key says what it does and what values it takes.

`rules/schemas/config.schema.yaml` is the reference a user reads to write a config, so a key
without a description (or without a type) is a gap in the documentation, not just in validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from asvp.config import SCHEMA_PATH, load_config
from asvp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TYPE_KEYWORDS = ("type", "enum", "oneOf", "anyOf")


def _properties(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted key path, subschema) of every property, nested objects' properties included."""
    found = []
    for name, subschema in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        found.append((path, subschema))
        found += _properties(subschema, f"{path}.")
    return found


def test_the_walk_reaches_nested_keys() -> None:
    paths = {path for path, _ in _properties(yaml.safe_load(SCHEMA_PATH.read_text()))}
    assert {"experiment", "proxy.lr", "decision.threshold", "strategy_options.badge.candidates"} <= paths


def test_every_schema_key_has_a_description_and_a_type() -> None:
    properties = _properties(yaml.safe_load(SCHEMA_PATH.read_text()))
    undescribed = [path for path, sub in properties if not str(sub.get("description") or "").strip()]
    untyped = [path for path, sub in properties if not any(keyword in sub for keyword in TYPE_KEYWORDS)]
    assert not undescribed, f"schema keys without a description: {', '.join(undescribed)}"
    assert not untyped, f"schema keys without one of {'/'.join(TYPE_KEYWORDS)}: {', '.join(untyped)}"


SHIPPED = ["workflow_config.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.yaml")),
           "tests/configs/tiny.yaml"]


@pytest.mark.parametrize("relative", SHIPPED)
def test_shipped_configs_validate(relative: str) -> None:
    # data.root is only required to be set, not to exist, so the paper configs validate on any machine.
    try:
        config = load_config(REPO / relative)
    except ConfigError as exc:
        if "does not exist" in str(exc) and "config file" not in str(exc):
            pytest.skip(f"{relative} needs a folder this machine lacks: {exc}")
        raise
    assert config["experiment"]
