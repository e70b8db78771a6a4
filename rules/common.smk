# Helpers shared by all rules: config validation, dataset location, shards.
import importlib.util
import os
import sys
from pathlib import Path

# The library in src/ is importable here and in every job (scripts, conda envs, cluster
# jobs inherit PYTHONPATH), with or without `pip install -e .`.
_SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, _SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")])))

from snakemake.exceptions import WorkflowError

from vprflow import descriptors, rerank, search
from vprflow.clean import CLEAN_METHODS
from vprflow.clean.settings import scoring_settings
from vprflow.config import validate_config, with_user_sections
from vprflow.datasets import FETCHED_MARKER, registry
from vprflow.errors import InputError

try:
    if importlib.util.find_spec("faiss") is None:
        raise InputError("faiss is not installed: pip install -e '.[cpu]', or '.[gpu]' on a CUDA machine (README.md)")
    # --configfile / --config: the user's methods replace config.yaml's (the demo's), not join them.
    _requested = with_user_sections(config, workflow.config_settings.overwrite_config)
    _validated = validate_config(_requested, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    config.clear()
    config.update(_validated)
    DATASET, DATASET_SETTINGS, _root = registry.dataset_of(config["dataset"])
    DATA_ROOT = str(_root)
    # The shard count is fixed before any job runs; jobs split the real listing evenly.
    N_SHARDS = registry.n_shards(registry.estimate_rows(config["dataset"]), config["shards"]["images_per_shard"])
except (InputError, OSError) as error:
    raise WorkflowError(str(error))

SHARD_IDS = [f"{i:04d}" for i in range(N_SHARDS)]
# Local-feature models (sift, delf) are extracted per shard and read by `method: local`
# re-ranking; MODELS are the global ones, searched and evaluated.
LOCAL_MODELS = sorted(m for m in config["models"] if descriptors.is_local(config["models"][m]))
MODELS = sorted(m for m in config["models"] if m not in LOCAL_MODELS)
TRAINED_MODELS = [m for m in sorted(config["models"]) if descriptors.is_trainable(config["models"][m])]
# Training and extraction ask for a GPU (and use the CUDA environment) only where the
# user says the cluster has GPU nodes; the device itself is chosen at run time.
GPU_PER_JOB = 1 if config["compute"]["gpu_jobs"] else 0
ENV_CPU = "../envs/cpu.yaml"
ENV_TORCH = "../envs/gpu.yaml" if GPU_PER_JOB else ENV_CPU
SEARCHES = sorted(config["searches"])
RERANKS = sorted(config["reranks"])
# Each model's rankings: every search, and every step whose apply_to takes the model.
RANKINGS_OF = {
    m: SEARCHES + [f"{s}+{r}" for s in SEARCHES for r in RERANKS if rerank.applies_to(config["reranks"][r], m)]
    for m in MODELS
}
LOCAL_RERANKS = [r for r in RERANKS if config["reranks"][r]["method"] == "local"]


wildcard_constraints:
    shard=r"\d{4}",
    model=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    search=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    rerank=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    ranking=r"[A-Za-z0-9][A-Za-z0-9_-]*(\+[A-Za-z0-9][A-Za-z0-9_-]*)?",


def shard_number(wildcards):
    return int(wildcards.shard)


def model_settings(wildcards):
    return config["models"][wildcards.model]


def search_settings(wildcards):
    return config["searches"][wildcards.search]


def trained_model(wildcards):
    """The training record a model's extraction waits for; none for untrained descriptors."""
    if wildcards.model in TRAINED_MODELS:
        return f"results/models/{wildcards.model}/trained.json"
    return []


def listing_source(wildcards):
    """The file whose change means the listing must be read again (none for some datasets)."""
    return DATASET.listing_source(DATASET_SETTINGS, Path(DATA_ROOT)) or []


def index_settings(wildcards):
    """The settings the index is built from (the backend's BUILD_SETTINGS): changing one
    read at search time (k, nprobe, ef_search, candidates ...) reruns the searches only."""
    return search.build_settings(search_settings(wildcards))


def per_ranking(pattern):
    return [pattern.format(model=m, ranking=r) for m in MODELS for r in RANKINGS_OF[m]]


# Inputs that depend on a model's or a re-ranking step's settings.


def query_roles(wildcards):
    """The split table, for models that encode queries apart (query-side scales, flips)."""
    if descriptors.describes_queries_apart(config["models"][wildcards.model]):
        return "results/split.parquet"
    return []


def reranked_ranking(wildcards):
    """The search a re-ranked ranking started from (for its improved/worse counts); none for a search."""
    search, _, step = wildcards.ranking.partition("+")
    return f"results/search/{wildcards.model}/{search}/neighbours.parquet" if step else []


def fused_models(wildcards):
    """Other models whose rankings of the same search a step combines (a fusion's ``models``)."""
    named = config["reranks"][wildcards.rerank].get("models", {})
    return sorted(set(named) - {wildcards.model})


def fused_rankings(wildcards):
    return [f"results/search/{m}/{wildcards.search}/neighbours.parquet" for m in fused_models(wildcards)]


def local_feature_shards(wildcards):
    """The shard folders of the local model a `method: local` re-ranking names (none for other methods)."""
    settings = config["reranks"][wildcards.rerank]
    if settings["method"] != "local":
        return []
    return expand("results/local/{model}/shard_{shard}", model=settings["features"], shard=SHARD_IDS)
