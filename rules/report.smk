# The experiment's tables (summarize) and the paper's yardstick on them (report_figures): the
# figures and tables `snakemake --report report.html` gathers, with the captions in captions/
# (asvp.steps.report).


rule effective_config:
    output:
        f"{RES}/config.yaml",
    params:
        cfg=shlex.quote(json.dumps(config)),
        layers=shlex.quote(" < ".join(["schema defaults", *CONFIG_LAYERS])),
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    log:
        f"{RES}/logs/effective_config.log",
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} write-config --config-json {params.cfg} --layers {params.layers} --out {output}"


rule summarize:
    input:
        metrics=PLAN.metrics_files(),
        rounds=PLAN.round_files(),
        # A plain path, not rules.define_pool.output.info: with the 3,600-file list above, that
        # made Snakemake hash the whole list once per item (1.1 s of a 900-round dry run).
        dataset=FILES.dataset,
    output:
        summary=f"{RES}/summary.csv",
        rounds=f"{RES}/rounds.csv",
        decisions=f"{RES}/decisions.csv",
        class_counts=f"{RES}/class_counts.csv",
    params:
        n_rounds=PLAN.n_rounds,
        random_rounds=len(PLAN.random_budgets),
        experiment_dir=lambda w, output: os.path.dirname(output.summary),
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    log:
        f"{RES}/logs/summarize.log",
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} summarize --experiment-dir {params.experiment_dir} --metrics {input.metrics} --out {output.summary} "
        "--rounds {params.n_rounds} --random-rounds {params.random_rounds} --dataset-json {input.dataset} --rounds-out {output.rounds} "
        "--decisions-out {output.decisions} --class-counts-out {output.class_counts}"


REPORT = f"{RES}/report"


rule report_figures:
    input:
        rules.summarize.output,
        # Each run's final model's pool predictions (predicted_classes).
        [f for f in PLAN.delivery_files() if f.endswith(os.path.join(plan.FINAL_FOLDER, "predictions.csv"))],
    output:
        accuracy=report(f"{REPORT}/accuracy.png", caption="captions/accuracy.rst", category="1. Curves"),
        equivalent=report(f"{REPORT}/equivalent_labels.png", caption="captions/equivalent_labels.rst", category="1. Curves"),
        table1=report(f"{REPORT}/table1.html", caption="captions/table1.rst", category="2. Saving and cost"),
        cost=report(f"{REPORT}/cost_vs_time.png", caption="captions/cost_vs_time.rst", category="2. Saving and cost"),
        points=report(f"{REPORT}/saving_points.html", caption="captions/saving_points.rst", category="2. Saving and cost"),
        time_model=report(f"{REPORT}/time_model.html", caption="captions/time_model.rst", category="3. Time"),
        decision_plot=report(f"{REPORT}/decisions.png", caption="captions/decisions.rst", category="4. ASVP decisions"),
        decisions=report(f"{REPORT}/decisions.html", caption="captions/decisions_table.rst", category="4. ASVP decisions"),
        table3=report(f"{REPORT}/table3.html", caption="captions/table3.rst", category="4. ASVP decisions"),
        comparisons=report(f"{REPORT}/comparisons.html", caption="captions/comparisons.rst", category="2. Saving and cost"),
        per_class=report(f"{REPORT}/per_class_accuracy.html", caption="captions/per_class.rst", category="5. Per class"),
        counts=report(f"{REPORT}/class_counts.html", caption="captions/class_counts.rst", category="5. Per class"),
        predicted_plot=report(f"{REPORT}/predicted_classes.png", caption="captions/predicted_classes.rst", category="5. Per class"),
        predicted=report(f"{REPORT}/predicted_classes.html", caption="captions/predicted_classes.rst", category="5. Per class"),
        config=report(f"{REPORT}/config.html", caption="captions/config.rst", category="6. Config"),
    params:
        cfg=params("cost", "methods", "strategies", "seeds", "schedule", "evaluation", "decision", "data", "backbone",
                     "finetune", "lpft", "proxy"),
        experiment_dir=lambda w, output: os.path.dirname(os.path.dirname(output.accuracy)),
        out_dir=lambda w, output: os.path.dirname(output.accuracy),
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    log:
        f"{RES}/logs/report_figures.log",
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} report --config-json {params.cfg} --experiment-dir {params.experiment_dir} "
        "--out-dir {params.out_dir}"
