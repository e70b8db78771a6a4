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
"""

from __future__ import annotations

import pandas as pd

LISTING_COLUMNS = ["path", "role", "place", "name", "category", "x", "y", "lat", "lon", "yaw"]
ROLES = ("database", "query", "both", "")
GROUND_TRUTH_LABELS = ("easy", "hard", "junk")


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
