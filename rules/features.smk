# Stage 1 of SVPp/ASVP: fix the pool, pre-compute backbone features once.


rule define_pool:
    output:
        pool=f"{RES}/data/pool.csv",
        test=f"{RES}/data/test.csv",
        info=f"{RES}/data/dataset.json",
    params:
        cfg=cfg_json("data"),
    threads: 1
    resources:
        mem_mb=SMALL_MEM_MB,
        runtime=SHORT_MINUTES,
    log:
        f"{RES}/data/logs/define_pool.log",
    benchmark:
        f"{RES}/data/benchmarks/define_pool.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} define-pool --config-json {params.cfg} --pool {output.pool} --test {output.test} "
        "--info {output.info}"


rule extract_pretrained:
    input:
        pool=rules.define_pool.output.pool,
        test=rules.define_pool.output.test,
    output:
        f"{RES}/features/pretrained.h5",
    params:
        cfg=cfg_json("data", "backbone", "features", "device"),
    threads: 2
    resources:
        gpu=FINETUNE_GPUS,
        mem_mb=BIG_MEM_MB,
        runtime=LONG_MINUTES,
    # Every proxy method's chain waits on it: ahead of the selection chains, or standard AL's
    # chains keep both cores busy and the 2-thread extraction starts last (seen in a 7-method run).
    priority: SELECTION_PRIORITY + 1
    log:
        f"{RES}/features/logs/extract_pretrained.log",
    benchmark:
        f"{RES}/features/benchmarks/extract_pretrained.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} --gpus {resources.gpu} extract --config-json {params.cfg} --pool {input.pool} "
        "--test {input.test} --out {output}"
