# Each round's evaluation: fine-tune the pre-trained backbone on the labelled set (FT or LP-FT;
# ASVP as its decision says) and measure test accuracy. For standard AL the fine-tuned model is
# also the next round's selection model. Fine-tuning checkpoints every epoch (resumable).


def evaluate_inputs(wildcards):
    inputs = {
        "pool": rules.define_pool.output.pool,
        "test": rules.define_pool.output.test,
        "labelled": round_file(wildcards, "labelled.csv"),
    }
    if wildcards.method == "asvp":
        inputs["decision"] = round_file(wildcards, "decision.json")  # LP-FT or FT, decided per round
    return inputs


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        model=ROUND + "/model.pt",
        metrics=ROUND + "/metrics.json",
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
        ROUND + "/logs/evaluate.log",
    benchmark:
        ROUND + "/benchmarks/evaluate.tsv"
    shell:
        "{ASVP} --threads {threads} evaluate --config-json {params.cfg} --recipe {params.recipe} "
        "{params.decision} --pool {input.pool} --labelled {input.labelled} --test {input.test} "
        "--seed {wildcards.seed} --model-out {output.model} --out {output.metrics} > {log} 2>&1"
