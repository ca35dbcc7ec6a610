"""The backbone advisor (`asvp advise-backbone`) on a real Fashion-MNIST pilot: round 0 of a tiny pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from asvp.backbone_advisor import advise_backbone
from asvp.backbone_candidates import parse_candidate
from asvp.errors import CheckpointError, ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"backbone": {"arch": "mobilenet_v2", "checkpoint": "default"}}


def tiny_config(folder: Path, budget: int = 120, **overrides: dict) -> Path:
    """tests/configs/tiny.yaml with a round 0 large enough to hold 2+ images of every class."""
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config.update(results_dir=str(folder / "results"), schedule={"budgets": [budget]})
    for key, value in overrides.items():
        config.setdefault(key, {}).update(value)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("text, expected", [
    ("mobilenet_v2", ("mobilenet_v2", None, "default")),  # the config's arch: its checkpoint
    ("mobilenet_v2@48", ("mobilenet_v2", 48, "default")),
    ("mobilenet_v2@32:none", ("mobilenet_v2", 32, "none")),
    ("resnet18:/weights/moco:v2.pth", ("resnet18", None, "/weights/moco:v2.pth")),  # the path may hold ':'
    ("timm/vit_small_patch14_dinov2.lvd142m@98:none", ("timm/vit_small_patch14_dinov2.lvd142m", 98, "none")),
])
def test_candidate_grammar_gives_arch_resolution_and_checkpoint(text: str, expected: tuple) -> None:
    candidate = parse_candidate(text, CONFIG)
    assert (candidate.arch, candidate.resolution, candidate.checkpoint) == expected


@pytest.mark.parametrize("text, says", [
    ("mobilenet_v2@abc", "'@' is not a whole number"),
    ("mobilenet_v2@4:none", ">= 8"),
    ("@32:none", "does not parse: write ARCH[@PX][:CHECKPOINT]"),
    ("mobilenet_v2@32:", "nothing after ':'"),
    ("resnet18@32", "append :PATH to its weights or :none"),  # another arch cannot take the config's weights
])
def test_a_candidate_that_does_not_parse_is_named_with_the_fix(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"candidate '.*'") as error:
        parse_candidate(text, CONFIG)
    assert says in str(error.value)


def test_packaged_weights_rank_above_random_init_on_a_real_pilot(tmp_path: Path, real_fashion_mnist: Path,
                                                                default_weights: Path, torch_single_thread: None) -> None:
    out = tmp_path / "advice"
    text = advise_backbone(str(tiny_config(tmp_path)), ["mobilenet_v2@32:default", "mobilenet_v2@32:none",
                                                        "resnet18@32:none"], out=str(out), reference_images=60)
    table = pd.read_csv(out / "backbone_advice.csv")
    assert sorted(table["candidate"]) == ["mobilenet_v2@32:default", "mobilenet_v2@32:none", "resnet18@32:none"]
    metrics = ["cv_probe_accuracy", "logme_fixed_point", "logme_icml", "ped_steps", "extract_seconds_per_1000",
               "peak_memory_mb", "feature_dim", "pool_extract_seconds", "pool_peak_memory_mb"]
    assert np.isfinite(table[metrics].to_numpy(float)).all()
    assert (table["extract_seconds_per_1000"] > 0).all() and (table["peak_memory_mb"] >= 0).all()
    assert table.set_index("candidate")["feature_dim"].to_dict() == {
        "mobilenet_v2@32:default": 1280, "mobilenet_v2@32:none": 1280, "resnet18@32:none": 512}
    rank = table.set_index("candidate")["rank"]
    assert rank["mobilenet_v2@32:default"] < rank["mobilenet_v2@32:none"]
    # Random MobileNetV2 features vanish (~1e-10): the probe sits near chance and the advice says why.
    packaged = table.set_index("candidate").loc["mobilenet_v2@32:default"]
    assert packaged["cv_probe_accuracy"] > 0.5
    assert "mobilenet_v2@32:none: its features vanish" in text
    assert f"Use {table['candidate'][0]}" in text
    saved = json.loads((out / "backbone_advice.json").read_text())
    assert [c["candidate"] for c in saved["candidates"]] == table["candidate"].tolist()
    assert saved["pilot_images"] == 120
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written left behind


def test_a_pilot_with_one_image_of_a_class_names_the_budget_to_raise(tmp_path: Path, real_fashion_mnist: Path) -> None:
    with pytest.raises(DataError, match=r"single image of class\(es\) Shirt.*raise schedule.budgets\[0\]"):
        advise_backbone(str(tiny_config(tmp_path, budget=100)), ["mobilenet_v2@32:none"], out=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_unknown_arch_and_failing_candidates_are_named(tmp_path: Path, real_fashion_mnist: Path) -> None:
    config = str(tiny_config(tmp_path))
    with pytest.raises(ConfigError, match=r"candidate 'mobilenetv2@32:none': unknown backbone.arch.*Closest: mobilenet_v2"):
        advise_backbone(config, ["mobilenet_v2@32:none", "mobilenetv2@32:none"])
    with pytest.raises(CheckpointError, match=r"candidate 'resnet18@32:/no/such.pth': checkpoint file /no/such.pth does not exist"):
        advise_backbone(config, ["resnet18@32:/no/such.pth"])
    # A ViT at a size it cannot take: its extraction cannot run; the message names it and the fix.
    with pytest.raises(ConfigError, match=r"candidate 'vit_b_16@32:none': backbone.arch vit_b_16 cannot take 32-px"):
        advise_backbone(config, ["vit_b_16@32:none"])
    assert not (tmp_path / "results").exists()


def test_cli_advises_with_the_finetune_gap_end_to_end(tmp_path: Path, real_fashion_mnist: Path,
                                                     default_weights: Path) -> None:
    config = tiny_config(tmp_path, finetune={"epochs": 2, "batch_size": 40, "min_steps": 0, "milestones": []})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-m", "asvp", "--threads", "1", "advise-backbone", "--configfile",
                             str(config), "--candidates", "mobilenet_v2@32", "mobilenet_v2@32:none", "--finetune", "--reference-images", "60"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Use mobilenet_v2@32" in result.stdout and "Proxy:" in result.stdout
    table = pd.read_csv(tmp_path / "results/tiny/backbone_advice/backbone_advice.csv")  # the default --out
    assert np.isfinite(table[["lp_test_accuracy", "ft_test_accuracy", "ft_minus_lp"]].to_numpy(float)).all()
    assert (table["test_images"] == 100).all()
