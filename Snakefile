# asvp-flow: aligned selection via proxy (Wen et al.), one static DAG of rounds.
#
# Reads like the paper's Figure 10. For each method, strategy and seed:
#   round 0    select_initial (seeded random) -> label
#   round r>0  [svpp/asvp]      select_proxy: train the proxy on round r-1's features, score -> label
#              [standard]       select_standard with round r-1's fine-tuned model          -> label
#              [random]         select_random                                              -> label
#   [asvp] after every round    decide (PED + LogME) -> refresh_features (fine-tune and
#                               re-extract, or link the previous version)
#   With the simulated oracle, labelling (and ASVP's decision after round 0: select_proxy_decide)
#   runs inside the selection job: few jobs per round (rules/common.smk, FUSED_ROUND).
#   evaluation points           evaluate: fine-tune (FT or LP-FT; ASVP: as decided), test accuracy
#                               (evaluation.at; standard fine-tunes and tests every round)
# then summarize -> results/{experiment}/summary.csv.
# All logic lives in src/asvp; rules only wire files to `python -m asvp <step>`.

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
    decide,
    summarize,
    report_figures,


rule all:
    default_target: True
    input:
        all_rounds(),
        all_metrics(),
        all_requests(),
        f"{RES}/config.yaml",
        # With a human oracle the tables wait for the first answered evaluation point.
        [f"{RES}/summary.csv", rules.report_figures.output] if all_metrics() else [],


onsuccess:
    from asvp.report import run_notice

    print(run_notice(f"{RES}/summary.csv"), file=sys.stderr)
    for folder, r in pending_requests():
        print(
            f"asvp-flow: waiting for labels: {folder}/round{r:03d}/to_label.csv lists the images to label "
            f"(to_label.png shows them); write {answers_path(folder, r)} (sample_id,class) or a folder per "
            "class beside it, then run the same command again.",
            file=sys.stderr,
        )
