# Fine-tune the pre-trained backbone on each round's labelled set: the evaluated model, and for
# standard AL also the next round's selection model. Checkpoints every epoch (resumable).


rule finetune:
    input:
        pool=rules.define_pool.output.pool,
        labelled=ROUND + "/labelled.csv",
    output:
        ROUND + "/model.pt",
    params:
        recipe=train_recipe,
        cfg=lambda w: cfg_json(
            "data", "backbone", "finetune", "device", *(["lpft"] if train_recipe(w) == "lpft" else [])
        ),
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    log:
        ROUND + "/logs/finetune.log",
    benchmark:
        ROUND + "/benchmarks/finetune.tsv"
    shell:
        "{ASVP} --threads {threads} finetune --config-json {params.cfg} --recipe {params.recipe} "
        "--pool {input.pool} --labelled {input.labelled} --seed {wildcards.seed} --out {output} > {log} 2>&1"
