# Config validation and the names the rule files share; the plan itself (runs, rounds, resources,
# params) is asvp.plan, the methods asvp.methods, what each rule reads asvp.rule_inputs.
import json
import os
import shlex
import sys

sys.setrecursionlimit(100000)  # a chain of hundreds of rounds recurses deeply in DAG building
sys.path.insert(0, f"{workflow.basedir}/src")

from asvp import methods, plan  # noqa: E402
from asvp.config import layered_config  # noqa: E402
from asvp.rule_inputs import RuleInputs  # noqa: E402
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
FILES = RuleInputs(PLAN)  # what each rule reads, from its wildcards (the input functions)
RUN, ROUND = FILES.run, FILES.round  # a run's folder and a round's, as wildcard patterns
FINETUNES = PLAN.finetune_cache  # fine-tunes keyed by what determines them, shared across methods
BUDGETS = PLAN.budgets
HUMAN_ORACLE = PLAN.human_oracle  # a person labels between selection and labelling: separate jobs
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

