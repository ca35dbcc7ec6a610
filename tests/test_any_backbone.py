"""Any torchvision or timm backbone: checkpoints with SSL prefixes, the model's own preprocessing,
clear errors for bad input, and a tiny end-to-end run with a timm ViT and a torchvision ConvNeXt.

The networks are randomly initialised and saved to files here (nothing is downloaded): a timm
ViT-Tiny in a DINOv2-style training checkpoint (teacher.backbone., with the student and the DINO
head beside it) as safetensors, and a torchvision ConvNeXt-Tiny in a MoCo-style one
(module.encoder_q., with the key encoder and the queue) as .pth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from asvp.backbones import build_backbone, check_arch, model_preprocessing, preprocessing_for
from asvp.config import validate_config
from asvp.data import ArraySource, ImageDataset, make_dataset, transform_for
from asvp.data.transforms import Preprocessing
from asvp.errors import CheckpointError, ConfigError, DataError
from asvp.features import check_identity
from asvp.steps.features import features_identity

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = Path(__file__).resolve().parents[1]
VIT = "timm/vit_tiny_patch16_224"


def _perturbed(model: nn.Module) -> nn.Module:
    """Non-default norm parameters, so a checkpoint that silently failed to load would show."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def vit_full() -> nn.Module:
    """timm's ViT-Tiny with its ImageNet head, as a DINOv2 / supervised checkpoint holds it."""
    return _perturbed(timm.create_model("vit_tiny_patch16_224", pretrained=False))


@pytest.fixture(scope="module")
def vit_file(vit_full: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DINOv2-style: teacher.backbone.*, plus the teacher's DINO head and the student (ignored)."""
    state = {f"teacher.backbone.{k}": v.contiguous() for k, v in vit_full.state_dict().items()}
    state["teacher.dino_head.mlp.0.weight"] = torch.randn(16, 192)
    state["student.backbone.cls_token"] = torch.zeros(1, 1, 192)
    path = tmp_path_factory.mktemp("vit") / "dinov2_vit_tiny.safetensors"
    safetensors_torch.save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def convnext_full() -> nn.Module:
    return _perturbed(torchvision.models.convnext_tiny(weights=None))


@pytest.fixture(scope="module")
def convnext_file(convnext_full: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MoCo-style: {"state_dict": module.encoder_q.* (classifier included), module.encoder_k.*, queue}."""
    state = {f"module.encoder_q.{k}": v for k, v in convnext_full.state_dict().items()}
    state["module.encoder_k.features.0.0.weight"] = torch.zeros(96, 3, 4, 4)
    state["module.queue"] = torch.zeros(128, 64)
    path = tmp_path_factory.mktemp("convnext") / "moco_convnext_tiny.pth"
    torch.save({"state_dict": state, "epoch": 200}, path)
    return path


def _images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------ loading


def test_timm_vit_from_a_dinov2_checkpoint_gives_timms_pooled_pre_logits(vit_full: nn.Module, vit_file: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    model = build_backbone(VIT, vit_file, image_size=224)
    assert model.checkpoint_prefix == "teacher.backbone." and model.feature_dim == 192 and not model.channels_last
    note = capsys.readouterr().out
    assert "4 keys outside" in note and "teacher.dino_head.mlp.0.weight" in note and "teacher.backbone.head.weight" in note
    x = _images(224)
    with torch.no_grad():
        expected = vit_full.forward_head(vit_full.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), expected)


def test_timm_vit_at_32_px_equals_timms_own_resized_model(vit_full: nn.Module, vit_file: Path) -> None:
    """A ViT at another resolution: the position embedding resampled as timm resamples it when it
    builds the model at that img_size from a checkpoint."""
    from timm.layers import resample_abs_pos_embed

    model = build_backbone(VIT, vit_file, image_size=32)
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    state = dict(vit_full.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [2, 2], num_prefix_tokens=1)
    small.load_state_dict(state)
    x = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), small.forward_head(small.forward_features(x), pre_logits=True))


def test_torchvision_convnext_from_a_moco_checkpoint_keeps_its_norm_before_the_classifier(
        convnext_full: nn.Module, convnext_file: Path, capsys: pytest.CaptureFixture) -> None:
    model = build_backbone("convnext_tiny", convnext_file, image_size=32)
    assert model.checkpoint_prefix == "module.encoder_q." and model.feature_dim == 768 and model.channels_last
    assert "module.encoder_k.features.0.0.weight" in capsys.readouterr().out
    reference = torchvision.models.convnext_tiny(weights=None)
    reference.load_state_dict(convnext_full.state_dict())
    reference.classifier[2] = nn.Identity()  # LayerNorm2d + Flatten stay: they are the pre-logits
    x = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x))


def test_classifier_fine_tunes_either_family(vit_file: Path, convnext_file: Path) -> None:
    from asvp.training import Classifier, classifier_from

    for arch, path in ((VIT, vit_file), ("convnext_tiny", convnext_file)):
        torch.manual_seed(0)
        model = Classifier(build_backbone(arch, path), 3).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loss = nn.functional.cross_entropy(model(_images(32, 4)), torch.tensor([0, 1, 2, 0]))
        loss.backward()
        optimizer.step()
        assert model.backbone.feature_dim == model.head.in_features
        rebuilt = classifier_from({"arch": arch, "num_classes": 3, "state_dict": model.state_dict()})
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(_images(32)), model.eval()(_images(32)))


# ------------------------------------------------------------------------------------ preprocessing


def _config(**data: object) -> dict:
    backbone = data.pop("backbone", {})
    return validate_config({"experiment": "x", "data": {"dataset": "fashion_mnist", **data}, "backbone": backbone})


def test_preprocessing_comes_from_the_model_unless_the_config_sets_it() -> None:
    default = preprocessing_for(_config())
    assert default == Preprocessing(32, 32, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    vit = {"arch": VIT, "checkpoint": None}
    assert preprocessing_for(_config(resolution=None, backbone=vit)) == Preprocessing(224, 248, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert preprocessing_for(_config(backbone=vit)) == Preprocessing(32, 32, "bicubic", (0.5,) * 3, (0.5,) * 3)
    chosen = preprocessing_for(_config(resolution=48, resize=56, interpolation="bilinear", mean=[0.4, 0.4, 0.4],
                                       std=[0.2, 0.2, 0.2], backbone=vit))
    assert chosen == Preprocessing(48, 56, "bilinear", (0.4,) * 3, (0.2,) * 3)
    dinov2 = model_preprocessing("timm/vit_small_patch14_dinov2")
    assert (dinov2.resolution, dinov2.interpolation, dinov2.mean) == (518, "bicubic", (0.485, 0.456, 0.406))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_in_memory_dataset_equals_the_pil_transform_with_the_models_preprocessing(interpolation: str) -> None:
    rng = np.random.default_rng(0)
    source = ArraySource("rgb", "train", rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8), np.arange(6) % 3,
                         ["a", "b", "c"])
    prep = Preprocessing(32, 36, interpolation, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    fast = make_dataset(source, np.arange(6), False, prep)
    slow = ImageDataset(source, np.arange(6), transform_for(False, prep))
    assert hasattr(fast, "batch")
    assert torch.equal(fast.batch(np.arange(6))[0], torch.stack([slow[i][0] for i in range(6)]))


def test_default_experiment_features_are_unchanged(default_weights: Path, real_fashion_mnist: Path) -> None:
    """The packaged MobileNetV2 with the default config gives the features of the code before any
    backbone could be named: torchvision's model with its classifier replaced, ImageNet mean/std,
    a bilinear resize to 32 px."""
    from asvp.backbones import pretrained_backbone
    from asvp.data import dataset_for, open_data
    from asvp.data.transforms import build_transform

    config = _config()
    model, _ = pretrained_backbone(config["backbone"], image_size=preprocessing_for(config).resolution)
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(default_weights, map_location="cpu", weights_only=True))
    reference.classifier = nn.Identity()
    rows = np.arange(0, 400, 37)
    images = dataset_for(config, "pool", rows, train_mode=False).batch(np.arange(len(rows)))[0]
    pil = ImageDataset(open_data(config["data"], "train"), rows, build_transform(False, 32))
    assert torch.equal(images, torch.stack([pil[i][0] for i in range(len(rows))]))
    with torch.no_grad():
        assert torch.equal(model(images), reference.eval()(images))


def test_a_features_file_of_other_preprocessing_is_refused(tmp_path: Path) -> None:
    made = _config(backbone={"arch": VIT, "checkpoint": None})
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        for key, value in features_identity(made).items():
            handle.attrs[key] = value
    with h5py.File(path, "r") as handle:
        check_identity(handle, features_identity(made))
        with pytest.raises(DataError, match=r"extracted with data.mean null \(the backbone's own\), but the config has "
                                            r"data.mean \[0.5, 0.5, 0.5\].*set data.mean back"):
            check_identity(handle, features_identity(_config(mean=[0.5, 0.5, 0.5], backbone=made["backbone"])))
        with pytest.raises(DataError, match="backbone.arch"):
            check_identity(handle, features_identity(_config(backbone={"arch": "convnext_tiny"})))


# ------------------------------------------------------------------------------------ bad input


def test_unknown_arch_suggests_the_closest_names() -> None:
    with pytest.raises(ConfigError, match=r"backbone.arch 'convnext_tiy'.*Closest: convnext_tiny"):
        check_arch("convnext_tiy")
    with pytest.raises(ConfigError, match=r"Closest: timm/vit_small_patch14_dinov2"):
        check_arch("vit_small_patch14_dinov2")  # a timm name without timm/
    with pytest.raises(ConfigError, match=r"timm has no model 'vit_tiny_patch16_22'.*Closest: timm/vit_tiny_patch16_224"):
        check_arch("timm/vit_tiny_patch16_22")


def test_a_timm_name_without_timm_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` sees when it is not installed
    with pytest.raises(ConfigError, match=r"backbone.arch 'timm/vit_tiny_patch16_224'.*pip install timm==1.0.31"):
        build_backbone(VIT, None)


def test_a_checkpoint_of_another_architecture_names_its_keys(vit_file: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        build_backbone("convnext_tiny", vit_file)
    message = str(err.value)
    assert "missing keys" in message and "unexpected keys" in message and "features.0.0.weight" in message
    assert "teacher.backbone." in message and "backbone.arch to timm/vit" in message


def test_a_float8_safetensors_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "fp8.safetensors"
    safetensors_torch.save_file({"conv1.weight": torch.zeros(4, 3, 3, 3).to(torch.float8_e4m3fn)}, str(path))
    with pytest.raises(CheckpointError, match=r"stores 1 tensors as F8_E4M3 \(e.g. conv1.weight\).*Convert it to "
                                              r"float32.*backbone.checkpoint"):
        build_backbone("resnet18", path)


def test_an_input_size_the_model_cannot_take_names_data_resolution() -> None:
    with pytest.raises(ConfigError, match=r"data.resolution 30 is not a multiple of .*patch size 16.*null .*224 px"):
        build_backbone(VIT, None, image_size=30)
    with pytest.raises(ConfigError, match=r"vit_b_16 cannot take 32-px images \(data.resolution 32\).*null"):
        build_backbone("vit_b_16", None, image_size=32)  # torchvision's ViT has a fixed image size


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.workflow
@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_tiny_run_extracts_fine_tunes_and_delivers(family: str, vit_file: Path, convnext_file: Path,
                                                   real_fashion_mnist: Path, tmp_path: Path) -> None:
    """ASVP on a 120-image pool, 2 rounds: features, proxy, round 0's final LP-FT, round 1's final
    FT (its decision switches), the delivered model with the backbone's own preprocessing."""
    arch, checkpoint = (VIT, vit_file) if family == "vit" else ("convnext_tiny", convnext_file)
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config.update(experiment=family, methods=["asvp"], backbone={"arch": arch, "checkpoint": str(checkpoint)})
    config["data"].update(pool_subset=120, test_subset=40)
    config["schedule"] = {"budgets": [20, 20]}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
               "--max-threads", "1", "--configfile", str(configfile)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    run = tmp_path / "results" / family
    own = model_preprocessing(arch)
    width = 192 if family == "vit" else 768
    with h5py.File(run / "features/pretrained.h5") as handle:
        assert handle["pool/features"].shape == (120, width)
        assert handle.attrs["resolution"] == 32 and handle.attrs["interpolation"] == own.interpolation
        assert json.loads(handle.attrs["mean"]) == list(own.mean) and handle.attrs["checkpoint_prefix"] != ""
    finetunes = [json.loads(p.read_text()) for p in run.glob("finetunes/*.json")]
    assert {f["train_method"] for f in finetunes} == {"ft", "lpft"}
    assert {f["optimizer"] for f in finetunes} == {"adamw" if family == "vit" else "sgd"}  # finetune.optimizer: auto
    final = next(run.glob("**/final/model.pt"))
    payload = torch.load(final, map_location="cpu", weights_only=True)
    assert payload["arch"] == arch
    assert (payload["preprocessing"]["interpolation"], payload["preprocessing"]["mean"]) == (own.interpolation, list(own.mean))
