# vprflow: image retrieval and visual place recognition as one DAG.
# Run the demo: snakemake --cores 2 (see README.md).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/dataset.smk"
include: "rules/prepare.smk"
include: "rules/features.smk"
include: "rules/search.smk"
include: "rules/evaluate.smk"
include: "rules/service.smk"


rule all:
    input:
        "results/recall.tsv",
        "results/map.tsv",
        "results/precision.tsv",
        "results/poses.csv",
        "results/pose_summary.tsv",
        "results/search.tsv",
        "results/clean.tsv",
        per_ranking("results/pictures/{model}/{ranking}.grid.png"),
        per_ranking("results/pictures/{model}/{ranking}.recall.png"),
        [
            f"results/pictures/{m}/{s}+{r}.matches.png"
            for m in MODELS
            for s in SEARCHES
            for r in LOCAL_RERANKS
            if rerank.applies_to(config["reranks"][r], m)
        ],
