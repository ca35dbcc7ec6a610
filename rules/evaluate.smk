# Test accuracy of each round's fine-tuned model.


rule evaluate:
    input:
        model=ROUND + "/model.pt",
        test=rules.define_pool.output.test,
    output:
        ROUND + "/metrics.json",
    params:
        cfg=cfg_json("data", "evaluation", "device"),
    threads: 2
    log:
        ROUND + "/logs/evaluate.log",
    benchmark:
        ROUND + "/benchmarks/evaluate.tsv"
    shell:
        "{ASVP} --threads {threads} evaluate --config-json {params.cfg} --model {input.model} "
        "--test {input.test} --out {output} > {log} 2>&1"
