# Manifest (sharded decode check), cleaning, splits, ground truth and masks.


rule manifest_shard:
    input:
        "results/listing.parquet",
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
        manifest=expand("results/manifest/shard_{shard}.parquet", shard=SHARD_IDS),
        rejects=expand("results/manifest/rejects_{shard}.parquet", shard=SHARD_IDS),
    output:
        manifest="results/manifest.parquet",
        rejects="results/rejects.tsv",
    conda:
        ENV_CPU
    log:
        "logs/manifest.log",
    script:
        "../scripts/manifest.py"


rule clean:
    input:
        "results/manifest.parquet",
    output:
        "results/clean.parquet",
    params:
        settings=config["clean"],
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
        "results/split.parquet",
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
        "results/ground_truth.parquet",
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
        "results/masks.parquet",
    params:
        min_class_size=config["masks"]["min_class_size"],
    conda:
        ENV_CPU
    log:
        "logs/masks.log",
    script:
        "../scripts/masks.py"
