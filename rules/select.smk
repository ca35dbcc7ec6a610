# Each round's queries (asvp.steps.select): round 0 is a seeded random draw, a pick on the
# pre-trained features (schedule.cold_start, or the strategy's own: ActiveFT), or given
# (data.initial_labels); later rounds score the pool with the method's selection model
# (asvp.methods: proxy, fine-tuned network, or none); ActiveFT(pre) selects each evaluation
# point afresh. With the simulated oracle the selection job also labels
# its batch (and for ASVP decides, rules/decide.smk), so a round is one job; with people,
# request_labels and label are jobs of their own and the run waits for their answers.


LATER = r"(?!000)\d{3}"  # the rounds after round 0


GIVEN_ROUND0 = plan.initial_labels(config)  # data.initial_labels: round 0 is given, not selected


rule select_initial:
    # Round 0 of every strategy that starts from a seeded random draw (schedule.cold_start random
    # and no cold start of its own).
    wildcard_constraints:
        method=one_of(plan.round0_methods(config)),
        strategy=one_of([name for name in STRATEGIES if plan.round0_picker(config, name) is None]),
    input:
        **FILES.pool_files(),
    output:
        selected=f"{RUN}/round000/selected.csv",
        scores=f"{RUN}/round000/scores.npy",
        **FILES.labelled_outputs(f"{RUN}/round000"),
    params:
        budget=BUDGETS[0],
        label=FILES.label_step,
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        **FILES.selection_logs(f"{RUN}/round000", "select_initial"),
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log.job} --timing {log.timing} select-initial --strategy {wildcards.strategy} "
        "--budget {params.budget} --seed {wildcards.seed} --round 0 --pool {input.pool} --selected-out {output.selected} "
        "--scores-out {output.scores}{params.label}"


# Round 0 from labels you already have (data.initial_labels), for every method: no selection, no
# oracle. With people labelling, `label` could make round 0's labelled.csv too: this rule wins.
rule initial_labels:
    wildcard_constraints:
        method=one_of(config["methods"] if GIVEN_ROUND0 else ()),
    input:
        **FILES.pool_files(),
        labels=config["data"]["initial_labels"] or [],
    output:
        selected=f"{RUN}/round000/selected.csv",
        scores=f"{RUN}/round000/scores.npy",
        labelled=f"{RUN}/round000/labelled.csv",
    params:
        cfg=params("data"),
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        **FILES.selection_logs(f"{RUN}/round000", "initial_labels"),
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log.job} --timing {log.timing} initial-labels --config-json {params.cfg} --labels {input.labels:q} "
        "--pool {input.pool} --dataset-json {input.dataset} --selected-out {output.selected} "
        "--scores-out {output.scores} --labelled-out {output.labelled}"


# A selection without labels on the pre-trained features: ActiveFT(pre)'s every evaluation point
# (select_single_shot), and round 0 picked on them (select_cold_start): schedule.cold_start, or a
# strategy's own cold start (ActiveFT). One definition, two rules: which rounds each serves
# depends on two wildcards at once, which a wildcard constraint cannot say.
for COLD_START in (False, True):

    rule:
        name:
            "select_cold_start" if COLD_START else "select_single_shot"
        wildcard_constraints:
            method=one_of(plan.round0_methods(config) if COLD_START else SINGLE_SHOT),
            strategy=(one_of([name for name in STRATEGIES if plan.round0_picker(config, name) is not None])
                      if COLD_START else r"[a-z_]+"),
            r="000" if COLD_START else (LATER if GIVEN_ROUND0 else r"\d{3}"),
        input:
            **FILES.pool_files(),
            features=FILES.pretrained,
        output:
            selected=f"{ROUND}/selected.csv",
            scores=f"{ROUND}/scores.npy",
            **FILES.labelled_outputs(ROUND),
        params:
            budget=lambda w: PLAN.labels_after[int(w.r)],
            # Round 0's pick: its picker's options (asvp.plan.round0_params_json).
            cfg=(lambda w: plan.round0_params_json(config, w.strategy)) if COLD_START else (
                lambda w: plan.params_json(config, strategy=w.strategy)),
            label=FILES.label_step,
        threads: JOB_THREADS
        resources:
            gpu=HEAVY.gpu,
            mem_mb=HEAVY.mem_mb,
            runtime=HEAVY.runtime,
        priority: SELECTION_PRIORITY
        log:
            **FILES.selection_logs(ROUND),
        conda:
            CONDA_ENV
        shell:
            "asvp --log {log.job} --timing {log.timing} --threads {threads} select-single-shot "
            "--strategy {wildcards.strategy} --budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} "
            "--pool {input.pool} --selected-out {output.selected} --scores-out {output.scores} "
            "--features {input.features} --config-json {params.cfg}{params.label}"


rule select_random:
    wildcard_constraints:
        method=one_of(methods.names(lambda m: m.selection == "random")),
        r=LATER,
    input:
        **FILES.pool_files(),
        labelled=FILES.previous_labels,
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
        **FILES.labelled_outputs(ROUND),
    params:
        budget=lambda w: PLAN.budgets_of(w.method)[int(w.r)],
        label=FILES.label_step,
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        **FILES.selection_logs(ROUND),
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log.job} --timing {log.timing} select-random "
        "--strategy {wildcards.strategy} --budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} "
        "--pool {input.pool} --selected-out {output.selected} --scores-out {output.scores} "
        "--labelled {input.labelled}{params.label}"


# A proxy method's round: train the MLP proxy on the labelled samples' features (as they were
# after the last round), score the pool with it, label; a method that decides then runs its
# refresh decision on the new labels in the same job (rules/decide.smk has the rest). One
# definition, two rules: a rule's outputs cannot depend on its wildcards, and only the deciding
# methods write decision.json.
for DECIDES in (False, True):

    rule:
        name:
            "select_proxy_decide" if DECIDES else "select_proxy"
        wildcard_constraints:
            method=one_of(plan.proxy_round_methods(DECIDES, HUMAN_ORACLE)),
            r=LATER,
        input:
            **FILES.pool_files(),
            features=FILES.features_in_use,
            labelled=FILES.previous_labels,
            **({"previous_decision": FILES.previous_decision} if DECIDES else {}),
        output:
            selected=f"{ROUND}/selected.csv",
            scores=f"{ROUND}/scores.npy",
            weights=f"{ROUND}/proxy.npz",
            **FILES.labelled_outputs(ROUND),
            **({"decision": f"{ROUND}/decision.json"} if DECIDES else {}),
        params:
            budget=lambda w: BUDGETS[int(w.r)],
            # data and backbone: the features file's attributes are checked against them.
            proxy_cfg=params("proxy", "data", "backbone"),
            cfg=lambda w: plan.params_json(config, strategy=w.strategy),
            label=FILES.label_step,
            decide=FILES.decide_step if DECIDES else "",
        threads: JOB_THREADS
        resources:
            mem_mb=PROXY.mem_mb,
            runtime=PROXY.runtime,
        priority: SELECTION_PRIORITY
        log:
            **FILES.selection_logs(ROUND),
        conda:
            CONDA_ENV
        shell:
            "asvp --log {log.job} --timing {log.timing} --threads {threads} train-proxy --config-json {params.proxy_cfg} "
            "--features {input.features} --labelled {input.labelled} --seed {wildcards.seed} --round {wildcards.r} "
            "--weights-out {output.weights}"
            " && asvp --log {log.job} --timing {log.timing} --same-job --threads {threads} select-proxy "
            "--strategy {wildcards.strategy} --budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} "
            "--pool {input.pool} --selected-out {output.selected} --scores-out {output.scores} "
            "--labelled {input.labelled} --features {input.features} --proxy-weights {output.weights} "
            "--config-json {params.cfg}{params.label}{params.decide}"


rule select_model:
    # Standard AL: select with the network fine-tuned on the previous round's labels.
    wildcard_constraints:
        method=one_of(methods.names(lambda m: m.selection == "model")),
        r=LATER,
    input:
        **FILES.pool_files(),
        model=FILES.previous_model,
        labelled=FILES.previous_labels,
    output:
        selected=f"{ROUND}/selected.csv",
        scores=f"{ROUND}/scores.npy",
        **FILES.labelled_outputs(ROUND),
    params:
        budget=lambda w: BUDGETS[int(w.r)],
        cfg=lambda w: plan.params_json(config, "data", "evaluation", "device", strategy=w.strategy),
        label=FILES.label_step,
    threads: JOB_THREADS
    resources:
        gpu=HEAVY.gpu,
        mem_mb=HEAVY.mem_mb,
        runtime=HEAVY.runtime,
    priority: SELECTION_PRIORITY
    log:
        **FILES.selection_logs(ROUND),
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log.job} --timing {log.timing} --threads {threads} select-model "
        "--strategy {wildcards.strategy} --budget {params.budget} --seed {wildcards.seed} --round {wildcards.r} "
        "--pool {input.pool} --selected-out {output.selected} --scores-out {output.scores} "
        "--labelled {input.labelled} --model {input.model} --config-json {params.cfg}{params.label}"


rule request_labels:
    # People label: what a person must label this round (also as Label Studio import files; with
    # oracle: label_studio, sent to the server); the run stops here until answered.
    input:
        unpack(FILES.request_inputs),
    output:
        request=f"{ROUND}/to_label.csv",
        sheet=f"{ROUND}/to_label.png",
        label_studio_tasks=f"{ROUND}/label_studio_tasks.json",
        label_studio_config=f"{ROUND}/label_studio_config.xml",
    params:
        cfg=params("data", "oracle", "label_studio"),
        proxy=lambda w, input: f"--proxy-weights {input.weights} --features {input.features}" if "weights" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/request_labels.log",
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} request-labels --config-json {params.cfg} --selected {input.selected} --pool {input.pool} "
        "--dataset-json {input.dataset} {params.proxy} --out {output.request} --sheet {output.sheet}"


rule label:
    # People label (oracle: human or label_studio): their answers (a CSV file, a Label Studio
    # export, pulled at planning in live mode, or folders) become the round's labels. With the
    # simulated oracle the selection job labels, and this rule matches no method.
    wildcard_constraints:
        method=one_of(config["methods"] if HUMAN_ORACLE else ()),
        r=LATER if GIVEN_ROUND0 else r"\d{3}",  # given labels are round 0 (initial_labels)
    input:
        unpack(FILES.label_inputs),
    output:
        f"{ROUND}/labelled.csv",
    params:
        previous=lambda w, input: f"--previous {input.previous}" if "previous" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
    priority: SELECTION_PRIORITY
    log:
        f"{ROUND}/logs/label.log",
    benchmark:
        f"{ROUND}/benchmarks/label.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} label --selected {input.selected} --pool {input.pool} --dataset-json {input.dataset} "
        "{params.previous} --answers {input.answers:q} --request {input.request} --round {wildcards.r} --out {output}"
