# ASVP after every round (paper sec. 5, Figure 10): decide with PED + LogME whether the frozen
# features have become the bottleneck, then either refresh them (fine-tune on the labels so far,
# re-extract pool and test) or pass the previous version through as a link. Both rules exist in
# every round, so the whole plan stays visible in `snakemake -n` (no checkpoints). With the
# simulated oracle, rounds after 0 decide inside their selection job (select_proxy_decide).


rule decide:
    wildcard_constraints:
        method="|".join(ASVP_METHODS),
        r="000" if FUSED_ROUND else r"\d{3}",
    input:
        unpack(decide_inputs),
    output:
        f"{ROUND}/decision.json",
    params:
        cfg=decision_cfg,
        previous=lambda w, input: f"--previous {input.previous}" if "previous" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=PROXY_MEM_MB,
        runtime=SHORT_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/decide.log",
    benchmark:
        f"{ROUND}/benchmarks/decide.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} decide --config-json {params.cfg} --features {input.features} "
        "--labelled {input.labelled} {params.previous} --seed {wildcards.seed} --round {wildcards.r} "
        "--out {output}"


rule refresh_features:
    wildcard_constraints:
        method="|".join(ASVP_METHODS),
    input:
        decision=f"{ROUND}/decision.json",
        labelled=f"{ROUND}/labelled.csv",
        previous=current_features,
        pool=rules.define_pool.output.pool,
        test=rules.define_pool.output.test,
    output:
        f"{ROUND}/features.h5",
    params:
        cfg=cfg_json("data", "backbone", "features", "finetune", "evaluation", "device"),
        cache=FINETUNES,
    threads: JOB_THREADS
    resources:
        # Re-evaluated once decision.json exists: a pass-through round asks for no GPU.
        gpu=lambda w, input: FINETUNE_GPUS if refresh_requested(input) else 0,
        mem_mb=lambda w, input: BIG_MEM_MB if refresh_requested(input) else SMALL_MEM_MB,
        runtime=lambda w, input: LONG_MINUTES if refresh_requested(input) else SHORT_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/refresh_features.log",
    benchmark:
        f"{ROUND}/benchmarks/refresh_features.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} --gpus {resources.gpu} refresh-features --config-json {params.cfg} --decision {input.decision} "
        "--pool {input.pool} --test {input.test} --labelled {input.labelled} "
        "--previous-features {input.previous} --seed {wildcards.seed} --round {wildcards.r} "
        "--cache-dir {params.cache} --out {output}"
