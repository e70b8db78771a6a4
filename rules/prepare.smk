# Manifest (sharded decode check), cleaning, splits, ground truth and masks.


rule manifest_shard:
    input:
        listing="results/listing.parquet",
    output:
        manifest=temp("results/manifest/shard_{shard}.parquet"),
        rejects=temp("results/manifest/rejects_{shard}.parquet"),
    params:
        shard=shard_number,
        shards=N_SHARDS,
        root=DATA_ROOT,
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV_CPU
    log:
        "logs/manifest/shard_{shard}.log",
    benchmark:
        "results/benchmarks/manifest/shard_{shard}.tsv"
    script:
        "../scripts/manifest_shard.py"


rule manifest:
    input:
        manifest_shards=expand("results/manifest/shard_{shard}.parquet", shard=SHARD_IDS),
        reject_shards=expand("results/manifest/rejects_{shard}.parquet", shard=SHARD_IDS),
    output:
        manifest="results/manifest.parquet",
        rejects="results/rejects.tsv",
    conda:
        ENV_CPU
    log:
        "logs/manifest.log",
    script:
        "../scripts/manifest.py"


rule clean_method:
    output:
        method="results/clean/method.json",
    params:
        settings=scoring_settings(config["clean"]),
    localrule: True  # fetches CLIP weights once, where there is network (the submit host)
    conda:
        ENV_TORCH
    log:
        "logs/clean/method.log",
    script:
        "../scripts/clean_method.py"


rule clean_score:
    input:
        manifest="results/manifest.parquet",
        method="results/clean/method.json",
    output:
        scores="results/clean/scores_{shard}.parquet",
    params:
        settings=scoring_settings(config["clean"]),
        shard=shard_number,
        root=DATA_ROOT,
        batch_size=config["compute"]["batch_size"],
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU_PER_JOB if CLEAN_METHODS.get(config["clean"]["method"]).uses_clip else 0,
    conda:
        ENV_TORCH
    log:
        "logs/clean/scores_{shard}.log",
    benchmark:
        "results/benchmarks/clean/scores_{shard}.tsv"
    script:
        "../scripts/clean_score.py"


rule clean:
    input:
        manifest="results/manifest.parquet",
        scores=expand("results/clean/scores_{shard}.parquet", shard=SHARD_IDS),
    output:
        clean_table="results/clean.parquet",
        sheet=report("results/clean/dropped.png", category="Cleaning", caption="../report/clean.rst"),
        report=report("results/clean.tsv", category="Cleaning", caption="../report/clean.rst"),
    params:
        settings=config["clean"],
        root=DATA_ROOT,
    conda:
        ENV_CPU
    log:
        "logs/clean.log",
    script:
        "../scripts/clean.py"


rule split:
    input:
        manifest="results/manifest.parquet",
        clean="results/clean.parquet",
    output:
        split_table="results/split.parquet",
    params:
        settings=config["split"],
        cell_m=config["split"]["cell_m"] or 4 * config["ground_truth"]["radius_m"],
    conda:
        ENV_CPU
    log:
        "logs/split.log",
    script:
        "../scripts/split.py"


rule ground_truth:
    input:
        manifest="results/manifest.parquet",
        split="results/split.parquet",
        listed="results/listed_truth.parquet",
    output:
        truth="results/ground_truth.parquet",
    params:
        method=config["ground_truth"]["method"],
        radius_m=config["ground_truth"]["radius_m"],
    conda:
        ENV_CPU
    log:
        "logs/ground_truth.log",
    script:
        "../scripts/ground_truth.py"


rule masks:
    input:
        manifest="results/manifest.parquet",
        split="results/split.parquet",
    output:
        mask_table="results/masks.parquet",
    params:
        min_class_size=config["masks"]["min_class_size"],
    conda:
        ENV_CPU
    log:
        "logs/masks.log",
    script:
        "../scripts/masks.py"
