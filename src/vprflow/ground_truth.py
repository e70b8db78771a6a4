"""Who is a positive for whom: same place, or within a radius, or the dataset's own lists.

Output rows: ``query_id``, ``db_id``, ``label``. ``positive`` comes from places or radii;
datasets with Revisited-style ground truth add ``easy``/``hard``/``junk``. A query is
never its own positive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputError
from .tables import GROUND_TRUTH_COLUMNS, POSITIVE_LABELS, positions_m

COLUMNS = list(GROUND_TRUTH_COLUMNS)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})


def by_place(queries: pd.DataFrame, database: pd.DataFrame) -> pd.DataFrame:
    q = queries[["image_id", "place"]].dropna()
    d = database[["image_id", "place"]].dropna()
    pairs = q.merge(d, on="place", suffixes=("_q", "_d"))
    return pd.DataFrame({"query_id": pairs["image_id_q"], "db_id": pairs["image_id_d"], "label": "positive"})


def by_radius(queries: pd.DataFrame, database: pd.DataFrame, radius_m: float) -> pd.DataFrame:
    """Pairs within ``radius_m`` metres, found through a grid of radius-sized cells.

    Each query only meets database images in its own and the 8 neighbouring cells, so the
    cost grows with the number of true neighbours, not with queries x database.
    """
    qxy, dxy = positions_m(queries), positions_m(database)
    qok, dok = np.isfinite(qxy).all(1), np.isfinite(dxy).all(1)
    if not qok.any() or not dok.any():
        return _empty()
    qxy, dxy = qxy[qok], dxy[dok]
    qid, did = queries["image_id"].to_numpy()[qok], database["image_id"].to_numpy()[dok]
    qcell = np.floor(qxy / radius_m).astype(np.int64)
    dcell = pd.DataFrame({"cx": np.floor(dxy[:, 0] / radius_m).astype(np.int64),
                          "cy": np.floor(dxy[:, 1] / radius_m).astype(np.int64),
                          "d": np.arange(len(dxy))})
    found = []
    for ox in (-1, 0, 1):
        for oy in (-1, 0, 1):
            q = pd.DataFrame({"cx": qcell[:, 0] + ox, "cy": qcell[:, 1] + oy, "q": np.arange(len(qxy))})
            pairs = q.merge(dcell, on=["cx", "cy"])
            qi, di = pairs["q"].to_numpy(), pairs["d"].to_numpy()
            close = np.linalg.norm(qxy[qi] - dxy[di], axis=1) <= radius_m
            found.append((qi[close], di[close]))
    qi = np.concatenate([f[0] for f in found])
    di = np.concatenate([f[1] for f in found])
    return pd.DataFrame({"query_id": qid[qi], "db_id": did[di], "label": "positive"})


def build_ground_truth(images: pd.DataFrame, split: pd.DataFrame, method: str, radius_m: float,
                       listed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ground truth between the evaluation queries and database.

    ``method``: ``place``, ``radius`` or ``auto`` (radius when the images have positions,
    else place). ``listed``: the dataset's own labels keyed by path (``query_path``,
    ``db_path``, ``label``), which take precedence for the pairs they name.
    """
    table = images.merge(split[["image_id", "is_query", "is_database"]], on="image_id")
    queries, database = table[table["is_query"]], table[table["is_database"]]
    if method == "auto":
        has_position = np.isfinite(positions_m(table)).all(1).any()
        method = "radius" if has_position else "place"
    parts = [by_radius(queries, database, radius_m) if method == "radius" else by_place(queries, database)]
    if listed is not None and len(listed):
        by_path = dict(zip(table["path"], table["image_id"]))
        ids = pd.DataFrame({"query_id": listed["query_path"].map(by_path),
                            "db_id": listed["db_path"].map(by_path), "label": listed["label"]}).dropna()
        ids = ids[ids["query_id"].isin(queries["image_id"]) & ids["db_id"].isin(database["image_id"])]
        parts.insert(0, ids)
    truth = pd.concat(parts, ignore_index=True).drop_duplicates(["query_id", "db_id"], keep="first")
    truth = truth[truth["query_id"] != truth["db_id"]]
    return truth.sort_values(["query_id", "db_id"]).reset_index(drop=True)[COLUMNS]


def check_some_positive(truth: pd.DataFrame, n_queries: int, radius_m: float) -> None:
    """InputError when no query has a positive: no recall or mAP could be measured."""
    if not truth["label"].isin(POSITIVE_LABELS).any():
        raise InputError(f"ground truth: none of the {n_queries} queries has a positive in the database (an image "
                         f"of the same place, or within ground_truth.radius_m = {radius_m:g} m); check the "
                         f"manifest's place or x,y / lat,lon columns, or raise radius_m")
