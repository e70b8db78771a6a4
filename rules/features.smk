# Descriptor extraction per model and shard, stacked into one matrix per model; local features
# (sift, delf) stay per shard, read back by re-ranking.


rule extract:
    input:
        manifest="results/manifest.parquet",
        clean="results/clean.parquet",
        trained=trained_model,
        split=query_roles,
    output:
        features=temp("results/features/{model}/shard_{shard}.parquet"),
    params:
        settings=model_settings,
        shard=shard_number,
        root=DATA_ROOT,
        batch_size=config["compute"]["batch_size"],
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU_PER_JOB,
    conda:
        ENV_TORCH
    log:
        "logs/extract/{model}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/extract/{model}/shard_{shard}.tsv"
    script:
        "../scripts/extract.py"


rule extract_local:
    input:
        manifest="results/manifest.parquet",
        clean="results/clean.parquet",
        trained=trained_model,
    output:
        features=directory("results/local/{model}/shard_{shard}"),
    params:
        settings=model_settings,
        shard=shard_number,
        root=DATA_ROOT,
        batch_size=config["compute"]["batch_size"],
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU_PER_JOB,
    conda:
        ENV_TORCH
    log:
        "logs/extract_local/{model}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/extract_local/{model}/shard_{shard}.tsv"
    script:
        "../scripts/extract_local.py"


rule stack_features:
    input:
        shards=expand("results/features/{{model}}/shard_{shard}.parquet", shard=SHARD_IDS),
    output:
        vectors="results/features/{model}/vectors.npy",
        ids="results/features/{model}/ids.txt",
    conda:
        ENV_CPU
    log:
        "logs/stack_features/{model}.log",
    script:
        "../scripts/stack_features.py"


rule train:
    input:
        manifest="results/manifest.parquet",
        clean="results/clean.parquet",
        split="results/split.parquet",
    # Resumable state (checkpoints, caches) goes to results/models/{model}/work/, which is
    # deliberately not an output: Snakemake deletes a job's outputs before running it again.
    output:
        record="results/models/{model}/trained.json",
        model="results/models/{model}/model.pt",
        curves=report(
            "results/models/{model}/curves.png",
            category="Training curves",
            caption="../report/curves.rst",
        ),
        curves_table="results/models/{model}/curves.csv",
        precision="results/models/{model}/precision.tsv",
    params:
        settings=model_settings,
        root=DATA_ROOT,
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=GPU_PER_JOB,
    conda:
        ENV_TORCH
    log:
        "logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    script:
        "../scripts/train.py"
