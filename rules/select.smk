# Each round's query: round 0 is a seeded random draw (ActiveFT on the pre-trained features for
# the activeft strategy); later rounds score the pool with the method's selection model (proxy
# methods train it in the same job); then the (simulated) oracle labels the batch and the
# labelled set grows. With the simulated oracle that labelling, and for ASVP after round 0 the
# decision (rules/decide.smk), run in the selection job itself (FUSED_ROUND, rules/common.smk);
# with people, `request_labels` and `label` are jobs of their own. ActiveFT(pre) selects every
# evaluation point afresh on the pre-trained features.

# A later round of a proxy or standard method with the activeft strategy matches both its own
# rule and select_pretrained: its own rule wins (select_pretrained is for round 0 and ActiveFT(pre)).
ruleorder: select_proxy > select_pretrained
ruleorder: select_standard > select_pretrained
if FUSED_ROUND:

    ruleorder: select_proxy_decide > select_pretrained


rule select_initial:
    wildcard_constraints:
        strategy=r"(?!activeft)[a-z_]+",
    input:
        pool=rules.define_pool.output.pool,
        dataset=rules.define_pool.output.info,
    output:
        selected=f"{RUN}/round000/selected.csv",
        **fused_outputs(f"{RUN}/round000"),
    params:
        budget=BUDGETS[0],
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        **selection_logs(f"{RUN}/round000", "select_initial"),
    conda:
        CONDA_ENV
    shell:
        job_steps(
            "asvp --log {log.job} --timing {log.timing} select-initial --pool {input.pool} --budget {params.budget} "
            "--seed {wildcards.seed} --out {output.selected}",
            label_step(previous=False, round_field="0"),
        )


rule select_pretrained:
    wildcard_constraints:
        strategy="activeft",
    input:
        pool=rules.define_pool.output.pool,
        features=rules.extract_pretrained.output[0],
        dataset=rules.define_pool.output.info,
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
        **fused_outputs(ROUND),
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
        **selection_logs(ROUND),
    conda:
        CONDA_ENV
    shell:
        job_steps(
            "asvp --log {log.job} --timing {log.timing} --threads {threads} select-single-shot "
            "--budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} --pool {input.pool} "
            "--features {input.features} --config-json {params.cfg} "
            "--selected-out {output.selected} --scores-out {output.scores}",
            label_step(previous=False),
        )


rule select_proxy:
    wildcard_constraints:
        # ASVP's rounds after 0 decide in the same job (select_proxy_decide) unless people label.
        method="|".join(("svpp",) if FUSED_ROUND else PROXY_METHODS),
        r=r"(?!000)\d{3}",
    input:
        pool=rules.define_pool.output.pool,
        dataset=rules.define_pool.output.info,
        features=lambda w: proxy_features(w, prev_round(w)),
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
        proxy=f"{ROUND}/proxy.pt",
        weights=f"{ROUND}/proxy.npz",  # the same weights as arrays: the scoring step needs no torch
        **fused_outputs(ROUND),
    params:
        budget=lambda w: BUDGETS[int(w.r)],
        # data and backbone: the features file's attributes are checked against them.
        proxy_cfg=cfg_json("proxy", "data", "backbone"),
        cfg=select_cfg("proxy"),
    threads: JOB_THREADS
    resources:
        mem_mb=PROXY_MEM_MB,
        runtime=PROXY_MINUTES,
    priority: SELECTION_PRIORITY
    log:
        **selection_logs(ROUND),
    conda:
        CONDA_ENV
    shell:
        job_steps(TRAIN_PROXY_STEP, SELECT_WITH_PROXY_STEP, label_step(previous=True))


if FUSED_ROUND:

    rule select_proxy_decide:
        # ASVP's round r > 0 with the simulated oracle: select_proxy, label, then decide with PED +
        # LogME whether the features have become the bottleneck (rules/decide.smk has round 0's
        # decision and the refresh that acts on it). Written out, not `use rule select_proxy`:
        # `use rule ... with:` cannot change the shell command.
        wildcard_constraints:
            method="|".join(ASVP_METHODS),
            r=r"(?!000)\d{3}",
        input:
            pool=rules.define_pool.output.pool,
            dataset=rules.define_pool.output.info,
            features=lambda w: proxy_features(w, prev_round(w)),
            labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
            previous_decision=lambda w: round_file(w, "decision.json", prev_round(w)),
        output:
            selected=f"{ROUND}/selected.csv",
            scores=f"{ROUND}/scores.npy",
            proxy=f"{ROUND}/proxy.pt",
            weights=f"{ROUND}/proxy.npz",
            **fused_outputs(ROUND, decide=True),
        params:
            budget=lambda w: BUDGETS[int(w.r)],
            proxy_cfg=cfg_json("proxy", "data", "backbone"),
            cfg=select_cfg("proxy"),
            decision_cfg=decision_cfg,
        threads: JOB_THREADS
        resources:
            mem_mb=PROXY_MEM_MB,
            runtime=PROXY_MINUTES,
        priority: SELECTION_PRIORITY
        log:
            **selection_logs(ROUND),
        conda:
            CONDA_ENV
        shell:
            job_steps(TRAIN_PROXY_STEP, SELECT_WITH_PROXY_STEP, label_step(previous=True), DECIDE_STEP)


rule select_standard:
    wildcard_constraints:
        method="|".join(STANDARD_METHODS),
        r=r"(?!000)\d{3}",
    input:
        pool=rules.define_pool.output.pool,
        dataset=rules.define_pool.output.info,
        model=lambda w: round_file(w, "model.pt", prev_round(w)),
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
        **fused_outputs(ROUND),
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
        **selection_logs(ROUND),
    conda:
        CONDA_ENV
    shell:
        job_steps(
            "asvp --log {log.job} --timing {log.timing} --threads {threads} select --strategy {wildcards.strategy} "
            "--budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} --pool {input.pool} "
            "--labelled {input.labelled} --model {input.model} --config-json {params.cfg} "
            "--selected-out {output.selected} --scores-out {output.scores}",
            label_step(previous=True),
        )


rule select_random:
    wildcard_constraints:
        method="random",
        r=r"(?!000)\d{3}",
    input:
        pool=rules.define_pool.output.pool,
        dataset=rules.define_pool.output.info,
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
        **fused_outputs(ROUND),
    params:
        budget=lambda w: BUDGETS[int(w.r)],
    priority: SELECTION_PRIORITY
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        **selection_logs(ROUND),
    conda:
        CONDA_ENV
    shell:
        job_steps(
            "asvp --log {log.job} --timing {log.timing} select --strategy random --budget {params.budget} "
            "--seed {wildcards.seed} --round {wildcards.r} --pool {input.pool} --labelled {input.labelled} "
            "--selected-out {output.selected} --scores-out {output.scores}",
            label_step(previous=True),
        )


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


if HUMAN_ORACLE:

    localrules:
        label,

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
