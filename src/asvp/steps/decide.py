"""ASVP after every round (rules/decide.smk, paper sec. 5): decide with PED + LogME whether the
frozen features have become the bottleneck, then refresh them or pass them through.

The rule itself is `asvp.decision.decide_round`; this module reads and writes its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from asvp import features as feature_store
from asvp.atomic import read_json, write_json
from asvp.methods import decision_settings
from asvp.plan import decision_refreshes
from asvp.pool import read_labelled, unlabelled_indices


def decide(config: dict[str, Any], method: str, features: str, labelled: str, seed: int, round: int, out: str,
           previous: str | None = None) -> None:
    """Decide for round `round` of an ASVP `method` on the features in use, after its labels;
    write decision.json (the verdict with every number that led to it)."""
    from asvp.decision import decide_round
    from asvp.ped import REFERENCE_ROWS, reference_sample

    settings = decision_settings(method, config["decision"])
    with feature_store.open_features(features) as handle:
        pool_size = handle["pool/labels"].shape[0]
        table = read_labelled(labelled, pool_size)
        rows = table["pool_index"].to_numpy()
        feature_store.check_sample_ids(handle, rows, table["sample_id"].tolist(), labelled)
    x, _ = feature_store.load_rows(features, "pool", rows)
    unlabelled = reference_sample(unlabelled_indices(pool_size, table), REFERENCE_ROWS, seed, round)
    reference, _ = feature_store.load_rows(features, "pool", unlabelled if len(unlabelled) else rows)
    record = decide_round(x, table["label"].to_numpy(), reference, read_json(previous) if previous else None, settings)
    record.update(round=round, features=str(features))
    write_json(out, record)
    print(f"verdict {record['verdict']}: {record['reason']}")


def refresh_features(config: dict[str, Any], decision: str, pool: str, test: str, labelled: str, previous_features: str,
                     seed: int, round: int, cache_dir: str, out: str, share_model: bool = False,
                     gpus: int = 0) -> None:
    """Apply a round's decision: fine-tune + re-extract when it says refresh, else link.

    The fine-tune restarts from the pre-trained weights on the labels so far (paper sec. 5; the
    official scripts likewise re-initialise every time) with the FT recipe. It is tested like
    an evaluation and cached under the same key, so the round's evaluation (FT from the
    refresh on) reuses it instead of training the same labels twice. `refresh_model.pt` lives
    until the re-extraction is complete (a killed extraction resumes from it), then goes
    unless `evaluation.keep_models`. share_model: keep the fine-tune in the cache for another job
    (the delivery, when this round is a delivery point). A pass-through never imports torch.
    """
    if not decision_refreshes(decision):
        feature_store.link_features(previous_features, out)
        print("kept (linked to the previous features)")
        return
    from asvp.device import import_torch, job_processes
    from asvp.finetune import finetune_and_evaluate
    from asvp.steps.features import extract

    import_torch()
    model_path = Path(out).with_name("refresh_model.pt")
    if not model_path.exists():
        metrics_out = Path(out).with_name("refresh_finetune.json")  # its loss curve and test accuracy, for the record
        finetune_and_evaluate(config, "ft", pool, labelled, test, seed, metrics_out, cache_dir=cache_dir,
                              model_out=model_path, share_model=share_model, round_index=round, processes=job_processes(config["device"], gpus))
    extract(config, pool, test, out, model=str(model_path), gpus=gpus)
    if not config["evaluation"]["keep_models"]:
        model_path.unlink()
    print("refreshed")
