# Each round's query: round 0 is a seeded random draw (ActiveFT on the pre-trained features for
# the activeft strategy); later rounds score the pool with the method's selection model;
# `label` asks the (simulated) oracle and grows the labelled set. ActiveFT(pre) selects every
# evaluation point afresh on the pre-trained features.

# A later round of a proxy or standard method with the activeft strategy matches both its own
# rule and select_pretrained: its own rule wins (select_pretrained is for round 0 and ActiveFT(pre)).
ruleorder: select_proxy > select_pretrained
ruleorder: select_standard > select_pretrained


rule select_initial:
    wildcard_constraints:
        strategy=r"(?!activeft)[a-z_]+",
    input:
        pool=rules.define_pool.output.pool,
    output:
        f"{RUN}/round000/selected.csv",
    params:
        budget=BUDGETS[0],
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        f"{RUN}/round000/logs/select_initial.log",
    benchmark:
        f"{RUN}/round000/benchmarks/select_initial.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} select-initial --pool {input.pool} --budget {params.budget} --seed {wildcards.seed} "
        "--out {output}"


rule select_pretrained:
    wildcard_constraints:
        strategy="activeft",
    input:
        pool=rules.define_pool.output.pool,
        features=rules.extract_pretrained.output[0],
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
    params:
        budget=lambda w: cumulative_labels(BUDGETS)[int(w.r)],
        cfg=select_cfg(),
    threads: JOB_THREADS
    resources:
        gpu=GPUS,
        mem_mb=BIG_MEM_MB,
        runtime=LONG_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/select.log",
    benchmark:
        f"{ROUND}/benchmarks/select.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} select-single-shot --budget {params.budget} --seed {wildcards.seed} "
        "--round {wildcards.r} --pool {input.pool} --features {input.features} --config-json {params.cfg} "
        "--selected-out {output.selected} --scores-out {output.scores}"


rule select_proxy:
    wildcard_constraints:
        method="|".join(PROXY_METHODS),
        r=r"(?!000)\d{3}",
    input:
        pool=rules.define_pool.output.pool,
        features=lambda w: proxy_features(w, prev_round(w)),
        weights=f"{ROUND}/proxy.npz",
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
    params:
        budget=lambda w: BUDGETS[int(w.r)],
        cfg=select_cfg("proxy"),
    threads: JOB_THREADS
    resources:
        mem_mb=PROXY_MEM_MB,
        runtime=PROXY_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/select.log",
    benchmark:
        f"{ROUND}/benchmarks/select.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} select --strategy {wildcards.strategy} --budget {params.budget} "
        "--seed {wildcards.seed} --round {wildcards.r} --pool {input.pool} --labelled {input.labelled} "
        "--features {input.features} --proxy-weights {input.weights} --config-json {params.cfg} "
        "--selected-out {output.selected} --scores-out {output.scores}"


rule select_standard:
    wildcard_constraints:
        method="|".join(STANDARD_METHODS),
        r=r"(?!000)\d{3}",
    input:
        pool=rules.define_pool.output.pool,
        model=lambda w: round_file(w, "model.pt", prev_round(w)),
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
    params:
        budget=lambda w: BUDGETS[int(w.r)],
        cfg=select_cfg("data", "evaluation", "device"),
    threads: JOB_THREADS
    resources:
        gpu=GPUS,
        mem_mb=BIG_MEM_MB,
        runtime=LONG_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/select.log",
    benchmark:
        f"{ROUND}/benchmarks/select.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} select --strategy {wildcards.strategy} --budget {params.budget} "
        "--seed {wildcards.seed} --round {wildcards.r} --pool {input.pool} --labelled {input.labelled} "
        "--model {input.model} --config-json {params.cfg} "
        "--selected-out {output.selected} --scores-out {output.scores}"


rule select_random:
    wildcard_constraints:
        method="random",
        r=r"(?!000)\d{3}",
    input:
        pool=rules.define_pool.output.pool,
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
    params:
        budget=lambda w: BUDGETS[int(w.r)],
    priority: SELECTION_PRIORITY
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        f"{ROUND}/logs/select.log",
    benchmark:
        f"{ROUND}/benchmarks/select.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} select --strategy random --budget {params.budget} --seed {wildcards.seed} "
        "--round {wildcards.r} --pool {input.pool} --labelled {input.labelled} "
        "--selected-out {output.selected} --scores-out {output.scores}"


rule request_labels:
    # Human oracle only: what a person must label this round; the run stops here until answered.
    input:
        unpack(request_inputs),
    output:
        request=f"{ROUND}/to_label.csv",
        sheet=f"{ROUND}/to_label.png",
    params:
        cfg=cfg_json("data"),
        proxy=lambda w, input: f"--proxy-weights {input.weights} --features {input.features}" if "weights" in input.keys() else "",
    priority: SELECTION_PRIORITY
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        f"{ROUND}/logs/request_labels.log",
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} request-labels --config-json {params.cfg} --selected {input.selected} --pool {input.pool} "
        "--dataset-json {input.dataset} {params.proxy} --out {output.request} --sheet {output.sheet}"


rule label:
    input:
        unpack(label_inputs),
    output:
        f"{ROUND}/labelled.csv",
    params:
        flags=label_flags,
    priority: SELECTION_PRIORITY
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        f"{ROUND}/logs/label.log",
    benchmark:
        f"{ROUND}/benchmarks/label.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} label --selected {input.selected} --pool {input.pool} --dataset-json {input.dataset} {params.flags} "
        "--round {wildcards.r} --out {output}"
