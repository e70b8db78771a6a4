"""Datasets by name (``dataset.name``): how to fetch, list and size each one.

``estimate_rows`` must answer before any job runs, because it fixes the number of
shards (and so the DAG): exact where counting is cheap, a documented estimate where
the data is not there yet. Shards then split the real listing evenly at run time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..registry import Registry
from . import Dataset

DATASETS = Registry(
    "dataset",
    __package__,
    {
        "demo": "demo:DEMO",
        "folder": "folder:FOLDER",
        "roxford5k": "revisited:OXFORD",
        "rparis6k": "revisited:PARIS",
        "utm_folder": "utm_folder:UTM_FOLDER",
        "class_folder": "class_folder:CLASS_FOLDER",
        "gldv2": "gldv2:GLDV2",
    },
    selector="name",
)


def dataset_of(dataset: dict[str, Any]) -> tuple[Dataset, dict[str, Any], Path]:
    """(the dataset, its settings section, its root) of the config's ``dataset`` section."""
    chosen = DATASETS.get(dataset["name"])
    settings = dataset.get(chosen.section, {})
    return chosen, settings, chosen.root(settings)


def root_of(dataset: dict[str, Any]) -> Path:
    return dataset_of(dataset)[2]


def estimate_rows(dataset: dict[str, Any]) -> int:
    chosen, settings, root = dataset_of(dataset)
    return chosen.estimate_rows(settings, root)


def read_listing(dataset: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(listing, ground truth by path) of the configured dataset; see ``datasets`` for the columns."""
    chosen, settings, root = dataset_of(dataset)
    return chosen.read(settings, root)


def fetch(dataset: dict[str, Any]) -> None:
    """Download what the configured dataset needs into its root; files already there are kept."""
    chosen, settings, root = dataset_of(dataset)
    chosen.fetch(settings, root)


def n_shards(estimated_rows: int, images_per_shard: int) -> int:
    return max(1, math.ceil(estimated_rows / images_per_shard))


def shard_bounds(n_rows: int, shard: int, shards: int) -> range:
    """Rows of ``shard`` when ``n_rows`` are split into ``shards`` near-equal parts."""
    return range(n_rows * shard // shards, n_rows * (shard + 1) // shards)
