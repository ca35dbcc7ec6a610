# Config validation, paths and the small helpers every rule file uses.
import json
import os
import shlex
import sys

sys.setrecursionlimit(100000)  # long round chains (hundreds of rounds) recurse deeply in DAG building
sys.path.insert(0, f"{workflow.basedir}/src")

from asvp.config import validate_config  # noqa: E402
from asvp.costs import SINGLE_SHOT_METHODS  # noqa: E402
from asvp.decision import ABLATION_SWITCHES, settings_for_method  # noqa: E402
from asvp.oracle import answered, answers_path  # noqa: E402
from asvp.schedule import cumulative_labels, evaluation_rounds  # noqa: E402

# Layers, lowest first: the schema's defaults; workflow_config.yaml beside the Snakefile when no
# --configfile is given, else each --configfile in order; --config KEY=VALUE (nested keys merge).
# The same wherever the command runs: nothing depends on the working directory.
DEFAULT_CONFIGFILE = f"{workflow.basedir}/workflow_config.yaml"
CONFIG_LAYERS = [str(f) for f in workflow.overwrite_configfiles] or [DEFAULT_CONFIGFILE]
if not workflow.overwrite_configfiles:
    from snakemake.utils import update_config

    from asvp.config import read_config_file

    _layered = read_config_file(DEFAULT_CONFIGFILE)
    update_config(_layered, dict(config))  # config holds only --config here
    config.clear()
    config.update(_layered)
if workflow.config_settings.config:
    CONFIG_LAYERS.append("--config")
config.update(validate_config(config, source=" < ".join(CONFIG_LAYERS)))
print(f"asvp-flow: config = schema defaults < {' < '.join(CONFIG_LAYERS)}", file=sys.stderr)

RES = f"{config['results_dir']}/{config['experiment']}"
RUN = f"{RES}/{{method}}/{{strategy}}/seed{{seed}}"
ROUND = f"{RUN}/round{{r}}"
BUDGETS = config["schedule"]["budgets"]
N_ROUNDS = len(BUDGETS)
EVAL_ROUNDS = evaluation_rounds(BUDGETS, config["evaluation"]["at"])
FINETUNES = f"{RES}/finetunes"  # fine-tunes keyed by what determines them, shared across methods
print(
    "asvp-flow: evaluation points at rounds "
    + ", ".join(f"{r} ({n} labels)" for r, n in zip(EVAL_ROUNDS, [cumulative_labels(BUDGETS)[r] for r in EVAL_ROUNDS])),
    file=sys.stderr,
)

# Rules call the library's CLI as `asvp` (its console script). Without `--sdm conda` that is the
# one beside the interpreter running Snakemake (the project's venv), put first on the jobs' PATH, so
# `.venv/bin/snakemake` works without activating the venv; with it, each rule's env provides it.
if "conda" not in str(workflow.deployment_settings.deployment_method).lower():
    shell.prefix(f'set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; ')

# Resources every rule declares (a cluster profile may override them per rule). GPUs are asked for
# unless device is cpu: gpus_per_job for fine-tunes and extractions, which use them all
# (asvp.distributed), one for the rest; a refresh asks for them only when its decision refreshes.
GPUS = 0 if config["device"] == "cpu" else 1  # proxy steps and selection with a fine-tuned model
FINETUNE_GPUS = 0 if config["device"] == "cpu" else config["gpus_per_job"]  # fine-tunes and extractions
SMALL_MEM_MB, PROXY_MEM_MB, BIG_MEM_MB = 2000, 16000, 64000
SHORT_MINUTES, PROXY_MINUTES, LONG_MINUTES = 15, 120, 1440
# Cluster scheduling: the steps that only move small files run in the head process (localrules
# in the Snakefile); a proxy method's round (train the proxy, select, label, ASVP's decision) is
# one job (FUSED_ROUND below): one submission per round. refresh_features stays its own job, so
# that it asks for a GPU only when the decision refreshes; a pass-through asks for no GPU and 15
# minutes.

# Every rule's software for `--sdm conda` (paths are relative to the rule files in rules/).
CONDA_ENV = "../envs/cuda.yaml" if config["device"] == "cuda" else "../envs/cpu.yaml"

# Fine-tunes and proxy steps run two side by side: on the 2-core default two 1-thread jobs train 17 % more
# images per second than one 2-thread job (219 vs 187 img/s, MobileNetV2 at 32 px, measured here).
# On a cluster (no --cores: the executor asks for each job's threads) a profile sets them per
# rule with `set-threads`; 8 is the default there.
try:
    JOB_THREADS = max(1, int(workflow.cores) // 2)
except (TypeError, ValueError):  # --cores all: let the scheduler cap it
    JOB_THREADS = 2
except Exception:  # cluster execution: workflow.cores is undefined
    JOB_THREADS = 8

# The selection chain (select, label, decide, refresh, proxy) is a long sequence of small jobs
# per run; evaluation fine-tunes hang off it. Scheduling the chain first lets the fine-tunes
# fill the gaps, instead of leaving one chain to run alone at the end on one core.
SELECTION_PRIORITY = 10

ASVP_METHODS = tuple(ABLATION_SWITCHES)  # asvp and its Table 3 ablations: they decide every round
PROXY_METHODS = ("svpp", *ASVP_METHODS)
STANDARD_METHODS = ("standard", "standard_lpft")
# SINGLE_SHOT_METHODS (asvp.costs): ActiveFT(pre), every evaluation point its own single-shot
# selection on the pre-trained features (labelled sets not nested, no rounds in between), then FT.


wildcard_constraints:
    method=r"[a-z_]+",
    strategy=r"[a-z_]+",
    seed=r"\d+",
    r=r"\d{3}",


# Keys that choose which jobs exist, not what a job computes: left out of params so that
# changing them never reruns the jobs that remain.
PLANNING_KEYS = {"evaluation": ("at",)}


# Keys added after results existed, left out of params while at their default: a new key must not
# make every job of an existing experiment look changed (fine-tune cache keys hash the excerpt too).
OMITTED_AT_DEFAULT = {"data": {"bad_images": "stop"}}


def cfg_excerpt(*sections):
    def kept(section, key, value):
        return key not in PLANNING_KEYS.get(section, ()) and OMITTED_AT_DEFAULT.get(section, {}).get(key, object()) != value

    return {
        s: {k: v for k, v in config[s].items() if kept(s, k, v)} if isinstance(config[s], dict) else config[s]
        for s in sections
    }


def cfg_json(*sections):
    """Shell-quoted JSON of config sections: a rule's params, so it reruns only when they change."""
    return shlex.quote(json.dumps(cfg_excerpt(*sections), sort_keys=True))


def select_cfg(*sections):
    """Params of a selection job: `sections` plus the options of its own strategy only (and the
    device for ActiveFT, which runs on it), so changing one strategy's options reruns only its jobs."""

    def params(wildcards):
        excerpt = cfg_excerpt(*sections)
        options = config["strategy_options"].get(wildcards.strategy, {})
        if options:  # absent when the strategy has none: results from before the key existed stay valid
            excerpt["strategy_options"] = {wildcards.strategy: options}
        if wildcards.strategy == "activeft":
            excerpt["device"] = config["device"]
        return shlex.quote(json.dumps(excerpt, sort_keys=True))

    return params


def prev_round(wildcards):
    return f"{int(wildcards.r) - 1:03d}"


def round_file(wildcards, name, r=None):
    """Path of `name` in round r (default: this job's round) of this job's run."""
    r = wildcards.r if r is None else r
    return f"{RES}/{wildcards.method}/{wildcards.strategy}/seed{wildcards.seed}/round{r}/{name}"


def strategies_of(method):
    if method in SINGLE_SHOT_METHODS:
        return ["activeft"]
    return ["random"] if method == "random" else config["strategies"]


def rounds_of(method):
    """The rounds a method's run has: single-shot methods only select at evaluation points."""
    return EVAL_ROUNDS if method in SINGLE_SHOT_METHODS else range(N_ROUNDS)


def runs():
    for method in config["methods"]:
        for strategy in strategies_of(method):
            for seed in config["seeds"]:
                yield method, strategy, seed


HUMAN_ORACLE = config["oracle"] == "human"
# With the simulated oracle the job that selects a round's queries also labels them, and for
# ASVP also decides (rounds after 0): one or two jobs per round instead of three to five, so that a
# 900-round run plans in seconds and a cluster gets one submission per round (issue 11). A person
# labels between selection and labelling, so with the human oracle those stay separate jobs.
# Each step still records its own time (`asvp --timing`): the time model needs them apart.
FUSED_ROUND = not HUMAN_ORACLE


def fused_outputs(round_folder, decide=False):
    """Extra outputs of a selection job that labels (and decides) too; none with people."""
    if not FUSED_ROUND:
        return {}
    outputs = {"labelled": f"{round_folder}/labelled.csv"}
    if decide:
        outputs["decision"] = f"{round_folder}/decision.json"
    return outputs


def job_steps(*steps):
    """One shell command that runs a job's steps in order (a step that does not apply is "")."""
    return " && ".join(step for step in steps if step)


def label_step(previous, round_field="{wildcards.r}"):
    """A selection job's last step: label the batch just selected (the first labels, or on top of
    the last round's); none with the human oracle, whose `label` rule runs it."""
    if not FUSED_ROUND:
        return ""
    grow = "--previous {input.labelled} " if previous else ""
    return (
        "asvp --log {log.job} --timing {log.timing} --same-job label --selected {output.selected} --pool {input.pool} "
        f"--dataset-json {{input.dataset}} {grow}--round {round_field} --out {{output.labelled}}"
    )


# A proxy method's round: train the MLP proxy on the labelled samples' features (as they were
# after the last round: SVPp's never change, ASVP's follow its decisions), score the pool with it;
# ASVP then decides on the new labels.
TRAIN_PROXY_STEP = (
    "asvp --log {log.job} --timing {log.timing} --threads {threads} train-proxy --config-json {params.proxy_cfg} "
    "--features {input.features} --labelled {input.labelled} --seed {wildcards.seed} --round {wildcards.r} "
    "--out {output.proxy} --weights-out {output.weights}"
)
SELECT_WITH_PROXY_STEP = (
    "asvp --log {log.job} --timing {log.timing} --same-job --threads {threads} select --strategy {wildcards.strategy} "
    "--budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} --pool {input.pool} "
    "--labelled {input.labelled} --features {input.features} --proxy-weights {output.weights} "
    "--config-json {params.cfg} --selected-out {output.selected} --scores-out {output.scores}"
)
DECIDE_STEP = (
    "asvp --log {log.job} --timing {log.timing} --same-job --threads {threads} decide "
    "--config-json {params.decision_cfg} --features {input.features} --labelled {output.labelled} "
    "--previous {input.previous_decision} --seed {wildcards.seed} --round {wildcards.r} --out {output.decision}"
)


def selection_logs(round_folder, name="select"):
    """A selection job's log (every step's output) and its steps' timings (asvp.step_timing)."""
    return {"job": f"{round_folder}/logs/{name}.log", "timing": f"{round_folder}/benchmarks/select_steps.tsv"}


def run_dir(method, strategy, seed):
    return f"{RES}/{method}/{strategy}/seed{seed}"


def labelled_rounds(method, strategy, seed):
    """Rounds whose labels can be had now: every round with the simulated oracle; with people,
    the rounds in order up to the first one whose answers are not there yet."""
    rounds = list(rounds_of(method))
    if not HUMAN_ORACLE:
        return rounds
    for k, r in enumerate(rounds):
        if answered(run_dir(method, strategy, seed), r) is None:
            return rounds[:k]
    return rounds


def pending_requests():
    """(run folder, round) of every run waiting for a person's answers."""
    waiting = []
    for method, strategy, seed in runs():
        done = labelled_rounds(method, strategy, seed)
        remaining = [r for r in rounds_of(method) if r not in done]
        if remaining:
            waiting.append((run_dir(method, strategy, seed), remaining[0]))
    return waiting


def all_requests():
    """to_label.csv and its contact sheet of every round waiting for a person (human oracle)."""
    return [f"{folder}/round{r:03d}/{name}" for folder, r in pending_requests() for name in ("to_label.csv", "to_label.png")]


def all_metrics():
    """metrics.json of every evaluation point whose labels exist (the curves' points)."""
    labelled = {run: set(labelled_rounds(*run)) for run in runs()}
    return [
        f"{run_dir(method, strategy, seed)}/round{r:03d}/metrics.json"
        for r in EVAL_ROUNDS
        for method, strategy, seed in runs()
        if r in labelled[(method, strategy, seed)]
    ]


def all_rounds():
    """A cheap artefact of every round in ascending order: keeps DAG recursion shallow for long runs."""
    labelled = {run: set(labelled_rounds(*run)) for run in runs()}
    return [
        f"{run_dir(method, strategy, seed)}/round{r:03d}/{name}"
        for r in range(N_ROUNDS)
        for method, strategy, seed in runs()
        if r in labelled[(method, strategy, seed)]
        for name in (["labelled.csv"] + (["decision.json"] if method in ASVP_METHODS else []))
    ]


def finetune_cfg(wildcards):
    """Config sections a fine-tune depends on (LP-FT adds its own)."""
    extra = ["lpft"] if train_recipe(wildcards) != "ft" else []
    return cfg_json("data", "backbone", "finetune", "evaluation", "device", *extra)


def share_model_flag(wildcards):
    """Round 0 is the same fine-tune for every method of a seed; standard AL needs its model."""
    shared = int(wildcards.r) == 0 and any(m in STANDARD_METHODS for m in config["methods"])
    return "--share-model" if shared else ""


def train_recipe(wildcards):
    """FT by default; LP-FT for the LP-FT baseline; ASVP reads its round's decision at run time."""
    if wildcards.method in ASVP_METHODS:
        return "auto"
    return "lpft" if wildcards.method == "standard_lpft" else "ft"


def decision_cfg(wildcards):
    """The decision section as this ASVP method (or ablation) runs it."""
    return shlex.quote(json.dumps({"decision": settings_for_method(wildcards.method, config["decision"])}, sort_keys=True))


# --- input functions of the rule files (kept here so rule files only wire files) ---


# rules/decide.smk
def current_features(wildcards):
    """Features in use during round r: the previous round's version, pre-trained in round 0."""
    r = int(wildcards.r)
    return rules.extract_pretrained.output[0] if r == 0 else round_file(wildcards, "features.h5", f"{r - 1:03d}")


# rules/decide.smk
def decide_inputs(wildcards):
    inputs = {"features": current_features(wildcards), "labelled": round_file(wildcards, "labelled.csv")}
    if int(wildcards.r) > 0:
        inputs["previous"] = round_file(wildcards, "decision.json", prev_round(wildcards))
    return inputs


# rules/decide.smk
def refresh_requested(input):
    """Read the decision at scheduling time; before it exists, assume the expensive branch."""
    try:
        with open(input.decision) as handle:
            return bool(json.load(handle)["refresh_features"])
    except (OSError, KeyError, ValueError):
        return True


# rules/evaluate.smk
def evaluate_inputs(wildcards):
    inputs = {
        "pool": rules.define_pool.output.pool,
        "test": rules.define_pool.output.test,
        "labelled": round_file(wildcards, "labelled.csv"),
    }
    if wildcards.method in ASVP_METHODS:
        inputs["decision"] = round_file(wildcards, "decision.json")  # LP-FT or FT, decided per round
        # After a refresh's fine-tune (same labels, FT) the evaluation reuses it: wait for it.
        inputs["features"] = round_file(wildcards, "features.h5")
    return inputs


# rules/proxy.smk
def proxy_features(wildcards, r):
    """Features the proxy reads after round r: SVPp's never change, ASVP's follow its decisions."""
    if wildcards.method in ASVP_METHODS:
        return round_file(wildcards, "features.h5", r)
    return rules.extract_pretrained.output[0]


# rules/select.smk
def label_inputs(wildcards):
    inputs = {
        "selected": round_file(wildcards, "selected.csv"),
        "pool": rules.define_pool.output.pool,
        "dataset": rules.define_pool.output.info,
    }
    if int(wildcards.r) > 0 and wildcards.method not in SINGLE_SHOT_METHODS:
        inputs["previous"] = round_file(wildcards, "labelled.csv", prev_round(wildcards))
    if HUMAN_ORACLE:
        folder = run_dir(wildcards.method, wildcards.strategy, wildcards.seed)
        inputs["request"] = round_file(wildcards, "to_label.csv")
        inputs["answers"] = str(answered(folder, int(wildcards.r)) or answers_path(folder, int(wildcards.r)))
    return inputs


# rules/select.smk
def label_flags(wildcards, input):
    flags = f"--previous {input.previous}" if "previous" in input.keys() else ""
    if "answers" in input.keys():
        flags += f" --answers {shlex.quote(input.answers)} --request {input.request}"
    return flags


# rules/select.smk
def request_inputs(wildcards):
    """The selection to show, and the proxy that made it (its predicted class is the hint)."""
    inputs = {"selected": round_file(wildcards, "selected.csv"), "pool": rules.define_pool.output.pool,
              "dataset": rules.define_pool.output.info}
    if wildcards.method in PROXY_METHODS and int(wildcards.r) > 0:
        inputs["weights"] = round_file(wildcards, "proxy.npz")
        inputs["features"] = proxy_features(wildcards, prev_round(wildcards))
    return inputs
