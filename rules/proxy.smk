# The MLP proxy of SVPp/ASVP, trained each round on the labelled samples' pre-computed features.


rule train_proxy:
    wildcard_constraints:
        method="|".join(PROXY_METHODS),
        r=r"(?!000)\d{3}",
    input:
        features=lambda w: proxy_features(w, prev_round(w)),
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        proxy=f"{ROUND}/proxy.pt",
        weights=f"{ROUND}/proxy.npz",  # the same weights as arrays: the scoring job needs no torch
    params:
        # data and backbone: the features file's attributes are checked against them.
        cfg=cfg_json("proxy", "data", "backbone"),
    threads: JOB_THREADS
    resources:
        mem_mb=PROXY_MEM_MB,
        runtime=PROXY_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/train_proxy.log",
    benchmark:
        f"{ROUND}/benchmarks/train_proxy.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} train-proxy --config-json {params.cfg} --features {input.features} "
        "--labelled {input.labelled} --seed {wildcards.seed} --round {wildcards.r} --out {output.proxy} "
        "--weights-out {output.weights}"
