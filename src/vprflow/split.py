"""Split stage: train/val/test/index, seeded, plus the query/database roles of evaluation.

Two strategies:

* ``grouped`` (default): every group (a place, or a square cell of the map when images
  only have positions) goes whole to one split, so no place is seen both in training
  and in evaluation -- the honest choice for place recognition.
* ``stratified``: every place's images are spread over the splits in the configured
  proportions -- the landmark seeds' setup, where a classifier must meet each landmark
  in training.

Evaluation roles: an image with role ``query``/``database``/``both`` keeps it when its
split is among ``query_splits``/``database_splits``; an image without a role (class
folders) becomes a query in ``query_splits`` and a database image in the others listed
in ``database_splits``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputError
from .logs import log
from .tables import positions_m

SPLITS = ("train", "val", "test", "index")


def group_keys(images: pd.DataFrame, cell_m: float) -> pd.Series:
    """Place id where known, else the map cell of the image's position, else the image itself."""
    keys = images["place"].astype("string")
    xy = positions_m(images)
    cell = np.floor(xy / cell_m).astype("float64")
    cell_key = pd.Series([f"cell:{a:.0f}:{b:.0f}" if np.isfinite(a) else pd.NA for a, b in cell],
                         index=images.index, dtype="string")
    # Images with neither (Revisited Oxford/Paris, GLDv2 index/test) are groups of their own.
    return keys.fillna(cell_key).fillna("image:" + images["path"].astype("string"))


def _check_fractions(fractions: dict[str, float]) -> np.ndarray:
    values = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if (values < 0).any() or not np.isclose(values.sum(), 1.0, atol=1e-6):
        given = ", ".join(f"{s} {v:g}" for s, v in zip(SPLITS, values))
        raise InputError(f"split.fractions: {given} sum to {values.sum():g}; they must be >= 0 and must sum to 1")
    return values


def check_split_settings(settings: dict) -> None:
    """What the schema cannot check: the fractions sum to 1 (at config validation)."""
    _check_fractions(settings["fractions"])


def assign_splits(images: pd.DataFrame, fractions: dict[str, float], strategy: str = "grouped",
                  cell_m: float = 50.0, seed: int = 0) -> pd.Series:
    """Return the split name of every row of ``images`` (index-aligned)."""
    target = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    keys = group_keys(images, cell_m)
    split = np.empty(len(images), dtype=object)
    positions = pd.Series(np.arange(len(images)), index=images.index).groupby(keys.to_numpy()).agg(list)
    groups = list(positions.sort_index())
    if strategy == "grouped":
        order = rng.permutation(len(groups))
        counts = np.zeros(len(SPLITS))
        total = len(images)
        for g in order:
            members = groups[g]
            # The split furthest below its share takes the group.
            deficit = target * total - counts
            deficit[target == 0] = -np.inf
            choice = int(np.argmax(deficit))
            split[members] = SPLITS[choice]
            counts[choice] += len(members)
    elif strategy == "stratified":
        for members in groups:
            members = np.array(members)[rng.permutation(len(members))]
            share = target * len(members)
            counts = np.floor(share).astype(int)
            remainder = share - counts
            # Largest remainders get the leftover images; a random tie-break avoids bias.
            for s in np.lexsort((rng.random(len(SPLITS)), -remainder))[: len(members) - counts.sum()]:
                counts[s] += 1
            split[members] = np.repeat(np.array(SPLITS, dtype=object), counts)
    else:
        raise InputError(f"split.strategy: unknown {strategy!r} (use grouped or stratified)")
    return pd.Series(split, index=images.index, name="split")


def evaluation_roles(role: pd.Series, split: pd.Series, query_splits, database_splits) -> pd.DataFrame:
    """Boolean columns ``is_query`` and ``is_database`` used by search and metrics."""
    in_q = split.isin(list(query_splits))
    in_db = split.isin(list(database_splits))
    unroled = role == ""
    is_query = in_q & (role.isin(["query", "both"]) | unroled)
    is_database = in_db & (role.isin(["database", "both"]) | (unroled & ~in_q))
    return pd.DataFrame({"is_query": is_query, "is_database": is_database})


def make_split(images: pd.DataFrame, fractions, strategy, cell_m, seed, query_splits,
               database_splits) -> pd.DataFrame:
    """The split table: ``image_id``, ``split``, ``is_query``, ``is_database``."""
    split = assign_splits(images, fractions, strategy, cell_m, seed)
    roles = evaluation_roles(images["role"], split, query_splits, database_splits)
    table = pd.DataFrame({"image_id": images["image_id"].to_numpy(), "split": split.to_numpy(),
                          "is_query": roles["is_query"].to_numpy(),
                          "is_database": roles["is_database"].to_numpy()})
    counts = table["split"].value_counts().reindex(SPLITS, fill_value=0)
    log.info("split (%s, seed %d): %s; evaluation: %d queries, %d database images", strategy, seed,
             ", ".join(f"{s} {n}" for s, n in counts.items()), table["is_query"].sum(),
             table["is_database"].sum())
    return table


def check_evaluation_sides(table: pd.DataFrame, roles: pd.Series, query_splits, database_splits) -> None:
    """InputError unless the split table has a query and a database image, saying where they went.

    Run by the split stage, the first that knows what decoding and cleaning left (``roles``: the
    kept images' listed roles, row-aligned with ``table``)."""
    left_out = "images that did not decode are in results/rejects.tsv, those cleaning dropped in results/clean.parquet"
    if table.empty:
        raise InputError(f"split: no image is left to split: {left_out}")
    roles = pd.Series(roles.to_numpy(), index=table.index)
    for side, flag, named, splits, key in (("query", "is_query", ("query", "both"), query_splits, "query_splits"),
                                           ("database image", "is_database", ("database", "both"), database_splits,
                                            "database_splits")):
        if table[flag].any():
            continue
        eligible = roles.isin(named) | (roles == "")
        went = table.loc[eligible, "split"].value_counts().reindex(SPLITS).dropna().astype(int)
        where = f" (in splits: {', '.join(f'{s} {n}' for s, n in went.items())})" if len(went) else ""
        raise InputError(f"split: no {side}: of the {len(table)} kept images, {int(eligible.sum())} have role "
                         f"{named[0]} or both{where}, none in split.{key} {list(splits)}; {left_out}. "
                         f"Give more images that role, or change split.fractions or split.{key}")
