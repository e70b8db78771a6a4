"""Recall@N: a query counts as found at N when one of its first N results is a positive."""

from __future__ import annotations

import numpy as np
import pandas as pd

POSITIVE_LABELS = ("positive", "easy", "hard")


def first_hit_ranks(neighbours: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.Series:
    """Per query with at least one positive: 0-based rank of the first positive (inf if none)."""
    positives = ground_truth[ground_truth["label"].isin(POSITIVE_LABELS)]
    queries = positives["query_id"].unique()
    hits = neighbours.merge(positives[["query_id", "db_id"]], on=["query_id", "db_id"])
    first = hits.groupby("query_id")["rank"].min()
    return first.reindex(queries).astype("float64").fillna(np.inf)


def recall_at(neighbours: pd.DataFrame, ground_truth: pd.DataFrame, ns) -> dict[str, float]:
    """``{"R@1": ..., ...}`` over queries that have a positive, plus ``n_queries``."""
    first = first_hit_ranks(neighbours, ground_truth).to_numpy()
    result = {f"R@{n}": float(np.mean(first < n)) if len(first) else float("nan") for n in ns}
    result["n_queries"] = int(len(first))
    return result


def chance_recall(ground_truth: pd.DataFrame, n_database: int, ns) -> dict[str, float]:
    """Expected recall of a random ranking: 1 - C(D-p, N)/C(D, N) averaged over queries."""
    positives = ground_truth[ground_truth["label"].isin(POSITIVE_LABELS)].groupby("query_id").size().to_numpy()
    result = {}
    for n in ns:
        miss = np.ones(len(positives))
        for i in range(min(n, n_database)):
            miss *= np.clip((n_database - positives - i) / (n_database - i), 0, 1)
        result[f"R@{n}"] = float(np.mean(1 - miss)) if len(positives) else float("nan")
    return result
