# Config validation, paths and the small helpers every rule file uses.
import json
import shlex
import sys

sys.setrecursionlimit(100000)  # long round chains (hundreds of rounds) recurse deeply in DAG building
sys.path.insert(0, f"{workflow.basedir}/src")

from asvp.config import validate_config  # noqa: E402

config.update(
    validate_config(
        config, source=", ".join(map(str, workflow.overwrite_configfiles or ["workflow_config.yaml"]))
    )
)

RES = f"{config['results_dir']}/{config['experiment']}"
RUN = f"{RES}/{{method}}/{{strategy}}/seed{{seed}}"
ROUND = f"{RUN}/round{{r}}"
BUDGETS = config["schedule"]["budgets"]
N_ROUNDS = len(BUDGETS)

# The library's CLI, run by the interpreter that runs Snakemake (the project's venv); with
# `--sdm conda` each rule's env provides `python` instead.
ASVP = (
    "python -m asvp"
    if "conda" in str(workflow.deployment_settings.deployment_method).lower()
    else f"{shlex.quote(sys.executable)} -m asvp"
)

PROXY_METHODS = ("svpp", "asvp")
STANDARD_METHODS = ("standard", "standard_lpft")
UNSUPPORTED_METHODS = {
    "activeft_pre": "ActiveFT(pre) needs the ActiveFT strategy, which is not implemented yet",
}


def check_methods():
    for method in config["methods"]:
        if method in UNSUPPORTED_METHODS:
            raise ValueError(
                f"method '{method}' cannot run yet: {UNSUPPORTED_METHODS[method]}. "
                "Remove it from `methods` in the config."
            )


check_methods()


wildcard_constraints:
    method=r"[a-z_]+",
    strategy=r"[a-z_]+",
    seed=r"\d+",
    r=r"\d{3}",


def cfg_json(*sections):
    """Shell-quoted JSON of config sections: a rule's params, so it reruns only when they change."""
    return shlex.quote(json.dumps({s: config[s] for s in sections}, sort_keys=True))


def prev_round(wildcards):
    return f"{int(wildcards.r) - 1:03d}"


def round_file(wildcards, name, r=None):
    """Path of `name` in round r (default: this job's round) of this job's run."""
    r = wildcards.r if r is None else r
    return f"{RES}/{wildcards.method}/{wildcards.strategy}/seed{wildcards.seed}/round{r}/{name}"


def strategies_of(method):
    return ["random"] if method == "random" else config["strategies"]


def runs():
    for method in config["methods"]:
        for strategy in strategies_of(method):
            for seed in config["seeds"]:
                yield method, strategy, seed


def all_metrics():
    return [
        f"{RES}/{method}/{strategy}/seed{seed}/round{r:03d}/metrics.json"
        for r in range(N_ROUNDS)
        for method, strategy, seed in runs()
    ]


def train_recipe(wildcards):
    """FT by default; LP-FT for the LP-FT baseline; ASVP reads its round's decision at run time."""
    return {"standard_lpft": "lpft", "asvp": "auto"}.get(wildcards.method, "ft")


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
    if wildcards.method == "asvp":
        inputs["decision"] = round_file(wildcards, "decision.json")  # LP-FT or FT, decided per round
    return inputs


# rules/proxy.smk
def proxy_features(wildcards, r):
    """Features the proxy reads after round r: SVPp's never change, ASVP's follow its decisions."""
    if wildcards.method == "asvp":
        return round_file(wildcards, "features.h5", r)
    return rules.extract_pretrained.output[0]


# rules/select.smk
def label_inputs(wildcards):
    inputs = {"selected": round_file(wildcards, "selected.csv"), "pool": rules.define_pool.output.pool}
    if int(wildcards.r) > 0:
        inputs["previous"] = round_file(wildcards, "labelled.csv", prev_round(wildcards))
    return inputs
