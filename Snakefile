# asvp-flow: aligned selection via proxy (Wen et al.), one static DAG of rounds.
#
# Reads like the paper's Figure 10. For each method (asvp.methods), strategy and seed:
#   round 0    select_initial: a seeded random draw (select_cold_start: a pick on the pre-trained
#              features, schedule.cold_start or ActiveFT; initial_labels: the labels you give) -> label
#   round r>0  select_proxy   [svpp, asvp]  train the MLP proxy on round r-1's features, score -> label
#              select_model   [standard]    score with round r-1's fine-tuned network            -> label
#              select_random  [random]                                                          -> label
#   [asvp]     decide (PED + LogME) after every round -> refresh_features: fine-tune and
#              re-extract, or link the previous version
#   evaluation points (evaluation.at): evaluate: fine-tune (FT, LP-FT or as decided), test accuracy
#   deliver    the last evaluation's model, with its pool predictions -> {run}/final/
# then summarize -> results/{experiment}/summary.csv and report_figures.
# With the simulated oracle a round's selection job also labels (and for ASVP after round 0
# decides: select_proxy_decide). Rules only wire files to `asvp <step>` (src/asvp/steps).

from snakemake.utils import min_version

min_version("9.0")


# Config: no `configfile:` directive (its path would depend on the working directory). Without
# --configfile the default experiment, workflow_config.yaml beside this Snakefile, is used;
# with --configfile only those files, merged in order. --config KEY=VALUE goes on top, and the
# schema fills every key left out (rules/common.smk, README "Configuration").


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/features.smk"
include: "rules/select.smk"
include: "rules/decide.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


# Steps that only move small files: run in the head process, never submitted to a cluster.
localrules:
    all,
    define_pool,
    effective_config,
    select_initial,
    select_random,
    request_labels,
    label,
    decide,
    summarize,
    report_figures,


rule all:
    default_target: True
    input:
        PLAN.round_files(),
        PLAN.metrics_files(),
        PLAN.delivery_files(),
        PLAN.request_files(),
        f"{RES}/config.yaml",
        # With a human oracle the tables wait for the first answered evaluation point.
        [f"{RES}/summary.csv", rules.report_figures.output] if PLAN.metrics_files() else [],


onstart:
    # Before any submission: a SLURM cluster without accounting would leave the plugin waiting for ever.
    from asvp.slurm import require_job_status_source

    require_job_status_source(getattr(workflow.executor_plugin, "name", None),
                              getattr(workflow.executor_settings, "status_command", None))


onsuccess:
    from asvp.oracle import waiting_note
    from asvp.tables import run_notice

    print(run_notice(f"{RES}/summary.csv"), file=sys.stderr)
    for folder, r in PLAN.pending_requests():
        print(waiting_note(folder, r, config["oracle"]), file=sys.stderr)
