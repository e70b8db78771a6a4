# Metrics and poses per (model, search), gathered into one table each.


rule evaluate:
    input:
        neighbours="results/search/{model}/{search}/neighbours.parquet",
        truth="results/ground_truth.parquet",
        split="results/split.parquet",
    output:
        "results/eval/{model}/{search}/recall.tsv",
    params:
        recall_at=config["evaluate"]["recall_at"],
    conda:
        ENV_CPU
    log:
        "logs/evaluate/{model}/{search}.log",
    script:
        "../scripts/evaluate.py"


rule pose:
    input:
        neighbours="results/search/{model}/{search}/neighbours.parquet",
        manifest="results/manifest.parquet",
    output:
        "results/poses/{model}/{search}.csv",
    conda:
        ENV_CPU
    log:
        "logs/pose/{model}/{search}.log",
    script:
        "../scripts/pose.py"


rule recall_table:
    input:
        expand("results/eval/{model}/{search}/recall.tsv", model=MODELS, search=SEARCHES),
    output:
        "results/recall.tsv",
    conda:
        ENV_CPU
    log:
        "logs/recall_table.log",
    script:
        "../scripts/concatenate.py"


rule poses_table:
    input:
        expand("results/poses/{model}/{search}.csv", model=MODELS, search=SEARCHES),
    output:
        "results/poses.csv",
    conda:
        ENV_CPU
    log:
        "logs/poses_table.log",
    script:
        "../scripts/concatenate.py"
