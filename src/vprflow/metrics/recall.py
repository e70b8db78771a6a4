"""Recall@N: a query counts as found at N when one of its first N results is a positive."""

from __future__ import annotations

from typing import Collection

import numpy as np
import pandas as pd

from ..errors import InputError
from ..logs import log
from ..tables import POSITIVE_LABELS, check_ground_truth, check_ks, labels_of_rows, positions_in_list, sort_neighbours


def first_hit_ranks(neighbours: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.Series:
    """Per query with at least one positive: 0-based rank of the first positive (inf if none)."""
    positives = ground_truth[ground_truth["label"].isin(POSITIVE_LABELS)]
    queries = positives["query_id"].unique()
    hits = neighbours.merge(positives[["query_id", "db_id"]], on=["query_id", "db_id"])
    first = hits.groupby("query_id")["rank"].min()
    return first.reindex(queries).astype("float64").fillna(np.inf)


def rank_changes(reranked: pd.DataFrame, base: pd.DataFrame, ground_truth: pd.DataFrame) -> dict[str, int]:
    """What a re-ranking did to each query's first correct result: ``improved`` counts the
    queries whose first positive moved up (or appeared) against ``base``, the ranking it
    re-ranked; ``worse`` those whose first positive moved down (or left the list).

    Only queries with a positive count; both rankings are compared by 0-based rank.
    """
    before = first_hit_ranks(base, ground_truth)
    after = first_hit_ranks(reranked, ground_truth).reindex(before.index, fill_value=np.inf)
    return {"improved": int((after < before).sum()), "worse": int((after > before).sum())}


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


def recall_curve(
    neighbours: pd.DataFrame,
    ground_truth: pd.DataFrame,
    max_n: int,
    positive_labels: Collection[str] = ("positive",),
) -> np.ndarray:
    """R@1..R@max_n: share of queries with a positive among their top N (VPR recall@N).

    Only queries with at least one positive in ``ground_truth`` count; no junk removal. A list
    shorter than N has no positive in its missing rows. Returns a float array of length
    ``max_n`` (index 0 is R@1).
    """
    ranked = sort_neighbours(neighbours)
    (max_n,) = check_ks((max_n,), ranked, "max_n")
    ground_truth = check_ground_truth(ground_truth, ranked)
    positive_pairs = ground_truth.loc[ground_truth["label"].isin(list(positive_labels))]
    with_positives = pd.unique(positive_pairs["query_id"])
    if len(with_positives) == 0:
        raise InputError(f"ground truth has no {list(positive_labels)} rows: recall@N is undefined")
    n_without = ranked["query_id"].nunique() - len(with_positives)
    if n_without:
        log.info("recall@N: %d query(ies) without positives left out", n_without)

    hit = pd.notna(labels_of_rows(ranked, positive_pairs))
    first_hit = (
        pd.Series(np.where(hit, positions_in_list(ranked), np.iinfo(np.int64).max))
        .groupby(ranked["query_id"].to_numpy())
        .min()
        .reindex(with_positives)
        .to_numpy()
    )
    return (first_hit[None, :] < np.arange(1, max_n + 1)[:, None]).mean(axis=1)
