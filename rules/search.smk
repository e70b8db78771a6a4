# Index build once per (model, search), then one search job per query block.


rule build_index:
    input:
        vectors="results/features/{model}/vectors.npy",
        ids="results/features/{model}/ids.txt",
        split="results/split.parquet",
    output:
        built="results/index/{model}/{search}/built.json",
    params:
        settings=index_settings,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV_CPU
    log:
        "logs/build_index/{model}/{search}.log",
    benchmark:
        "results/benchmarks/build_index/{model}/{search}.tsv"
    script:
        "../scripts/build_index.py"


rule search:
    input:
        vectors="results/features/{model}/vectors.npy",
        ids="results/features/{model}/ids.txt",
        split="results/split.parquet",
        manifest="results/manifest.parquet",
        masks="results/masks.parquet",
        built="results/index/{model}/{search}/built.json",
    output:
        block=temp("results/search/{model}/{search}/block_{shard}.parquet"),
        timing=temp("results/search/{model}/{search}/block_{shard}.time.json"),
    params:
        settings=search_settings,
        shard=shard_number,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV_CPU
    log:
        "logs/search/{model}/{search}/block_{shard}.log",
    benchmark:
        "results/benchmarks/search/{model}/{search}/block_{shard}.tsv"
    script:
        "../scripts/search.py"


rule neighbours:
    input:
        blocks=expand("results/search/{{model}}/{{search}}/block_{shard}.parquet", shard=SHARD_IDS),
        timings=expand("results/search/{{model}}/{{search}}/block_{shard}.time.json", shard=SHARD_IDS),
        manifest="results/manifest.parquet",
    output:
        neighbours="results/search/{model}/{search}/neighbours.parquet",
        pairs="results/search/{model}/{search}/pairs.txt",
        timing="results/search/{model}/{search}/timing.json",
    conda:
        ENV_CPU
    log:
        "logs/neighbours/{model}/{search}.log",
    script:
        "../scripts/neighbours.py"


rule search_stats:
    input:
        neighbours="results/search/{model}/{search}/neighbours.parquet",
        timing="results/search/{model}/{search}/timing.json",
        built="results/index/{model}/{search}/built.json",
        vectors="results/features/{model}/vectors.npy",
        ids="results/features/{model}/ids.txt",
        split="results/split.parquet",
        masks="results/masks.parquet",
    output:
        stats="results/eval/{model}/{search}/search.tsv",
    params:
        settings=search_settings,
        model="{model}",
        search="{search}",
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        ENV_CPU
    log:
        "logs/search_stats/{model}/{search}.log",
    script:
        "../scripts/search_stats.py"
