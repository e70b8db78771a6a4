"""Precision@k of a ranking, and leave-one-out precision@k of descriptors by label."""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np
import pandas as pd

from ..errors import InputError
from ..tables import check_ks, positions_in_list, sort_neighbours


def precision_at_k(neighbours: pd.DataFrame, is_positive: Sequence[bool] | np.ndarray | pd.Series, k: int) -> float:
    """Mean over all queries of (positive rows among the top k) / k.

    ``is_positive`` has one flag per neighbours row, in the table's row order (a Series
    is aligned on the table's index). Queries without positives count with P@k = 0, and a list
    shorter than k has no positive in its missing rows.
    """
    if isinstance(is_positive, pd.Series):
        flags = is_positive.reindex(neighbours.index)
        if flags.isna().any():
            raise InputError("is_positive (a Series) lacks flags for some neighbours rows")
    else:
        flags = np.asarray(is_positive)
        if flags.shape != (len(neighbours),):
            raise InputError(
                f"is_positive has shape {flags.shape}, expected one flag per neighbours row ({len(neighbours)})"
            )
    with_flags = neighbours.assign(_positive=np.asarray(flags, dtype=bool))
    ranked = sort_neighbours(with_flags)
    (k,) = check_ks((k,), ranked, "k")
    in_top_k = ranked["_positive"].to_numpy() & (positions_in_list(ranked) < k)
    hits = pd.Series(in_top_k).groupby(ranked["query_id"].to_numpy(), sort=False).sum()
    return float((hits / k).mean())


def leave_one_out_precision(descriptors: np.ndarray, labels: pd.Series, k: int = 5) -> tuple[float, int]:
    """For each labelled image, the share of its k nearest other labelled images (inner
    product) that carry its label, averaged. Returns (P@k, number of images averaged)."""
    known = labels.notna().to_numpy()
    vectors = np.ascontiguousarray(descriptors[known], dtype=np.float32)
    values = labels[known].astype(str).to_numpy()
    if len(values) < 2:
        return float("nan"), int(len(values))
    k = min(k, len(values) - 1)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors, k + 1)
    hits = []
    for i, rows in enumerate(found):
        others = rows[(rows != i) & (rows >= 0)][:k]
        hits.append(np.mean(values[others] == values[i]))
    return float(np.mean(hits)), int(len(values))
