"""Datasets by name: how to fetch, list and size each one.

``estimate_rows`` must answer before any job runs, because it fixes the number of
shards (and so the DAG): exact where counting is cheap, a documented estimate where
the data is not there yet. Shards then split the real listing evenly at run time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from . import empty_ground_truth
from .folder import count_rows, read_folder

# Revisited Oxford/Paris: database images plus the 70 queries of the ground truth.
REVISITED_ROWS = {"roxford5k": 4993 + 70, "rparis6k": 6322 + 70}
# GLDv2 images per tar shard, on average (4.1M train, 762k index, 118k test).
GLDV2_IMAGES_PER_SHARD = {"train": 8200, "index": 7700, "test": 5900}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DOWNLOADABLE = ("roxford5k", "rparis6k", "gldv2")


def settings_of(dataset: dict[str, Any]) -> dict[str, Any]:
    """The config section of the chosen dataset (``revisited`` serves both Oxford and Paris)."""
    name = dataset["name"]
    return dataset["revisited" if name in REVISITED_ROWS else name]


def root_of(dataset: dict[str, Any]) -> Path:
    if dataset["name"] == "demo":
        return Path("resources") / "demo" / f"{dataset['demo']['size']}-seed{dataset['demo']['seed']}"
    root = settings_of(dataset).get("root")
    if not root:
        section = "revisited" if dataset["name"] in REVISITED_ROWS else dataset["name"]
        raise InputError(f"dataset.{section}.root: required when dataset.name is {dataset['name']}")
    return Path(root)


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        raise InputError(f"dataset: folder {folder} does not exist")
    return sum(1 for _, _, files in os.walk(folder) for f in files
               if f.lower().endswith(IMAGE_SUFFIXES))


def estimate_rows(dataset: dict[str, Any]) -> int:
    name, settings = dataset["name"], settings_of(dataset)
    if name == "demo":
        from .demo import count_images

        return count_images(settings["size"])
    root = root_of(dataset)
    if name == "folder":
        return count_rows(root, settings["manifest"])
    if name in REVISITED_ROWS:
        return REVISITED_ROWS[name]
    if name == "utm_folder":
        return _count_images(root / settings["database_dir"]) + _count_images(root / settings["query_dir"])
    if name == "class_folder":
        return _count_images(root)
    if name == "gldv2":
        return sum((last - first + 1) * GLDV2_IMAGES_PER_SHARD[split]
                   for split, (first, last) in settings["shards"].items())
    raise InputError(f"dataset.name: unknown dataset {name!r}")


def read_listing(dataset: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(listing, ground truth by path) of the configured dataset; see ``datasets`` for the columns."""
    name, settings, root = dataset["name"], settings_of(dataset), root_of(dataset)
    if name in ("demo", "folder"):
        return read_folder(root, settings.get("manifest", "manifest.csv")), empty_ground_truth()
    if name in REVISITED_ROWS:
        from .revisited import read_revisited

        return read_revisited(root, name)
    if name == "utm_folder":
        from .utm_folder import read_utm_folder

        return read_utm_folder(root, settings["database_dir"], settings["query_dir"]), empty_ground_truth()
    if name == "class_folder":
        from .class_folder import read_class_folder

        return read_class_folder(root), empty_ground_truth()
    if name == "gldv2":
        from .gldv2 import read_gldv2

        return read_gldv2(root, settings["shards"], settings["clean"])
    raise InputError(f"dataset.name: unknown dataset {name!r}")


def fetch(dataset: dict[str, Any]) -> None:
    """Download what the configured dataset needs into its root; files already there are kept."""
    name, settings, root = dataset["name"], settings_of(dataset), root_of(dataset)
    if name in REVISITED_ROWS:
        from .revisited import fetch_revisited

        fetch_revisited(name, root, settings.get("mirror"))
    elif name == "gldv2":
        from .gldv2 import fetch_gldv2

        for split, shard_range in settings["shards"].items():
            fetch_gldv2(split, shard_range, root, settings.get("mirror"))
    else:
        raise InputError(f"dataset {name} has no download; put its files under {root}")


def n_shards(estimated_rows: int, images_per_shard: int) -> int:
    return max(1, math.ceil(estimated_rows / images_per_shard))


def shard_bounds(n_rows: int, shard: int, shards: int) -> range:
    """Rows of ``shard`` when ``n_rows`` are split into ``shards`` near-equal parts."""
    return range(n_rows * shard // shards, n_rows * (shard + 1) // shards)
