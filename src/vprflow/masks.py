"""Masks: (query, database) pairs that search must never return.

* ``self``: a query that is also in the database (role ``both``) must not find itself;
* ``duplicate``: a database file byte-identical to the query (same sha256), a copy
  of the same source under another name.

Every backend applies the same mask table.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["query_id", "db_id", "reason"]


def build_masks(images: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    table = images[["image_id", "sha256"]].merge(split[["image_id", "is_query", "is_database"]], on="image_id")
    queries, database = table[table["is_query"]], table[table["is_database"]]
    same = queries.merge(database, on="sha256", suffixes=("_q", "_d"))
    masks = pd.DataFrame({"query_id": same["image_id_q"], "db_id": same["image_id_d"]})
    masks["reason"] = ["self" if q == d else "duplicate" for q, d in zip(masks["query_id"], masks["db_id"])]
    return masks.sort_values(["query_id", "db_id"]).reset_index(drop=True)[COLUMNS]
