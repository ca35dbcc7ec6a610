# Stage 1 of SVPp/ASVP: fix the pool, pre-compute backbone features once (asvp.steps.features).

from asvp.data.unlabelled import UNLABELLED, listing_fingerprint  # noqa: E402


rule define_pool:
    output:
        pool=FILES.pool,
        test=FILES.test,
        info=FILES.dataset,
    params:
        cfg=params("data"),
        # Your own images: the folder's listing, so that images added to it rerun define_pool.
        **({"listing": listing_fingerprint(config["data"])} if config["data"]["dataset"] == UNLABELLED else {}),
    threads: 1
    resources:
        mem_mb=SMALL.mem_mb,
        runtime=SMALL.runtime,
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
        pool=FILES.pool,
        test=FILES.test,
    output:
        FILES.pretrained,
    params:
        cfg=params("data", "backbone", "features", "device"),
    threads: 2
    resources:
        gpu=FINETUNE.gpu,
        mem_mb=FINETUNE.mem_mb,
        runtime=FINETUNE.runtime,
    # Every proxy method's chain waits on it: run it before the selection chains.
    priority: SELECTION_PRIORITY + 1
    log:
        f"{RES}/features/logs/extract_pretrained.log",
    benchmark:
        f"{RES}/features/benchmarks/extract_pretrained.tsv"
    conda:
        CONDA_ENV
    shell:
        "asvp --log {log} --threads {threads} extract --gpus {resources.gpu} --config-json {params.cfg} "
        "--pool {input.pool} --test {input.test} --out {output}"
