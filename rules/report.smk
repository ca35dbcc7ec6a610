# One table for the whole experiment: accuracy and stage timings per round.


rule summarize:
    input:
        all_metrics(),
    output:
        f"{RES}/summary.csv",
    log:
        f"{RES}/logs/summarize.log",
    shell:
        "{ASVP} summarize --experiment-dir {RES} --metrics {input} --out {output} > {log} 2>&1"
