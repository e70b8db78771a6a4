"""Re-ranking steps by name (``reranks.<name>.method`` in the config).

Each step reads a (model, search) ranking and writes a new one in the same
``query_id rank db_id score`` schema, evaluated as its own row ``<search>+<name>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .extract import read_ids
from .rerank import (alpha_query_expansion, database_side_augmentation, label_rerank, neighbours_to_index,
                     spatial_verification)
from .search.run import search_block, select_rows

DEFAULTS: dict[str, dict[str, Any]] = {
    "label": {},
    "spatial": {"top_r": 20, "geometry": "homography", "max_side": 640, "ratio": 0.8},
    "alpha_qe": {"n": 2, "alpha": 3.0},
    "dba": {"k": 2, "alpha": 3.0, "qe_n": 0},
}


def check_settings(name: str, settings: dict[str, Any]) -> None:
    method = settings.get("method")
    if method not in DEFAULTS:
        raise InputError(f"reranks.{name}.method: unknown {method!r}; known: {sorted(DEFAULTS)}")
    unknown = set(settings) - {"method"} - set(DEFAULTS[method])
    if unknown:
        raise InputError(f"reranks.{name}: unknown setting(s) {sorted(unknown)} for {method}; "
                         f"known: {sorted(DEFAULTS[method])}")
    if method == "spatial" and settings.get("geometry", "homography") not in ("homography", "fundamental"):
        raise InputError(f"reranks.{name}.geometry: use homography or fundamental")


def rerank(neighbours: pd.DataFrame, settings: dict[str, Any], manifest: pd.DataFrame, root: str | Path,
           split: pd.DataFrame, masks: pd.DataFrame, vectors_path, ids_path, workers: int) -> pd.DataFrame:
    method = settings["method"]
    options = {**DEFAULTS[method], **{k: v for k, v in settings.items() if k != "method"}}
    if method == "label":
        return label_rerank(neighbours, manifest.set_index("image_id")["place"].dropna())
    if method == "spatial":
        paths = {i: str(Path(root) / p) for i, p in zip(manifest["image_id"], manifest["path"])}
        return spatial_verification(neighbours, paths, options["top_r"], method=options["geometry"],
                                    max_side=options["max_side"], ratio=options["ratio"], workers=workers)
    # Query expansion and DBA change the vectors, then search again exactly.
    k = int(neighbours.groupby("query_id").size().max())
    vectors, all_ids = np.load(vectors_path, mmap_mode="r"), read_ids(ids_path)
    db_rows = select_rows(all_ids, split.loc[split["is_database"], "image_id"])
    q_rows = select_rows(all_ids, pd.unique(neighbours["query_id"]))
    db_ids, query_ids = all_ids[db_rows], all_ids[q_rows]
    database = np.asarray(vectors[db_rows], dtype=np.float32)
    queries = np.asarray(vectors[q_rows], dtype=np.float32)
    if method == "alpha_qe":
        index = neighbours_to_index(neighbours, query_ids, db_ids)
        queries = alpha_query_expansion(queries, database, options["n"], options["alpha"], index)
    else:
        database = database_side_augmentation(database, options["k"], options["alpha"])
        if options["qe_n"]:
            queries = alpha_query_expansion(queries, database, options["qe_n"], options["alpha"])
    exact = {"backend": "exact", "metric": "ip", "k": k}
    return search_block(exact, None, database, db_ids, queries, query_ids, masks)
