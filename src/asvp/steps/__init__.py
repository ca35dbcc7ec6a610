"""What each workflow rule runs: one module of step functions per rule file.

rules/features.smk -> steps.features, rules/select.smk -> steps.select, rules/decide.smk ->
steps.decide, rules/evaluate.smk -> steps.evaluate, rules/report.smk -> steps.report. A step
reads its input files, calls the library and writes its outputs atomically; the CLI
(`asvp.cli`) builds one subcommand per step from its signature. Nothing here knows about
Snakemake, and no step module imports torch at the top: cheap steps must start fast.
"""
