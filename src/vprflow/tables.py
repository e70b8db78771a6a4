"""The tables that flow between stages, and the helpers that read and check them.

* neighbours: ``query_id``, ``rank`` (0 = best), ``db_id``, ``score`` (higher = more
  similar, non-increasing with rank); up to K rows per query (fewer when masks or a
  small database leave fewer candidates).
* ground truth: ``query_id``, ``db_id``, ``label``: ``positive`` (same place or within the
  radius), or a dataset's own ``easy``/``hard``/``junk``. Pairs not listed are negatives.
* manifest / split: one row per image with ``image_id``; positions as ``x``, ``y``
  (metres) or ``lat``, ``lon``; the split table adds ``split``, ``is_query``, ``is_database``.
* stacked features: ``vectors.npy`` and ``ids.txt`` (one id per line, same row order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError

NEIGHBOUR_COLUMNS = ("query_id", "rank", "db_id", "score")
NEIGHBOUR_DTYPES = {"rank": "int64", "score": "float32"}

GROUND_TRUTH_COLUMNS = ("query_id", "db_id", "label")
LISTED_LABELS = ("easy", "hard", "junk")
"""Labels a dataset may list itself (Revisited Oxford/Paris, GLDv2), keyed by path."""
GROUND_TRUTH_LABELS = frozenset({"positive", *LISTED_LABELS})
POSITIVE_LABELS = ("positive", "easy", "hard")
"""Labels that count as a correct match for Recall@N, P@k, votes and pictures."""


def require_columns(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise InputError naming the table ``name`` and the columns it lacks."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")


def empty_neighbours() -> pd.DataFrame:
    return pd.DataFrame({"query_id": pd.Series(dtype=str), "rank": pd.Series(dtype=np.int64),
                         "db_id": pd.Series(dtype=str), "score": pd.Series(dtype=np.float32)})


def sort_neighbours(neighbours: pd.DataFrame) -> pd.DataFrame:
    """Validate a neighbours table and return it in rank order within each query.

    Queries keep the order of their first appearance; the index is reset. Raises
    InputError on missing columns or a db_id listed twice for one query.
    """
    require_columns(neighbours, NEIGHBOUR_COLUMNS, "neighbours")
    duplicated = neighbours.duplicated(["query_id", "db_id"])
    if duplicated.any():
        first = neighbours.loc[duplicated].iloc[0]
        raise InputError(
            f"neighbours lists db_id {first['db_id']!r} more than once for query {first['query_id']!r} "
            f"({int(duplicated.sum())} duplicate row(s) in all)"
        )
    query_codes = pd.factorize(neighbours["query_id"])[0]
    order = np.lexsort((neighbours["rank"].to_numpy(), query_codes))
    return neighbours.iloc[order].reset_index(drop=True)


def positions_in_list(sorted_neighbours: pd.DataFrame) -> np.ndarray:
    """0-based position of each row within its query (ranks need not be contiguous)."""
    return sorted_neighbours.groupby("query_id", sort=False).cumcount().to_numpy()


def check_ks(ks: Iterable[int], sorted_neighbours: pd.DataFrame, what: str = "ks") -> tuple[int, ...]:
    """``ks`` as ints, checked positive. A k beyond a query's list is fine: lists shorter than k
    are normal (masks, a database smaller than k) and their missing rows are non-positives."""
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise InputError(f"{what} must be positive integers, got {ks}")
    return ks


def renumbered(rows: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """``rows`` already in their new order: rank 0.. per query, the new scores, the schema's dtypes."""
    result = rows.loc[:, ["query_id", "db_id"]].reset_index(drop=True)
    result.insert(1, "rank", result.groupby("query_id", sort=False).cumcount())
    result["score"] = scores
    return result.loc[:, list(NEIGHBOUR_COLUMNS)].astype(NEIGHBOUR_DTYPES)


BELOW_TOP_R = 0.999
"""A re-ranking of each query's top R scores the rows below R by their old score scaled into
[0, BELOW_TOP_R]: under every re-ranked row (>= 1)."""


def scaled_per_query(values: np.ndarray, query_codes: np.ndarray) -> np.ndarray:
    """``values`` scaled into [0, 1] within each query (NaN rows ignored; 1 where a query's
    values are all equal)."""
    groups = pd.Series(values).groupby(query_codes)
    low, high = groups.transform("min").to_numpy(), groups.transform("max").to_numpy()
    return np.where(high > low, (values - low) / np.where(high > low, high - low, 1.0), 1.0)


def top_reordered(ranked: pd.DataFrame, position: np.ndarray, query_codes: np.ndarray, top_r: int,
                  head_values: np.ndarray) -> pd.DataFrame:
    """``ranked`` (in rank order; ``position`` and ``query_codes`` per row) with each query's
    first ``top_r`` rows reordered by ``head_values`` (higher first, ties in their old order)
    and the rows below after them in their old order. New scores: 1 + the head value (>= 0)
    in the top R, the old score scaled into [0, BELOW_TOP_R] below, so they never increase
    down a list."""
    top = position < top_r
    old = ranked["score"].to_numpy(np.float64)
    new_score = np.where(top, 1.0 + head_values, BELOW_TOP_R * scaled_per_query(old, query_codes))
    order = np.lexsort((position, -new_score, query_codes))
    return renumbered(ranked.iloc[order], new_score[order].astype(np.float32))


def neighbours_to_index(neighbours: pd.DataFrame, query_ids, db_ids) -> np.ndarray:
    """Neighbours table as a (len(query_ids) x K) array of row indices into ``db_ids``, in rank
    order; -1 pads queries with fewer than K rows."""
    ranked = sort_neighbours(neighbours)
    db_rows = pd.Index(db_ids).get_indexer(ranked["db_id"])
    if (db_rows < 0).any():
        unknown = sorted(set(ranked["db_id"].to_numpy()[db_rows < 0]))
        raise InputError(f"neighbours has {len(unknown)} db_id(s) not in db_ids, e.g. {unknown[:5]}")
    query_rows = pd.Index(query_ids).get_indexer(ranked["query_id"])
    if (query_rows < 0).any():
        unknown = sorted(set(ranked["query_id"].to_numpy()[query_rows < 0]))
        raise InputError(f"neighbours has {len(unknown)} query_id(s) not in query_ids, e.g. {unknown[:5]}")
    absent = sorted(set(query_ids) - set(ranked["query_id"]))
    if absent:
        raise InputError(f"neighbours has no rows for {len(absent)} query id(s), e.g. {absent[:5]}")
    position = positions_in_list(ranked)
    index = np.full((len(query_ids), position.max() + 1), -1, dtype=np.int64)
    index[query_rows, position] = db_rows
    return index


def check_ground_truth(ground_truth: pd.DataFrame, sorted_neighbours: pd.DataFrame) -> pd.DataFrame:
    """The ground truth's three columns, checked: known labels, one label per pair, and
    every labelled query present in the neighbours."""
    require_columns(ground_truth, GROUND_TRUTH_COLUMNS, "ground truth")
    ground_truth = ground_truth.loc[:, list(GROUND_TRUTH_COLUMNS)]
    unknown = sorted(set(ground_truth["label"].dropna()) - GROUND_TRUTH_LABELS)
    if unknown or ground_truth["label"].isna().any():
        raise InputError(
            f"ground truth has label(s) {unknown or ['<missing>']}; allowed: {sorted(GROUND_TRUTH_LABELS)}"
        )
    duplicated = ground_truth.duplicated(["query_id", "db_id"])
    if duplicated.any():
        first = ground_truth.loc[duplicated].iloc[0]
        raise InputError(f"ground truth labels db_id {first['db_id']!r} more than once for query {first['query_id']!r}")
    unsearched = sorted(set(ground_truth["query_id"]) - set(sorted_neighbours["query_id"]))
    if unsearched:
        raise InputError(
            f"ground truth has {len(unsearched)} query id(s) missing from neighbours, "
            f"e.g. {unsearched[:5]}; evaluate every labelled query or subset the ground truth"
        )
    return ground_truth


def labels_of_rows(sorted_neighbours: pd.DataFrame, ground_truth: pd.DataFrame) -> np.ndarray:
    """The ground-truth label of each neighbours row (NaN where the pair is unlabelled)."""
    labelled = sorted_neighbours[["query_id", "db_id"]].merge(ground_truth, on=["query_id", "db_id"], how="left")
    return labelled["label"].to_numpy(dtype=object)


def positions_m(images: pd.DataFrame) -> np.ndarray:
    """Metric positions (n, 2): x/y as given, else lat/lon projected around their mean.

    The equirectangular projection is within 0.1% over a city, plenty for radii of metres.
    """
    xy = images[["x", "y"]].to_numpy(dtype="float64", na_value=np.nan)
    lat = images["lat"].to_numpy(dtype="float64", na_value=np.nan)
    lon = images["lon"].to_numpy(dtype="float64", na_value=np.nan)
    use_geo = ~np.isfinite(xy).all(axis=1) & np.isfinite(lat) & np.isfinite(lon)
    if use_geo.any():
        lat0 = np.nanmean(lat[use_geo])
        radius = 6_371_000.0
        xy[use_geo, 0] = np.radians(lon[use_geo]) * radius * np.cos(np.radians(lat0))
        xy[use_geo, 1] = np.radians(lat[use_geo]) * radius
    return xy


def read_ids(path: str | Path) -> np.ndarray:
    """The ids file beside a stacked ``vectors.npy``: one image id per line, in row order."""
    with open(path) as handle:
        return np.array([line.rstrip("\n") for line in handle], dtype=object)


def select_rows(all_ids: np.ndarray, wanted: pd.Series | np.ndarray) -> np.ndarray:
    """Row numbers in the stacked matrix of the ``wanted`` ids, in ``wanted`` order (absent ids are skipped)."""
    position = pd.Series(np.arange(len(all_ids)), index=all_ids)
    return position.reindex(np.asarray(wanted)).dropna().to_numpy(dtype=np.int64)


def merge_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate shard tables (Parquet), keeping the schema when every shard is empty."""
    tables = [pd.read_parquet(p) for p in paths]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
