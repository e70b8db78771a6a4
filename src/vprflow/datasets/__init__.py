"""Datasets, found by name in a small registry.

Every dataset reader returns a *listing*: a pandas DataFrame with one row per image and
these columns (missing ground truth is NA/NaN, never a made-up value):

==========  ==============================================================
path        image path relative to the dataset root, POSIX separators
role        ``database`` | ``query`` | ``both`` | ``""`` (no predefined role)
place       place or landmark id (str) -- same place = positive
name        human-readable landmark/place name (str)
category    landmark category (str)
x, y        metric position in metres (e.g. UTM east/north)
lat, lon    WGS84 degrees, when no metric position is known
yaw         heading in degrees
==========  ==============================================================

Dataset-specific flags may follow (``truth_bw``, ``truth_collage`` in the demo world,
query boxes ``bbox_x1`` ... for Revisited Oxford/Paris). Readers that know more than
place/radius ground truth (easy/hard/junk lists) also return a ground-truth table with
``query_path``, ``db_path``, ``label`` (easy | hard | junk).

A dataset is an object of a :class:`Dataset` subclass in its module, found by name in
``registry.DATASETS``; a new dataset is one module plus one registry line (and its
section in ``schemas/config.schema.yaml``, which holds the defaults of every section).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..tables import LISTED_LABELS

LISTING_COLUMNS = ["path", "role", "place", "name", "category", "x", "y", "lat", "lon", "yaw"]
ROLES = ("database", "query", "both", "")
GROUND_TRUTH_LABELS = LISTED_LABELS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FETCHED_MARKER = ".vprflow-fetched"


class Dataset:
    """How one dataset is sized, fetched and listed (``dataset.<section>`` holds its settings)."""

    section: str
    downloadable = False
    generated = False  # made by the pipeline itself (the demo world's own rule)

    def root(self, settings: dict[str, Any]) -> Path:
        """The dataset's folder; it must exist unless the pipeline downloads into it."""
        if not settings.get("root"):
            raise InputError(f"dataset.{self.section}.root: required when dataset.name is {self.name}")
        root = Path(settings["root"])
        if not self.downloadable and not root.is_dir():
            raise InputError(f"dataset.{self.section}.root: folder {root} does not exist; "
                             f"set it to the folder that holds the {self.name} dataset")
        return root

    def estimate_rows(self, settings: dict[str, Any], root: Path) -> int:
        """Images the listing will hold, known before any job runs (it fixes the shards)."""
        raise NotImplementedError

    def read(self, settings: dict[str, Any], root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(listing, ground truth by path); see the module docstring for the columns."""
        raise NotImplementedError

    def fetch(self, settings: dict[str, Any], root: Path) -> None:
        raise InputError(f"dataset {self.name} has no download; put its files under {root}")

    def listing_source(self, settings: dict[str, Any], root: Path) -> str | None:
        """The file whose change means the listing must be read again (None: none)."""
        if self.downloadable and settings.get("download"):
            return str(root / FETCHED_MARKER)
        return None

    def __init__(self, name: str):
        self.name = name


def count_images_under(folder: Path) -> int:
    if not folder.is_dir():
        raise InputError(f"dataset: folder {folder} does not exist")
    return sum(1 for _, _, files in os.walk(folder) for f in files if f.lower().endswith(IMAGE_SUFFIXES))


def empty_ground_truth() -> pd.DataFrame:
    return pd.DataFrame({"query_path": pd.Series(dtype=str), "db_path": pd.Series(dtype=str),
                         "label": pd.Series(dtype=str)})


def normalise_listing(listing: pd.DataFrame) -> pd.DataFrame:
    """Add missing standard columns (as NA) and put them first, in the standard order."""
    listing = listing.copy()
    for column in LISTING_COLUMNS:
        if column not in listing:
            listing[column] = "" if column == "role" else pd.NA
    for column in ("x", "y", "lat", "lon", "yaw"):
        listing[column] = pd.to_numeric(listing[column], errors="coerce").astype("float64")
    for column in ("place", "name", "category"):
        listing[column] = listing[column].astype("string")
    listing["role"] = listing["role"].fillna("").astype(str)
    extra = [c for c in listing.columns if c not in LISTING_COLUMNS]
    return listing[LISTING_COLUMNS + extra].reset_index(drop=True)
