# The MLP proxy of SVPp/ASVP, trained each round on the labelled samples' pre-computed features.


def proxy_features(wildcards, r):
    """Features the proxy reads after round r: SVPp's never change, ASVP's follow its decisions."""
    if wildcards.method == "asvp":
        return round_file(wildcards, "features.h5", r)
    return rules.extract_pretrained.output[0]


rule train_proxy:
    wildcard_constraints:
        method="|".join(PROXY_METHODS),
        r=r"(?!000)\d{3}",
    input:
        features=lambda w: proxy_features(w, prev_round(w)),
        labelled=lambda w: round_file(w, "labelled.csv", prev_round(w)),
    output:
        ROUND + "/proxy.pt",
    params:
        cfg=cfg_json("proxy"),
    threads: 2
    log:
        ROUND + "/logs/train_proxy.log",
    benchmark:
        ROUND + "/benchmarks/train_proxy.tsv"
    shell:
        "{ASVP} --threads {threads} train-proxy --config-json {params.cfg} --features {input.features} "
        "--labelled {input.labelled} --seed {wildcards.seed} --round {wildcards.r} --out {output} > {log} 2>&1"
