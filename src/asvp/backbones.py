"""Architectures: build any torchvision or timm classification model as a backbone without its head.

Any classification model of torchvision (`backbone.arch: convnext_tiny`, a name
`torchvision.models.list_models` knows) or of timm (`backbone.arch: timm/vit_small_patch14_dinov2`)
is a backbone: its final Linear classifier is replaced by Identity (torchvision; a norm in front
of it, as ConvNeXt's, stays) or it is built with `num_classes=0` (timm: forward_features, then
forward_head's pooled pre-logits), so forward(x) returns the pooled (B, D) pre-logits features.
`model_preprocessing` reads the input the weights were trained with from the model's own
metadata (timm's pretrained_cfg, torchvision's weights transforms).

Models are always built with `weights=None` (timm: `pretrained=False`): nothing is downloaded.
The weights come from a checkpoint file, found, verified and fitted to the model by
`asvp.checkpoints`; `build_backbone` puts the two together.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asvp.checkpoints import load_backbone_weights, resolve_checkpoint, verify_hash
from asvp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from asvp.errors import ConfigError

# The architectures of the paper and of the default experiment (tested with their known widths);
# any other torchvision or timm classification model works too.
ARCHITECTURES: tuple[str, ...] = ("mobilenet_v2", "resnet18", "resnet50")
TIMM_PREFIX = "timm/"  # backbone.arch: timm/<model name>[.<pretrained tag>]
TIMM_INSTALL = "pip install timm==1.0.31"  # the version pinned in pyproject.toml
FEATURE_DIMS: dict[str, int] = {"mobilenet_v2": 1280, "resnet18": 512, "resnet50": 2048}


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def _timm(arch: str) -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(
            f"backbone.arch {arch!r} is a timm model, but timm is not installed. Install it with `{TIMM_INSTALL}` "
            "(the version asvp-flow pins), or set backbone.arch to a torchvision architecture."
        ) from exc
    return timm


def _torchvision_names() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))  # classification models only


def _timm_names(arch: str) -> list[str]:
    return list(_timm(arch).list_models())


def _closest(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=5, cutoff=0.6)


def check_arch(arch: str) -> None:
    """ConfigError naming the closest known names when `arch` is neither a torchvision
    classification model nor timm/<a timm model>."""
    if is_timm(arch):
        name = arch[len(TIMM_PREFIX):]
        timm = _timm(arch)
        if timm.is_model(name):
            return
        close = [TIMM_PREFIX + n for n in _closest(name.split(".", 1)[0], _timm_names(arch))]
        raise ConfigError(
            f"unknown backbone.arch {arch!r}: timm has no model {name!r}. "
            f"{'Closest: ' + ', '.join(close) + '. ' if close else ''}Set backbone.arch to timm/<name> with a name "
            "from timm.list_models()."
        )
    names = _torchvision_names()
    if arch in names:
        return
    close = _closest(arch, names)
    try:
        import timm

        if timm.is_model(arch):
            close = [TIMM_PREFIX + arch] + close  # a timm name written without its prefix
    except ImportError:
        pass
    raise ConfigError(
        f"unknown backbone.arch {arch!r}: not a torchvision classification model. "
        f"{'Closest: ' + ', '.join(close) + '. ' if close else ''}Set backbone.arch to a name of "
        "torchvision.models.list_models() or to timm/<name> for a timm model."
    )


def _timm_config(arch: str) -> dict[str, Any]:
    """timm's pretrained_cfg of `arch` (its tag's, when the name has one); {} when it has none."""
    cfg = _timm(arch).models.get_pretrained_cfg(arch[len(TIMM_PREFIX):])
    return cfg.to_dict() if cfg is not None else {}


def model_preprocessing(arch: str) -> Preprocessing:
    """The input `arch`'s weights were trained with: timm's pretrained_cfg (resolve_data_config;
    resize = size / crop_pct, as timm's eval transform), torchvision's weights transforms where
    the arch has published weights, else ImageNet's 224 px, 256 resize, bilinear."""
    check_arch(arch)
    if is_timm(arch):
        from timm.data import resolve_data_config

        data = resolve_data_config(pretrained_cfg=_timm_config(arch))
        size = int(data["input_size"][-1])
        return Preprocessing(size, math.floor(size / float(data["crop_pct"])), str(data["interpolation"]),
                             tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))
    from torchvision import models

    try:
        weights = models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        weights = None
    if weights is None:
        return Preprocessing(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    transform = weights.transforms()
    return Preprocessing(int(transform.crop_size[0]), int(transform.resize_size[0]), transform.interpolation.value,
                         tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std))


def preprocessing_for(config: Mapping[str, Any]) -> Preprocessing:
    """The effective eval preprocessing of a config: each of data.resolution, data.interpolation,
    data.mean and data.std as set, or the backbone's own where null. data.resize null means
    data.resolution (no crop margin) when the resolution is set, the model's resize when not."""
    data = config["data"]
    native = model_preprocessing(config["backbone"]["arch"])
    resolution = int(data["resolution"] or native.resolution)
    resize = int(data["resize"] or (native.resize if data["resolution"] is None else resolution))
    return Preprocessing(
        resolution, resize, data.get("interpolation") or native.interpolation,
        tuple(float(v) for v in data["mean"]) if data.get("mean") is not None else native.mean,
        tuple(float(v) for v in data["std"]) if data.get("std") is not None else native.std,
    )


def _drop_classifier(model: nn.Module, arch: str) -> int:
    """Replace the final Linear layer by Identity and return its input width.

    A Sequential around it that holds nothing else with weights (MobileNetV2's Dropout + Linear,
    torchvision ViT's heads) goes as a whole, so training has no dropout in front of the new head;
    a norm in front of it (ConvNeXt's LayerNorm2d) is part of the pre-logits and stays.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"backbone.arch {arch!r} has no Linear classifier to remove; choose a classification model "
                          "with a linear head (most of torchvision.models.list_models()).")
    name, last = linears[-1]
    path = name.split(".")
    while len(path) > 1:
        parent = model.get_submodule(".".join(path[:-1]))
        others = [child for key, child in parent.named_children() if key != path[-1]]
        if not isinstance(parent, nn.Sequential) or any(sum(1 for _ in c.parameters()) for c in others):
            break
        path = path[:-1]
    owner = model.get_submodule(".".join(path[:-1])) if len(path) > 1 else model
    setattr(owner, path[-1], nn.Identity())
    return int(last.in_features)


def _build_timm(arch: str) -> nn.Module:
    timm = _timm(arch)
    name = arch[len(TIMM_PREFIX):]
    options: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    model = None
    if _timm_config(arch).get("fixed_input_size"):
        # ViTs resample their position embedding to the input's patch grid on every forward, so
        # one model (and one checkpoint) serves any resolution that is a multiple of the patch.
        try:
            model = timm.create_model(name, dynamic_img_size=True, **options)
        except TypeError as exc:
            if "dynamic_img_size" not in str(exc):
                raise
    if model is None:
        model = timm.create_model(name, **options)
    model.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def _build_model(arch: str) -> nn.Module:
    check_arch(arch)
    if is_timm(arch):
        model = _build_timm(arch)
    else:
        from torchvision import models

        model = models.get_model(arch, weights=None)
        model.feature_dim = _drop_classifier(model, arch)
    model.arch = arch
    # channels_last speeds up convolutions; attention blocks gain nothing from it.
    model.channels_last = not _has_attention(model)
    return model


def _has_attention(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower() for m in model.modules())


@functools.lru_cache(maxsize=None)
def uses_attention(arch: str) -> bool:
    """Whether `arch` is built of attention blocks (a ViT, Swin, DINOv2 ...) rather than convolutions.

    Built on the meta device: no weights are allocated, so even a ViT-g answers in well under a second.
    """
    with torch.device("meta"):
        return _has_attention(_build_model(arch))


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for a convolutional backbone (or a classifier, or its DDP wrapper, around one),
    else contiguous."""
    backbone = getattr(getattr(model, "module", model), "backbone", getattr(model, "module", model))
    return torch.channels_last if getattr(backbone, "channels_last", True) else torch.contiguous_format


def _patch_size(model: nn.Module) -> int | None:
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None) or getattr(model, "patch_size", None)
    if size is None:
        return None
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def check_input_size(model: nn.Module, size: int) -> None:
    """ConfigError naming data.resolution and the fix when `model` cannot take size x size images
    (a ViT at a size off its patch grid, one with a fixed image size, a CNN that pools to nothing);
    one forward pass of one black image."""
    arch = getattr(model, "arch", type(model).__name__)

    def null_fix() -> str:
        native = model_preprocessing(arch).resolution if hasattr(model, "arch") else None
        return f"set data.resolution to null (the model's own {native} px)" if native else "set data.resolution"

    patch = _patch_size(model)
    if patch and size % patch:
        raise ConfigError(f"data.resolution {size} is not a multiple of {arch}'s patch size {patch}: {null_fix()} or to a "
                          f"multiple of {patch} (e.g. {max(patch, round(size / patch) * patch)}).")
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".!") if str(exc).strip() else type(exc).__name__
        fix = null_fix()
        raise ConfigError(f"backbone.arch {arch} cannot take {size}-px images (data.resolution {size}): {reason}. "
                          f"{fix[0].upper() + fix[1:]}, or choose a timm ViT, which takes any multiple of its patch "
                          "size.") from exc
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != model.feature_dim:
        raise ConfigError(f"backbone.arch {arch} gives features of shape {tuple(out.shape)} at {size} px, not (1, "
                          f"{model.feature_dim}); choose a classification model whose head takes pooled features.")


def build_backbone(arch: str, checkpoint: str | os.PathLike[str] | None, *, prefix: str = "auto",
                   sha256_prefix: str | None = None, image_size: int | None = None) -> nn.Module:
    """Build `arch` without its head and load `checkpoint` into it (None: random init).

    `checkpoint` may also be "default" / "none" (see `resolve_checkpoint`). The returned model
    maps (B, 3, H, W) to pooled features (B, model.feature_dim), is on the CPU and in eval mode
    (call `.train()` to fine-tune). `image_size`: check that the model takes images of that side
    (`check_input_size`). Raises ConfigError for an unknown arch or an input size it cannot take,
    CheckpointError for a missing, corrupt or ill-fitting checkpoint.
    """
    model = _build_model(arch)
    path = resolve_checkpoint(checkpoint)
    if path is not None:
        verify_hash(path, sha256_prefix)
        load_backbone_weights(model, path, prefix=prefix, timm_model=is_timm(arch))
    if image_size is not None:
        check_input_size(model, image_size)
    model.checkpoint = None if path is None else str(path)
    return model.eval()


def pretrained_backbone(backbone_config: dict[str, Any], image_size: int | None = None) -> tuple[nn.Module, Path | None]:
    """The configured backbone with its checkpoint loaded, and the checkpoint's path (None: random init)."""
    checkpoint = resolve_checkpoint(backbone_config["checkpoint"])
    model = build_backbone(backbone_config["arch"], checkpoint, prefix=backbone_config["prefix"], image_size=image_size)
    return model, checkpoint
