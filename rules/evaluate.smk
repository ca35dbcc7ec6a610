# Each round's evaluation: fine-tune the pre-trained backbone on the labelled set (FT or LP-FT;
# ASVP as its decision says) and measure test accuracy. For standard AL the fine-tuned model is
# also the next round's selection model. Fine-tuning checkpoints every epoch (resumable).


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        model=f"{ROUND}/model.pt",
        metrics=f"{ROUND}/metrics.json",
    params:
        recipe=train_recipe,
        decision=lambda w, input: f"--decision {input.decision}" if "decision" in input.keys() else "",
        cfg=lambda w: cfg_json(
            "data", "backbone", "finetune", "evaluation", "device", *(["lpft"] if train_recipe(w) != "ft" else [])
        ),
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    log:
        f"{ROUND}/logs/evaluate.log",
    benchmark:
        f"{ROUND}/benchmarks/evaluate.tsv"
    shell:
        "{ASVP} --threads {threads} evaluate --config-json {params.cfg} --recipe {params.recipe} "
        "{params.decision} --pool {input.pool} --labelled {input.labelled} --test {input.test} "
        "--seed {wildcards.seed} --model-out {output.model} --out {output.metrics} > {log} 2>&1"
