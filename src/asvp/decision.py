"""ASVP's feature-refresh decision (paper sec. 5), made after every round.

After round t, with the labelled set L_t and the pre-computed features currently in use:
  1. run PED on the labelled features; if it converges within `converged_steps` steps (paper:
     one iteration) the fine-tuned features would stay close to these: keep them;
  2. otherwise score LogME on the PED-moved features (LogME-PED), and if
     |score_t - score_{t-1}| < threshold, the frozen features have become the bottleneck:
     fine-tune on L_t and refresh the features.
The official code has none of this (it refreshes once, by hand); this module is our reading of
the paper, with the choices the paper leaves open made explicit and recorded:
  * the score is always computed and logged, also when PED converged, so round t+1 has a
    score_{t-1} to compare with;
  * scores are only compared on the same feature version: after a refresh the history restarts;
  * at most `max_refreshes` refreshes (the official scripts do exactly one);
  * PED's reference statistics come from unlabelled pool features (never test features), a
    seeded sample of at most `reference_rows` rows;
  * LogME defaults to thuml's fixed-point variant, on whose scale the paper's threshold of 1 was
    set (it is inflated when N < D; the 'icml' variant is the corrected formula).
Ablations (paper Table 3): `feature_alignment` off keeps the features whatever the verdict;
`training_alignment` off always trains the final model with FT. With both on, the final model
is trained with LP-FT until the rule first triggers, and with FT from then on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asvp.errors import DataError
from asvp.logme import logme
from asvp.ped import CONVERGED_STEPS, EXIT_RATIO, MAX_STEPS, NSIGMA, REFERENCE_ROWS, STEP, ped


def decide_round(
    labelled_features: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    previous: dict[str, Any] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The verdict for one round, with every number that led to it.

    labelled_features: (N, D) float features of L_t; labels: (N,) int; reference: (M, D) float
    unlabelled-pool features; previous: the previous round's decision record (None in round 0).
    """
    ped_settings = {"step": STEP, "nsigma": NSIGMA, "exit_ratio": EXIT_RATIO, "max_steps": MAX_STEPS,
                    "converged_steps": CONVERGED_STEPS, "reference_rows": REFERENCE_ROWS}
    triggers_before = previous["triggers"] if previous else 0
    version = previous["next_feature_version"] if previous else 0
    record: dict[str, Any] = {
        "n_labelled": int(len(labels)),
        "feature_version": version,
        "threshold": settings["threshold"],
        "logme_variant": settings["logme_variant"],
        "max_refreshes": settings["max_refreshes"],
        "feature_alignment": settings.get("feature_alignment", True),
        "training_alignment": settings.get("training_alignment", True),
        "ped_settings": dict(ped_settings),
        "triggers_before": triggers_before,
    }
    if len(np.unique(labels)) < 2:
        # LogME and PED compare classes; one labelled class carries no signal either way.
        record.update(ped_steps=None, ped_energies=[], ped_ratios=[], score=None, previous_score=None, difference=None)
        return _finish(record, triggers_before, version, triggered=False, reason="fewer than 2 classes labelled")
    moved = ped(
        labelled_features,
        labels,
        reference,
        step=ped_settings["step"],
        nsigma=ped_settings["nsigma"],
        exit_ratio=ped_settings["exit_ratio"],
        max_steps=ped_settings["max_steps"],
    )
    score = logme(moved.features, labels, variant=settings["logme_variant"])
    if not np.isfinite(score):
        raise DataError(f"LogME-PED score is {score}; check the features for degenerate (constant) columns")
    comparable = previous is not None and previous.get("feature_version") == version and previous.get("score") is not None
    previous_score = previous["score"] if comparable else None
    difference = abs(score - previous_score) if previous_score is not None else None
    record.update(
        ped_steps=moved.n_steps,
        ped_energies=moved.energies,
        ped_ratios=moved.ratios,
        score=score,
        previous_score=previous_score,
        difference=difference,
    )
    if moved.n_steps <= ped_settings["converged_steps"]:
        return _finish(record, triggers_before, version, False, f"PED converged in {moved.n_steps} step(s)")
    if difference is None:
        why = "first round" if previous is None else "no comparable previous score (features were refreshed)"
        return _finish(record, triggers_before, version, False, why)
    if difference >= settings["threshold"]:
        return _finish(record, triggers_before, version, False, f"|delta LogME-PED| = {difference:.4g} >= threshold")
    if triggers_before >= settings["max_refreshes"]:
        return _finish(record, triggers_before, version, False, f"max_refreshes ({settings['max_refreshes']}) reached")
    return _finish(record, triggers_before, version, True, f"|delta LogME-PED| = {difference:.4g} < threshold")


def _finish(record: dict[str, Any], triggers_before: int, version: int, triggered: bool, reason: str) -> dict[str, Any]:
    triggers = triggers_before + int(triggered)
    refresh = triggered and record["feature_alignment"]
    record.update(
        verdict="refresh" if triggered else "keep",
        reason=reason,
        refresh_features=refresh,
        triggers=triggers,
        next_feature_version=version + int(refresh),
        # Training alignment: LP-FT while the pre-trained features are judged adequate, FT after.
        train_method="lpft" if record["training_alignment"] and triggers == 0 else "ft",
    )
    return record
