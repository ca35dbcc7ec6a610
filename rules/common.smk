# Config validation, paths and the input functions of the rule files; the plan itself (runs,
# rounds, resources, params) is asvp.plan, the methods asvp.methods.
import json
import os
import shlex
import sys
from types import SimpleNamespace

sys.setrecursionlimit(100000)  # a chain of hundreds of rounds recurses deeply in DAG building
sys.path.insert(0, f"{workflow.basedir}/src")

from asvp import methods, plan  # noqa: E402
from asvp.config import layered_config  # noqa: E402
from asvp.oracle import answered, answers_path  # noqa: E402
from asvp.strategies.base import STRATEGIES  # noqa: E402

# Layers, lowest first: the schema's defaults; workflow_config.yaml beside the Snakefile when no
# --configfile is given, else each --configfile in order; --config KEY=VALUE on top.
CONFIG_LAYERS = [str(f) for f in workflow.overwrite_configfiles] or [f"{workflow.basedir}/workflow_config.yaml"]
_validated, CONFIG_LAYERS = layered_config(dict(config), CONFIG_LAYERS, bool(workflow.overwrite_configfiles),
                                           bool(workflow.config_settings.config))
config.clear()
config.update(_validated)
PLAN = plan.Plan(config)
print(PLAN.describe(), file=sys.stderr)

RES = PLAN.res
RUN = f"{RES}/{{method}}/{{strategy}}/seed{{seed}}"
ROUND = f"{RUN}/round{{r}}"
FINETUNES = PLAN.finetune_cache  # fine-tunes keyed by what determines them, shared across methods
BUDGETS = PLAN.budgets
HUMAN_ORACLE = PLAN.human_oracle  # a person labels between selection and labelling: separate jobs
GROWING_POOL = config["data"]["dataset"] == "unlabelled"  # your own images: the folder may grow (kept())
CONDA_ENV = "../envs/cuda.yaml" if config["device"] == "cuda" else "../envs/cpu.yaml"
try:
    JOB_THREADS = plan.job_threads(workflow.cores)
except Exception:  # cluster execution: workflow.cores is undefined
    JOB_THREADS = plan.job_threads(None, cluster=True)
SMALL, PROXY = plan.SMALL, plan.PROXY
HEAVY, FINETUNE = plan.heavy(config), plan.heavy(config, config["gpus_per_job"])
# The selection chain is a long sequence of small jobs per run; fine-tunes hang off it. Running
# the chain first lets the fine-tunes fill the gaps instead of one chain running alone at the end.
SELECTION_PRIORITY = 10

# Rules call the library's CLI as `asvp`. Without `--sdm conda` that is the one beside the
# interpreter running Snakemake (the project's venv), first on the jobs' PATH, so
# `.venv/bin/snakemake` works without activating the venv; with it, each rule's env provides it.
if "conda" not in str(workflow.deployment_settings.deployment_method).lower():
    shell.prefix(f'set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; ')


def one_of(names):
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(names) if names else "(?!)"


DECIDING = methods.names(lambda m: m.decides)
SINGLE_SHOT = methods.names(lambda m: m.single_shot)


wildcard_constraints:
    method=r"[a-z_]+",
    strategy=r"[a-z_]+",
    seed=r"\d+",
    r=r"\d{3}",


def params(*sections):
    return plan.params_json(config, *sections)


def round_file(wildcards, name, r=None):
    """Path of `name` in round r (default: the job's round) of the job's run."""
    r = wildcards.r if r is None else r
    return f"{RES}/{wildcards.method}/{wildcards.strategy}/seed{wildcards.seed}/round{r}/{name}"


def previous(wildcards, name):
    """Path of `name` in the round before the job's."""
    return round_file(wildcards, name, f"{int(wildcards.r) - 1:03d}")


def features_after(wildcards, r):
    """Features in use after round r: ASVP's follow its decisions; every other method's never change."""
    if r < 0 or not methods.method(wildcards.method).decides:
        return rules.extract_pretrained.output[0]
    return round_file(wildcards, "features.h5", f"{r:03d}")


def features_in_use(wildcards):
    """Features in use during the job's round: those after the previous round."""
    return kept(features_after(wildcards, int(wildcards.r) - 1))


def kept(path):
    """Your own images may grow between runs; their pool rows keep their index, so a finished
    round stays valid. Rounds take the pool's files as ancient: a grown folder reruns define_pool,
    the extraction (new images only) and the refresh, and only rounds still to come see it."""
    return ancient(path) if GROWING_POOL else path


def labelled_outputs(round_folder):
    """With the simulated oracle a selection job also labels its batch (one job per round)."""
    return {} if HUMAN_ORACLE else {"labelled": f"{round_folder}/labelled.csv"}


def selection_logs(round_folder, name="select"):
    """A selection job's log (every step's output) and its steps' timings (asvp.step_timing)."""
    return {"job": f"{round_folder}/logs/{name}.log", "timing": f"{round_folder}/benchmarks/select_steps.tsv"}


def answers_of(wildcards):
    """A person's answers for the job's round: the CSV file, Label Studio export or folder there
    is (live Label Studio rounds are pulled into the export at planning), else the expected file."""
    folder = PLAN.run_dir(wildcards.method, wildcards.strategy, wildcards.seed)
    return str(answered(folder, int(wildcards.r)) or answers_path(folder, int(wildcards.r)))


def refresh_requested(input):
    """Read the decision at scheduling time; before it exists, assume the expensive branch."""
    try:
        return plan.decision_refreshes(input.decision)
    except (OSError, KeyError, ValueError):
        return True


# --- input functions and optional steps of the rule files ---


def label_step(wildcards, input, output, threads):
    """A selection job's last step with the simulated oracle: label the batch just selected."""
    if HUMAN_ORACLE:
        return ""
    logs = selection_logs(os.path.dirname(output.selected))
    grow = f"--previous {input.labelled} " if "labelled" in input.keys() and int(wildcards.get("r", 0)) > 0 else ""
    return (f" && asvp --log {logs['job']} --timing {logs['timing']} --same-job label --selected {output.selected} "
            f"--pool {input.pool} --dataset-json {input.dataset} {grow}--round {int(wildcards.get('r', 0))} "
            f"--out {output.labelled}")


def decide_step(wildcards, input, output, threads):
    """The deciding methods' last step of a proxy round: the refresh decision on the new labels."""
    logs = selection_logs(os.path.dirname(output.selected))
    return (f" && asvp --log {logs['job']} --timing {logs['timing']} --same-job --threads {threads} decide "
            f"--config-json {params('decision')} --method {wildcards.method} --features {input.features} "
            f"--labelled {output.labelled} --previous {input.previous_decision} --seed {wildcards.seed} "
            f"--round {wildcards.r} --out {output.decision}")


def request_inputs(wildcards):
    """The selection to show, and the proxy that made it (its predicted class is the hint)."""
    inputs = {"selected": round_file(wildcards, "selected.csv"), "pool": kept(rules.define_pool.output.pool),
              "dataset": kept(rules.define_pool.output.info)}
    if methods.method(wildcards.method).selection == "proxy" and int(wildcards.r) > 0:
        inputs["weights"] = round_file(wildcards, "proxy.npz")
        inputs["features"] = features_in_use(wildcards)
    return inputs


def label_inputs(wildcards):
    """A person's answers for a round, with what they answer (to_label.csv) and the labels so far."""
    inputs = {"selected": round_file(wildcards, "selected.csv"), "pool": kept(rules.define_pool.output.pool),
              "dataset": kept(rules.define_pool.output.info), "request": round_file(wildcards, "to_label.csv"),
              "answers": answers_of(wildcards)}
    if int(wildcards.r) > 0 and not methods.method(wildcards.method).single_shot:
        inputs["previous"] = previous(wildcards, "labelled.csv")
    return inputs


def decide_inputs(wildcards):
    inputs = {"features": features_in_use(wildcards), "labelled": round_file(wildcards, "labelled.csv")}
    if int(wildcards.r) > 0:
        inputs["previous"] = previous(wildcards, "decision.json")
    return inputs


def evaluate_inputs(wildcards):
    inputs = {"pool": kept(rules.define_pool.output.pool), "test": rules.define_pool.output.test,
              "labelled": round_file(wildcards, "labelled.csv")}
    if methods.method(wildcards.method).decides:
        inputs["decision"] = round_file(wildcards, "decision.json")  # LP-FT or FT, decided per round
        # After a refresh's fine-tune (same labels, FT) the evaluation reuses it: wait for it.
        inputs["features"] = round_file(wildcards, "features.h5")
    return inputs


def delivered_round(wildcards):
    """The round whose evaluation a delivery folder (final, round<r>/delivered) packs up."""
    return SimpleNamespace(method=wildcards.method, strategy=wildcards.strategy, seed=wildcards.seed,
                           r=f"{PLAN.delivery_round(wildcards.point):03d}")


def deliver_inputs(wildcards):
    at = delivered_round(wildcards)
    # metrics.json: the evaluation ran first, so its model is in the cache.
    return {**evaluate_inputs(at), "metrics": round_file(at, "metrics.json"), "dataset": rules.define_pool.output.info}

