# The final model at each evaluation point (evaluation.at): fine-tune the pre-trained backbone on
# the labelled set (FT or LP-FT; ASVP as its decision says) and measure test accuracy. Standard
# AL fine-tunes every round, because the next round selects with that model; it is tested in
# the same job. Fine-tunes are cached by what determines them (see asvp.evaluation), so equal
# inputs across methods, strategies and rules train once; they checkpoint and resume.


rule evaluate:
    wildcard_constraints:
        method="(?!standard)[a-z_]+",
    input:
        unpack(evaluate_inputs),
    output:
        metrics=f"{ROUND}/metrics.json",
    params:
        recipe=train_recipe,
        decision=lambda w, input: f"--decision {input.decision}" if "decision" in input.keys() else "",
        cfg=lambda w: finetune_cfg(w),
        cache=FINETUNES,
        share=share_model_flag,
    threads: JOB_THREADS
    resources:
        gpu=FINETUNE_GPUS,
        mem_mb=BIG_MEM_MB,
        runtime=LONG_MINUTES,
    log:
        f"{ROUND}/logs/evaluate.log",
    benchmark:
        f"{ROUND}/benchmarks/evaluate.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} --gpus {resources.gpu} evaluate --config-json {params.cfg} --recipe {params.recipe} "
        "{params.decision} --pool {input.pool} --labelled {input.labelled} --test {input.test} "
        "--seed {wildcards.seed} --round {wildcards.r} --cache-dir {params.cache} {params.share} --out {output.metrics}"


rule finetune_standard:
    wildcard_constraints:
        method="|".join(STANDARD_METHODS),
    input:
        unpack(evaluate_inputs),
    output:
        # Read by the next round's selection only; removed once it has run (evaluation.keep_models
        # keeps every model in the fine-tune cache instead).
        model=temp(f"{ROUND}/model.pt"),
        metrics=f"{ROUND}/metrics.json",
    params:
        recipe=train_recipe,
        cfg=lambda w: finetune_cfg(w),
        cache=FINETUNES,
        share=share_model_flag,
    threads: JOB_THREADS
    resources:
        gpu=FINETUNE_GPUS,
        mem_mb=BIG_MEM_MB,
        runtime=LONG_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/evaluate.log",
    benchmark:
        f"{ROUND}/benchmarks/evaluate.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} --gpus {resources.gpu} evaluate --config-json {params.cfg} --recipe {params.recipe} "
        "--pool {input.pool} --labelled {input.labelled} --test {input.test} --seed {wildcards.seed} "
        "--round {wildcards.r} --cache-dir {params.cache} {params.share} --model-out {output.model} "
        "--out {output.metrics}"
