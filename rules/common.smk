# Helpers shared by all rules: config validation, dataset location, shards.
import math
from pathlib import Path

from snakemake.exceptions import WorkflowError

from vprflow import descriptors
from vprflow.config import validate_config
from vprflow.errors import InputError
from vprflow.manifest import shard_rows
from vprflow.stages import count_listing_rows, dataset_root

try:
    _validated = validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    config.clear()
    config.update(_validated)
    N_LISTED = count_listing_rows(config["dataset"])
except (InputError, OSError) as error:
    raise WorkflowError(str(error))

DATA_ROOT = str(dataset_root(config["dataset"]))
SHARDS = shard_rows(N_LISTED, config["shards"]["images_per_shard"])
SHARD_IDS = [f"{i:04d}" for i in range(len(SHARDS))]
MODELS = sorted(config["models"])
SEARCHES = sorted(config["searches"])


wildcard_constraints:
    shard=r"\d{4}",
    model=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    search=r"[A-Za-z0-9][A-Za-z0-9_-]*",


def shard_range(wildcards):
    rows = SHARDS[int(wildcards.shard)]
    return {"start": rows.start, "stop": rows.stop}


def model_settings(wildcards):
    return config["models"][wildcards.model]


def search_settings(wildcards):
    return config["searches"][wildcards.search]


def trained_model(wildcards):
    """The training record a model's extraction waits for; none for untrained descriptors."""
    if descriptors.is_trainable(config["models"][wildcards.model]):
        return f"results/models/{wildcards.model}/trained.json"
    return []


def model_dir(wildcards):
    if descriptors.is_trainable(config["models"][wildcards.model]):
        return f"results/models/{wildcards.model}"
    return ""
