"""The files each workflow rule reads, and the steps a selection job adds, from a job's wildcards.

The rule files (rules/*.smk) only wire files to `asvp <step>`; what a rule reads depends on the
method (asvp.methods), the round and the oracle, and that logic lives here so the rule files stay
declarative and Snakemake's linter keeps them free of functions. Snakemake calls these methods
with the job's wildcards (and, for params, its input, output and threads).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from snakemake.io import ancient

from asvp import methods
from asvp.data.unlabelled import UNLABELLED
from asvp.oracle import answered, answers_path
from asvp.plan import Plan, decision_refreshes, params_json


class RuleInputs:
    """Paths of an experiment's files and the input functions of its rules."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.run = plan.run_dir("{method}", "{strategy}", "{seed}")  # wildcard patterns
        self.round = f"{self.run}/round{{r}}"
        self.pool = f"{plan.res}/data/pool.csv"
        self.test = f"{plan.res}/data/test.csv"
        self.dataset = f"{plan.res}/data/dataset.json"
        self.pretrained = f"{plan.res}/features/pretrained.h5"
        self.growing_pool = plan.config["data"]["dataset"] == UNLABELLED

    # --- paths ---

    def kept(self, path: str) -> Any:
        """Your own images may grow between runs; their pool rows keep their index, so a finished
        round stays valid. Rounds take the pool's files as ancient: a grown folder reruns define_pool,
        the extraction (new images only) and the refresh, and only rounds still to come see it."""
        return ancient(path) if self.growing_pool else path

    def round_file(self, wildcards: Any, name: str, r: str | None = None) -> str:
        """Path of `name` in round r (default: the job's round) of the job's run."""
        r = wildcards.r if r is None else r
        return f"{self.plan.run_dir(wildcards.method, wildcards.strategy, wildcards.seed)}/round{r}/{name}"

    def previous(self, wildcards: Any, name: str) -> str:
        """Path of `name` in the round before the job's."""
        return self.round_file(wildcards, name, f"{int(wildcards.r) - 1:03d}")

    def previous_labels(self, wildcards: Any) -> str:
        return self.previous(wildcards, "labelled.csv")

    def previous_decision(self, wildcards: Any) -> str:
        return self.previous(wildcards, "decision.json")

    def previous_model(self, wildcards: Any) -> str:
        return self.previous(wildcards, "model.pt")

    def features_after(self, wildcards: Any, r: int) -> str:
        """Features in use after round r: ASVP's follow its decisions; every other method's never change."""
        if r < 0 or not methods.method(wildcards.method).decides:
            return self.pretrained
        return self.round_file(wildcards, "features.h5", f"{r:03d}")

    def features_in_use(self, wildcards: Any) -> Any:
        """Features in use during the job's round: those after the previous round."""
        return self.kept(self.features_after(wildcards, int(wildcards.r) - 1))

    def pool_files(self) -> dict[str, Any]:
        """The pool listing and the dataset's description, read by every selection."""
        return {"pool": self.kept(self.pool), "dataset": self.kept(self.dataset)}

    def labelled_outputs(self, round_folder: str) -> dict[str, str]:
        """With the simulated oracle a selection job also labels its batch (one job per round)."""
        return {} if self.plan.human_oracle else {"labelled": f"{round_folder}/labelled.csv"}

    @staticmethod
    def selection_logs(round_folder: str, name: str = "select") -> dict[str, str]:
        """A selection job's log (every step's output) and its steps' timings (asvp.step_timing)."""
        return {"job": f"{round_folder}/logs/{name}.log", "timing": f"{round_folder}/benchmarks/select_steps.tsv"}

    def answers_of(self, wildcards: Any) -> str:
        """A person's answers for the job's round: the CSV file, Label Studio export or folder there
        is (live Label Studio rounds are pulled into the export at planning), else the expected file."""
        folder = self.plan.run_dir(wildcards.method, wildcards.strategy, wildcards.seed)
        return str(answered(folder, int(wildcards.r)) or answers_path(folder, int(wildcards.r)))

    @staticmethod
    def refresh_requested(input: Any) -> bool:
        """Read the decision at scheduling time; before it exists, assume the expensive branch."""
        try:
            return decision_refreshes(input.decision)
        except (OSError, KeyError, ValueError):
            return True

    # --- steps a selection job adds after its own ---

    def label_step(self, wildcards: Any, input: Any, output: Any, threads: int) -> str:
        """A selection job's last step with the simulated oracle: label the batch just selected."""
        if self.plan.human_oracle:
            return ""
        logs = self.selection_logs(os.path.dirname(output.selected))
        grow = f"--previous {input.labelled} " if "labelled" in input.keys() and int(wildcards.get("r", 0)) > 0 else ""
        return (f" && asvp --log {logs['job']} --timing {logs['timing']} --same-job label --selected {output.selected} "
                f"--pool {input.pool} --dataset-json {input.dataset} {grow}--round {int(wildcards.get('r', 0))} "
                f"--out {output.labelled}")

    def decide_step(self, wildcards: Any, input: Any, output: Any, threads: int) -> str:
        """The deciding methods' last step of a proxy round: the refresh decision on the new labels."""
        logs = self.selection_logs(os.path.dirname(output.selected))
        return (f" && asvp --log {logs['job']} --timing {logs['timing']} --same-job --threads {threads} decide "
                f"--config-json {params_json(self.plan.config, 'decision')} --method {wildcards.method} "
                f"--features {input.features} --labelled {output.labelled} --previous {input.previous_decision} "
                f"--seed {wildcards.seed} --round {wildcards.r} --out {output.decision}")

    # --- input functions (unpack) ---

    def request_inputs(self, wildcards: Any) -> dict[str, Any]:
        """The selection to show, and the proxy that made it (its predicted class is the hint)."""
        inputs = {"selected": self.round_file(wildcards, "selected.csv"), **self.pool_files()}
        if methods.method(wildcards.method).selection == "proxy" and int(wildcards.r) > 0:
            inputs["weights"] = self.round_file(wildcards, "proxy.npz")
            inputs["features"] = self.features_in_use(wildcards)
        return inputs

    def label_inputs(self, wildcards: Any) -> dict[str, Any]:
        """A person's answers for a round, with what they answer (to_label.csv) and the labels so far."""
        inputs = {"selected": self.round_file(wildcards, "selected.csv"), **self.pool_files(),
                  "request": self.round_file(wildcards, "to_label.csv"), "answers": self.answers_of(wildcards)}
        if int(wildcards.r) > 0 and not methods.method(wildcards.method).single_shot:
            inputs["previous"] = self.previous_labels(wildcards)
        return inputs

    def decide_inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs = {"features": self.features_in_use(wildcards), "labelled": self.round_file(wildcards, "labelled.csv")}
        if int(wildcards.r) > 0:
            inputs["previous"] = self.previous_decision(wildcards)
        return inputs

    def evaluate_inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs = {"pool": self.kept(self.pool), "test": self.test, "labelled": self.round_file(wildcards, "labelled.csv")}
        if methods.method(wildcards.method).decides:
            inputs["decision"] = self.round_file(wildcards, "decision.json")  # LP-FT or FT, decided per round
            # After a refresh's fine-tune (same labels, FT) the evaluation reuses it: wait for it.
            inputs["features"] = self.round_file(wildcards, "features.h5")
        return inputs

    def delivered_round(self, wildcards: Any) -> SimpleNamespace:
        """The round whose evaluation a delivery folder (final, round<r>/delivered) packs up."""
        return SimpleNamespace(method=wildcards.method, strategy=wildcards.strategy, seed=wildcards.seed,
                               r=f"{self.plan.delivery_round(wildcards.point):03d}")

    def deliver_inputs(self, wildcards: Any) -> dict[str, Any]:
        at = self.delivered_round(wildcards)
        # metrics.json: the evaluation ran first, so its model is in the cache.
        return {**self.evaluate_inputs(at), "metrics": self.round_file(at, "metrics.json"), "dataset": self.dataset}
