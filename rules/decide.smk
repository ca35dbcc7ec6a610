# ASVP after every round (paper sec. 5, asvp.steps.decide): decide with PED + LogME whether the
# frozen features have become the bottleneck, then refresh them (fine-tune on the labels so far,
# re-extract pool and test) or pass the previous version through as a link. Both steps exist in
# every round, so the whole plan stays visible in `snakemake -n` (no checkpoints). With the
# simulated oracle, rounds after 0 decide inside their selection job (select_proxy_decide).


rule decide:
    wildcard_constraints:
        method=one_of(DECIDING),
        r=r"\d{3}" if HUMAN_ORACLE else "000",
    input:
        unpack(FILES.decide_inputs),
    output:
        f"{ROUND}/decision.json",
    params:
        cfg=params("decision"),
        previous=lambda w, input: f"--previous {input.previous}" if "previous" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=PROXY.mem_mb,
        runtime=SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/decide.log",
    benchmark:
        f"{ROUND}/benchmarks/decide.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} decide --config-json {params.cfg} --method {wildcards.method} "
        "--features {input.features} --labelled {input.labelled} {params.previous} --seed {wildcards.seed} "
        "--round {wildcards.r} --out {output}"


rule refresh_features:
    wildcard_constraints:
        method=one_of(DECIDING),
    input:
        decision=f"{ROUND}/decision.json",
        labelled=f"{ROUND}/labelled.csv",
        previous=FILES.features_in_use,
        pool=FILES.pool,
        test=FILES.test,
    output:
        f"{ROUND}/features.h5",
    params:
        cfg=params("data", "backbone", "features", "finetune", "evaluation", "device"),
        cache=FINETUNES,
        # A refresh at a delivery point is the model delivered: keep it in the cache for deliver.
        share=lambda w: "--share-model" if PLAN.shares_model(w.method, int(w.r)) else "",
    threads: JOB_THREADS
    resources:
        # Re-evaluated once decision.json exists: a pass-through round asks for no GPU.
        gpu=lambda w, input: FINETUNE.gpu if FILES.refresh_requested(input) else 0,
        mem_mb=lambda w, input: FINETUNE.mem_mb if FILES.refresh_requested(input) else SMALL.mem_mb,
        runtime=lambda w, input: FINETUNE.runtime if FILES.refresh_requested(input) else SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/refresh_features.log",
    benchmark:
        f"{ROUND}/benchmarks/refresh_features.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} refresh-features --gpus {resources.gpu} --config-json {params.cfg} "
        "--decision {input.decision} --pool {input.pool} --test {input.test} --labelled {input.labelled} "
        "--previous-features {input.previous} --seed {wildcards.seed} --round {wildcards.r} "
        "--cache-dir {params.cache} {params.share} --out {output}"
