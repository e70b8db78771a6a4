"""Query expansion and database-side augmentation: new vectors from the neighbours' vectors,
then an exact search again.

alpha-QE and DBA (Radenovic et al., TPAMI 2019) are pure functions on float arrays that
return new L2-normalised float32 vectors in the same row order; the re-ranking steps
around them load the model's vectors and search again exactly, masks applied.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pandas as pd

from ..errors import InputError
from ..registry import positive_number, whole_number
from ..search.run import find_neighbours
from ..tables import neighbours_to_index, read_ids, select_rows
from ..vectors import l2_normalise


def _inner_product_search(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries) x k) of the k database rows with the largest inner product."""
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(queries, k)[1]


def _expand(anchors: np.ndarray, database: np.ndarray, neighbour_index: np.ndarray, alpha: float) -> np.ndarray:
    """normalise(anchor + sum_j max(anchor . d_j, 0)^alpha d_j) over each row's neighbours d_j.

    The anchor's own weight is 1 (= (anchor . anchor)^alpha for a unit vector). Index -1
    means "no neighbour". Rows are processed in chunks to bound the gathered block.
    """
    expanded = np.empty_like(anchors)
    n_neighbours = max(neighbour_index.shape[1], 1)
    chunk = max(1, 2**24 // (n_neighbours * anchors.shape[1]))
    for start in range(0, len(anchors), chunk):
        stop = start + chunk
        index = neighbour_index[start:stop]
        valid = index >= 0
        gathered = database[np.where(valid, index, 0)]
        similarity = np.einsum("cd,cnd->cn", anchors[start:stop], gathered)
        weights = np.where(valid, np.maximum(similarity, 0.0) ** alpha, 0.0).astype(np.float32)
        expanded[start:stop] = anchors[start:stop] + np.einsum("cn,cnd->cd", weights, gathered)
    return l2_normalise(expanded)


def _check_vectors(vectors: np.ndarray, name: str) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"{name} must be a non-empty 2-D array (rows = images), got shape {vectors.shape}")
    return l2_normalise(vectors)




def alpha_query_expansion(
    query_vecs: np.ndarray,
    db_vecs: np.ndarray,
    n: int = 2,
    alpha: float = 3.0,
    neighbour_index: np.ndarray | None = None,
) -> np.ndarray:
    """alpha-QE (Radenovic et al., TPAMI 2019): each query becomes
    normalise(q + sum_{i<=n} max(q . d_i, 0)^alpha d_i) over its top-n database vectors d_i.

    Vectors are L2-normalised first. The top n come from ``neighbour_index`` (rows of
    ``db_vecs`` per query in rank order, e.g. from :func:`neighbours_to_index`; its first n
    columns are used) or, when None, from an exact faiss inner-product search. Returns new
    query vectors (float32, unit norm, same row order).
    """
    queries = _check_vectors(query_vecs, "query_vecs")
    database = _check_vectors(db_vecs, "db_vecs")
    if queries.shape[1] != database.shape[1]:
        raise InputError(f"query_vecs have dimension {queries.shape[1]} but db_vecs {database.shape[1]}")
    if not 1 <= n <= len(database):
        raise InputError(f"alpha-QE n={n} must be between 1 and the number of database vectors ({len(database)})")
    if neighbour_index is None:
        neighbour_index = _inner_product_search(queries, database, n)
    else:
        neighbour_index = np.asarray(neighbour_index)
        if neighbour_index.ndim != 2 or neighbour_index.shape[0] != len(queries) or neighbour_index.shape[1] < n:
            raise InputError(f"neighbour_index has shape {neighbour_index.shape}; expected ({len(queries)}, >= n={n})")
        if neighbour_index.max() >= len(database) or neighbour_index.min() < -1:
            raise InputError(f"neighbour_index holds rows outside db_vecs (0..{len(database) - 1}, or -1 for none)")
    return _expand(queries, database, neighbour_index[:, :n], alpha)


def database_side_augmentation(db_vecs: np.ndarray, k: int, alpha: float = 3.0) -> np.ndarray:
    """DBA: each database vector d becomes normalise(d + sum_{j<=k} max(d . d_j, 0)^alpha d_j)
    over its k nearest *other* database vectors (exact faiss inner-product search on the
    L2-normalised vectors). Returns new database vectors (float32, unit norm, same order).
    """
    database = _check_vectors(db_vecs, "db_vecs")
    if not 1 <= k < len(database):
        raise InputError(f"DBA k={k} must be between 1 and the number of database vectors - 1 ({len(database) - 1})")
    found = _inner_product_search(database, database, k + 1)
    is_other = found != np.arange(len(database))[:, None]
    others_first = np.argsort(~is_other, axis=1, kind="stable")[:, :k]
    return _expand(database, database, np.take_along_axis(found, others_first, axis=1), alpha)


def _search_again(neighbours: pd.DataFrame, inputs, expand) -> pd.DataFrame:
    """Load the model's query and database vectors, let ``expand(queries, database, query_ids,
    db_ids)`` return new ones, and search them exactly for as many results as before."""
    k = int(neighbours.groupby("query_id").size().max())
    vectors, all_ids = np.load(inputs.vectors_path, mmap_mode="r"), read_ids(inputs.ids_path)
    split = inputs.split
    db_rows = select_rows(all_ids, split.loc[split["is_database"], "image_id"])
    q_rows = select_rows(all_ids, pd.unique(neighbours["query_id"]))
    db_ids, query_ids = all_ids[db_rows], all_ids[q_rows]
    queries, database = expand(np.asarray(vectors[q_rows], dtype=np.float32),
                               np.asarray(vectors[db_rows], dtype=np.float32), query_ids, db_ids)
    exact = {"backend": "exact", "metric": "ip", "k": k}
    return find_neighbours(exact, None, database, db_ids, queries, query_ids, inputs.masks)


class AlphaQueryExpansion:
    """``method: alpha_qe``: each query expanded by its top n of the ranking being re-ranked."""

    DEFAULTS: dict[str, Any] = {"n": 2, "alpha": 3.0}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        whole_number(settings, "n")
        positive_number(settings, "alpha")

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        def expand(queries, database, query_ids, db_ids):
            index = neighbours_to_index(neighbours, query_ids, db_ids)
            return alpha_query_expansion(queries, database, settings["n"], settings["alpha"], index), database

        return _search_again(neighbours, inputs, expand)


class DatabaseAugmentation:
    """``method: dba``: database vectors augmented by their k nearest others, then optional alpha-QE."""

    DEFAULTS: dict[str, Any] = {"k": 2, "alpha": 3.0, "qe_n": 0}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        whole_number(settings, "k")
        whole_number(settings, "qe_n", minimum=0)
        positive_number(settings, "alpha")

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        def expand(queries, database, query_ids, db_ids):
            database = database_side_augmentation(database, settings["k"], settings["alpha"])
            if settings["qe_n"]:
                queries = alpha_query_expansion(queries, database, settings["qe_n"], settings["alpha"])
            return queries, database

        return _search_again(neighbours, inputs, expand)
