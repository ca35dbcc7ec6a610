"""The final model at an evaluation point (rules/evaluate.smk): fine-tune the pre-trained
backbone on the labelled set with the method's recipe and measure test accuracy. Standard AL
runs it every round and keeps the model, which its next round selects with."""

from __future__ import annotations

from typing import Any

from asvp.atomic import read_json


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
    print(f"{kind} accuracy {metrics['accuracy']:.4f} ({metrics['status']})")
