"""Masks: (query, database) pairs that search must never return.

* ``self``: a query that is also in the database (role ``both``) must not find itself;
* ``duplicate``: a database file byte-identical to the query (same sha256), a copy
  of the same source under another name;
* ``minor_class``: images of places with fewer than ``min_class_size`` kept images leave
  the evaluation on both sides (as the car-image seed did with its minor classes).
  Such rows hold ``*`` on the side they apply to all of.

Every backend applies the same mask table.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["query_id", "db_id", "reason"]


ANY = "*"


def build_masks(images: pd.DataFrame, split: pd.DataFrame, min_class_size: int = 0) -> pd.DataFrame:
    table = images[["image_id", "sha256", "place"]].merge(split[["image_id", "is_query", "is_database"]],
                                                          on="image_id")
    queries, database = table[table["is_query"]], table[table["is_database"]]
    same = queries.merge(database, on="sha256", suffixes=("_q", "_d"))
    masks = pd.DataFrame({"query_id": same["image_id_q"], "db_id": same["image_id_d"]})
    masks["reason"] = ["self" if q == d else "duplicate" for q, d in zip(masks["query_id"], masks["db_id"])]
    if min_class_size > 1:
        sizes = table["place"].value_counts()
        minor = set(sizes[sizes < min_class_size].index)
        in_minor = table["place"].isin(minor)
        masks = pd.concat([masks,
                           pd.DataFrame({"query_id": table.loc[in_minor & table["is_query"], "image_id"],
                                         "db_id": ANY, "reason": "minor_class"}),
                           pd.DataFrame({"query_id": ANY, "db_id": table.loc[in_minor & table["is_database"],
                                                                             "image_id"], "reason": "minor_class"})])
    return masks.sort_values(["query_id", "db_id"]).reset_index(drop=True)[COLUMNS]


def split_masks(masks: pd.DataFrame) -> tuple[set, set, pd.DataFrame]:
    """(queries to drop, database images to drop, pair masks) of a mask table."""
    dropped_queries = set(masks.loc[masks["db_id"] == ANY, "query_id"])
    dropped_database = set(masks.loc[masks["query_id"] == ANY, "db_id"])
    pairs = masks[(masks["query_id"] != ANY) & (masks["db_id"] != ANY)]
    return dropped_queries, dropped_database, pairs
