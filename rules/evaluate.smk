# The final model at each evaluation point (evaluation.at, asvp.steps.evaluate): fine-tune the
# pre-trained backbone on the labelled set with the method's recipe (asvp.methods: FT, LP-FT, or
# as ASVP's decision says) and measure test accuracy. Standard AL fine-tunes every round, because
# its next round selects with that model. Fine-tunes are cached by what determines them
# (asvp.finetune), so equal inputs across methods, strategies and rules train once; they
# checkpoint and resume. At the delivery points (evaluation.deliver) `deliver` writes what the
# user takes home from the evaluation's model, which the evaluation keeps in the cache for it.


# One definition, two rules: standard AL's fine-tune also writes the model its next round
# selects with (a rule's outputs cannot depend on its wildcards).
for KEEPS_MODEL in (False, True):

    rule:
        name:
            "finetune_standard" if KEEPS_MODEL else "evaluate"
        wildcard_constraints:
            method=one_of(methods.names(lambda m: m.finetunes_every_round == KEEPS_MODEL)),
        input:
            unpack(FILES.evaluate_inputs),
        output:
            metrics=f"{ROUND}/metrics.json",
            # Read by the next round's selection only; removed once it has run (evaluation.keep_models
            # keeps every model in the fine-tune cache instead).
            **({"model": temp(f"{ROUND}/model.pt")} if KEEPS_MODEL else {}),
        params:
            recipe=lambda w: methods.training_recipe(w.method),
            decision=lambda w, input: f"--decision {input.decision}" if "decision" in input.keys() else "",
            model_out=lambda w, output: f"--model-out {output.model}" if "model" in output.keys() else "",
            cfg=lambda w: params(*plan.finetune_sections(w.method)),
            cache=FINETUNES,
            share=lambda w: "--share-model" if PLAN.shares_model(w.method, int(w.r)) else "",
        threads: JOB_THREADS
        resources:
            gpu=FINETUNE.gpu,
            mem_mb=FINETUNE.mem_mb,
            runtime=FINETUNE.runtime,
        priority: SELECTION_PRIORITY if KEEPS_MODEL else 0
        log:
            f"{ROUND}/logs/evaluate.log",
        benchmark:
            f"{ROUND}/benchmarks/evaluate.tsv"
        conda:
            CONDA_ENV
        shell:
            "asvp --log {log} --threads {threads} evaluate --gpus {resources.gpu} --config-json {params.cfg} "
            "--recipe {params.recipe} {params.decision} --pool {input.pool} --labelled {input.labelled} "
            "--test {input.test} --seed {wildcards.seed} --round {wildcards.r} --cache-dir {params.cache} "
            "{params.share} {params.model_out} --out {output.metrics}"


DELIVERY = f"{RUN}/{{point}}"


rule deliver:
    wildcard_constraints:
        point=r"final|round\d{3}/delivered",
    input:
        unpack(FILES.deliver_inputs),
    output:
        model=f"{DELIVERY}/model.pt",
        torchscript=f"{DELIVERY}/model.torchscript.pt",
        predictions=f"{DELIVERY}/predictions.csv",
        labelled=f"{DELIVERY}/labelled.csv",
        metrics=f"{DELIVERY}/metrics.json",
    params:
        recipe=lambda w: methods.training_recipe(w.method),
        decision=lambda w, input: f"--decision {input.decision}" if "decision" in input.keys() else "",
        cfg=lambda w: params(*plan.finetune_sections(w.method)),
        cache=FINETUNES,
        r=lambda w: FILES.delivered_round(w).r,
        folder=lambda w, output: os.path.dirname(output.model),
    threads: JOB_THREADS
    resources:
        gpu=FINETUNE.gpu,
        mem_mb=FINETUNE.mem_mb,
        runtime=FINETUNE.runtime,
    log:
        f"{DELIVERY}/logs/deliver.log",
    benchmark:
        f"{DELIVERY}/benchmarks/deliver.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} deliver --gpus {resources.gpu} --config-json {params.cfg} "
        "--recipe {params.recipe} {params.decision} --pool {input.pool} --labelled {input.labelled} "
        "--test {input.test} --dataset-json {input.dataset} --seed {wildcards.seed} --round {params.r} "
        "--cache-dir {params.cache} --out-dir {params.folder}"
