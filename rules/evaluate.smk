# Re-ranking, metrics, poses and pictures per (model, ranking), gathered into tables.
# A ranking is a search ("exact") or a search followed by a re-ranking step ("exact+sv").


rule rerank:
    input:
        neighbours="results/search/{model}/{search}/neighbours.parquet",
        manifest="results/manifest.parquet",
        split="results/split.parquet",
        masks="results/masks.parquet",
        vectors="results/features/{model}/vectors.npy",
        ids="results/features/{model}/ids.txt",
        rankings=fused_rankings,
        local_features=local_feature_shards,
    output:
        reranked="results/search/{model}/{search}+{rerank}/neighbours.parquet",
    params:
        settings=lambda wildcards: rerank.method_settings(config["reranks"][wildcards.rerank]),
        model="{model}",
        ranking_models=fused_models,
        root=DATA_ROOT,
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV_CPU
    log:
        "logs/rerank/{model}/{search}+{rerank}.log",
    benchmark:
        "results/benchmarks/rerank/{model}/{search}+{rerank}.tsv"
    script:
        "../scripts/rerank.py"


rule evaluate:
    input:
        neighbours="results/search/{model}/{ranking}/neighbours.parquet",
        base=reranked_ranking,
        truth="results/ground_truth.parquet",
        split="results/split.parquet",
        manifest="results/manifest.parquet",
    output:
        recall="results/eval/{model}/{ranking}/recall.tsv",
        map="results/eval/{model}/{ranking}/map.tsv",
        precision="results/eval/{model}/{ranking}/precision.tsv",
        curve="results/eval/{model}/{ranking}/recall_curve.tsv",
    params:
        settings=config["evaluate"],
        model="{model}",
        ranking="{ranking}",
    conda:
        ENV_CPU
    log:
        "logs/evaluate/{model}/{ranking}.log",
    script:
        "../scripts/evaluate.py"


rule pose:
    input:
        neighbours="results/search/{model}/{ranking}/neighbours.parquet",
        manifest="results/manifest.parquet",
    output:
        poses="results/poses/{model}/{ranking}.csv",
        summary="results/poses/{model}/{ranking}.summary.tsv",
    params:
        settings=config["pose"],
        radius_m=config["ground_truth"]["radius_m"],
        model="{model}",
        ranking="{ranking}",
    conda:
        ENV_CPU
    log:
        "logs/pose/{model}/{ranking}.log",
    script:
        "../scripts/pose.py"


rule pictures:
    input:
        neighbours="results/search/{model}/{ranking}/neighbours.parquet",
        truth="results/ground_truth.parquet",
        curve="results/eval/{model}/{ranking}/recall_curve.tsv",
        manifest="results/manifest.parquet",
    output:
        grid=report(
            "results/pictures/{model}/{ranking}.grid.png",
            category="Retrieval grids",
            caption="../report/grid.rst",
        ),
        sidecar="results/pictures/{model}/{ranking}.grid.tsv",
        curve_png=report(
            "results/pictures/{model}/{ranking}.recall.png",
            category="Recall@N curves",
            caption="../report/recall_curve.rst",
        ),
    params:
        settings=config["evaluate"],
        root=DATA_ROOT,
        model="{model}",
        ranking="{ranking}",
    conda:
        ENV_CPU
    log:
        "logs/pictures/{model}/{ranking}.log",
    script:
        "../scripts/pictures.py"


rule match_pictures:
    input:
        neighbours="results/search/{model}/{search}+{rerank}/neighbours.parquet",
        truth="results/ground_truth.parquet",
        manifest="results/manifest.parquet",
        local_features=local_feature_shards,
    output:
        matches=report(
            "results/pictures/{model}/{search}+{rerank}.matches.png",
            category="Matching pictures",
            caption="../report/matches.rst",
        ),
    params:
        settings=lambda wildcards: rerank.method_settings(config["reranks"][wildcards.rerank]),
        grid=config["evaluate"],
        root=DATA_ROOT,
        model="{model}",
        ranking="{search}+{rerank}",
    conda:
        ENV_CPU
    log:
        "logs/match_pictures/{model}/{search}+{rerank}.log",
    script:
        "../scripts/match_pictures.py"


rule tables:
    input:
        recall_parts=per_ranking("results/eval/{model}/{ranking}/recall.tsv"),
        map_parts=per_ranking("results/eval/{model}/{ranking}/map.tsv"),
        precision_parts=per_ranking("results/eval/{model}/{ranking}/precision.tsv"),
        head_precision_parts=[f"results/models/{m}/precision.tsv" for m in TRAINED_MODELS],
        poses_parts=per_ranking("results/poses/{model}/{ranking}.csv"),
        pose_summary_parts=per_ranking("results/poses/{model}/{ranking}.summary.tsv"),
        search_parts=expand("results/eval/{model}/{search}/search.tsv", model=MODELS, search=SEARCHES),
    output:
        recall=report("results/recall.tsv", category="Tables", caption="../report/recall.rst"),
        map=report("results/map.tsv", category="Tables", caption="../report/map.rst"),
        precision=report("results/precision.tsv", category="Tables", caption="../report/precision.rst"),
        poses="results/poses.csv",
        search=report("results/search.tsv", category="Tables", caption="../report/search.rst"),
        pose_summary=report("results/pose_summary.tsv", category="Tables", caption="../report/poses.rst"),
    conda:
        ENV_CPU
    log:
        "logs/tables.log",
    script:
        "../scripts/tables.py"
