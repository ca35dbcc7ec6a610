"""The final model at an evaluation point (rules/evaluate.smk): fine-tune the pre-trained
backbone on the labelled set with the method's recipe and measure test accuracy. Standard AL
runs it every round and keeps the model, which its next round selects with. `deliver` turns
that model into what the user takes home (asvp.delivery)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from asvp.atomic import read_json, write_csv


def recipe_for(recipe: str, decision: str | None) -> str:
    """'auto' (the ASVP methods) takes the training method the round's decision chose."""
    if recipe != "auto":
        return recipe
    if decision is None:
        raise ValueError("recipe 'auto' needs the round's decision.json")
    return str(read_json(decision)["train_method"])


def evaluate(config: dict[str, Any], recipe: str, pool: str, labelled: str, test: str, seed: int, round: int,
             cache_dir: str, out: str, decision: str | None = None, model_out: str | None = None,
             share_model: bool = False, gpus: int = 0) -> None:
    """Fine-tune (or reuse the cached fine-tune of the same inputs), test, write metrics.json.

    recipe: ft, lpft, or auto (as `decision` says). model_out: also write the model (standard
    AL's next round reads it). share_model: keep it in the fine-tune cache for other jobs.
    """
    from asvp.device import job_processes
    from asvp.finetune import finetune_and_evaluate

    kind = recipe_for(recipe, decision)
    metrics = finetune_and_evaluate(config, kind, pool, labelled, test, seed, out, cache_dir=cache_dir,
                                    model_out=model_out, share_model=share_model, round_index=round,
                                    processes=job_processes(config["device"], gpus))
    print(f"{kind} {accuracy_text(metrics)} ({metrics['status']})")


def accuracy_text(metrics: dict[str, Any]) -> str:
    if metrics["accuracy"] is None:
        return "trained; no test accuracy (the test set is empty)"
    return f"accuracy {metrics['accuracy']:.4f}"


def deliver(config: dict[str, Any], recipe: str, pool: str, labelled: str, test: str, dataset_json: str, seed: int,
            round: int, cache_dir: str, out_dir: str, decision: str | None = None, gpus: int = 0) -> None:
    """What the user takes home from an evaluation point, into out_dir: model.pt (weights,
    classes, preprocessing), model.torchscript.pt, predictions.csv (every unlabelled pool
    image), labelled.csv and metrics.json.

    The model is the evaluation's own fine-tune, taken from the fine-tune cache (the evaluate
    job keeps it there at a delivery point); trained again from the same inputs only when the
    cache lacks it (after a refresh's fine-tune, whose model goes once its re-extraction is done).
    Predicting the unlabelled pool costs about one feature extraction of it.
    """
    import torch

    from asvp import delivery
    from asvp.device import job_processes, resolve_device
    from asvp.finetune import finetune_and_evaluate
    from asvp.pool import read_labelled, read_split_table
    from asvp.training import classifier_from

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    kind = recipe_for(recipe, decision)
    weights = folder / ".finetuned_weights.pt"  # a hard link into the cache: removed below
    started = time.perf_counter()
    metrics = finetune_and_evaluate(config, kind, pool, labelled, test, seed, folder / "metrics.json", cache_dir=cache_dir,
                                    model_out=weights, round_index=round, processes=job_processes(config["device"], gpus))
    got_model = time.perf_counter()
    try:
        payload = torch.load(weights, map_location="cpu", weights_only=True)
    finally:
        weights.unlink(missing_ok=True)
    info = read_json(dataset_json)
    classes = info.get("classes") or [str(i) for i in range(info["num_classes"])]
    provenance = {"recipe": kind, "n_labelled": metrics["n_labelled"], "test_accuracy": metrics["accuracy"],
                  "n_test": metrics["n_test"], "round": round, "seed": seed, "finetune_key": metrics["finetune_key"],
                  "loss_curve": metrics["loss_curve"], "dataset": info.get("dataset")}
    arch = config["backbone"]["arch"]
    delivery.save_model(folder / "model.pt", classifier_from(payload), arch, classes,
                        delivery.preprocessing_of(config), provenance)
    delivered = delivery.load_model(folder / "model.pt")  # what the user will load: export and predict with it
    delivery.export_torchscript(delivered, folder / "model.torchscript.pt")
    exported = time.perf_counter()
    pool_table = read_split_table(pool)
    labelled_table = read_labelled(labelled, len(pool_table))
    predictions = delivery.pool_predictions(delivered, config["data"], pool_table, labelled_table,
                                            resolve_device(config["device"]))
    write_csv(folder / "predictions.csv", predictions)
    delivery.copy_file(labelled, folder / "labelled.csv")
    done = time.perf_counter()
    print(f"delivered {folder}: {kind} model on {len(labelled_table)} labels, {accuracy_text(metrics)}; "
          f"{len(predictions)} unlabelled pool images predicted")
    print(f"seconds: model {got_model - started:.2f} ({'reused' if metrics['reused'] else 'trained'}), "
          f"model files {exported - got_model:.2f}, pool predictions {done - exported:.2f}; "
          f"model.pt {(folder / 'model.pt').stat().st_size / 1e6:.1f} MB, "
          f"model.torchscript.pt {(folder / 'model.torchscript.pt').stat().st_size / 1e6:.1f} MB")
