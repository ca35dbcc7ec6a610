"""A backbone candidate of `asvp advise-backbone`, as written on its command line
(ARCH[@PX][:CHECKPOINT]), and the config that runs it."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from asvp.errors import ConfigError

CANDIDATE_GRAMMAR = (
    "ARCH[@PX][:CHECKPOINT]: ARCH a torchvision classification model or timm/<name>; PX the side in pixels "
    "(default: data.resolution, or the model's own when that is null); CHECKPOINT a weight file, `default` (the "
    "packaged ImageNet MobileNetV2) or `none` (random init), omitted = backbone.checkpoint of the config, which "
    "only fits the config's own backbone.arch. E.g. mobilenet_v2@64:default resnet18@32:none"
)
_CANDIDATE = re.compile(r"^(?P<arch>[A-Za-z0-9_./-]+?)(?:@(?P<px>[^:]*))?(?::(?P<checkpoint>.*))?$")
MIN_RESOLUTION = 8  # data.resolution's minimum in the schema


@dataclass(frozen=True)
class Candidate:
    """One parsed candidate; checkpoint is "default", "none" or a path (never empty)."""

    text: str
    arch: str
    resolution: int | None
    checkpoint: str


def parse_candidate(text: str, config: dict[str, Any]) -> Candidate:
    """The candidate `text` names (grammar: CANDIDATE_GRAMMAR); ConfigError naming it when it does not parse."""
    match = _CANDIDATE.match(text.strip())
    if not match or not match["arch"]:
        raise ConfigError(f"candidate {text!r} does not parse: write {CANDIDATE_GRAMMAR}")
    px = match["px"]
    resolution = None
    if px is not None:
        if not px.isdigit() or int(px) < MIN_RESOLUTION:
            raise ConfigError(f"candidate {text!r}: resolution {px!r} after '@' is not a whole number of pixels >= "
                              f"{MIN_RESOLUTION}; write e.g. {match['arch']}@32")
        resolution = int(px)
    checkpoint = match["checkpoint"]
    if checkpoint is None:
        if match["arch"] != config["backbone"]["arch"]:
            raise ConfigError(f"candidate {text!r} names no checkpoint and {match['arch']} is not the config's "
                              f"backbone.arch ({config['backbone']['arch']}), whose checkpoint would not fit: append "
                              f":PATH to its weights or :none for random init")
        checkpoint = str(config["backbone"]["checkpoint"] or "none")
    elif not checkpoint.strip():
        raise ConfigError(f"candidate {text!r}: nothing after ':'; write :PATH, :default or :none")
    return Candidate(text, match["arch"], resolution, checkpoint)


def candidate_config(config: dict[str, Any], candidate: Candidate) -> dict[str, Any]:
    """The config with the candidate's backbone and resolution; everything else (data, recipes) as is.
    A resolution given with @PX also resets data.resize, which then follows it (no crop margin)."""
    changed = copy.deepcopy(config)
    changed["backbone"].update(arch=candidate.arch, checkpoint=candidate.checkpoint)
    if candidate.resolution is not None:
        changed["data"].update(resolution=candidate.resolution, resize=None)
    changed["evaluation"]["on_divergence"] = "warn"  # a diverged pilot fine-tune is a finding, not a stop
    return changed
