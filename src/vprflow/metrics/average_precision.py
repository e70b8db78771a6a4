"""Mean average precision with mP@k and mR@k: the Revisited Oxford/Paris protocols
(Easy / Medium / Hard) and plain positives.

Every metric reads a ``neighbours`` table (``query_id``, ``rank``, ``db_id``, ``score``;
K rows per query) and treats those K rows as the whole ranking: a positive that is not
among a query's K rows counts as *not retrieved* (it adds nothing to AP, precision or
recall, but still counts in the number of positives). Scores at small K are therefore
lower bounds of the scores over the full ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Hashable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..logs import log
from ..tables import check_ground_truth, check_ks, labels_of_rows, positions_in_list, sort_neighbours

# Revisited Oxford/Paris (Radenovic et al., CVPR 2018): protocol -> (positive labels, junk labels).
REVISITED_PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


@dataclass(frozen=True)
class RetrievalMetrics:
    """Means over the evaluated queries (those with at least one positive).

    ``per_query_ap`` is indexed by query_id (evaluated queries only);
    ``excluded_query_ids`` are the queries without any positive, left out of every mean.
    ``precision_at`` is plain P@k = (positives among the first k) / k;
    ``toolkit_precision_at`` is P@k as the Revisited Oxford/Paris toolkit computes it:
    divided by k' = min(k, p_last), p_last the position of the last positive retrieved,
    so P = (positives among the first k') / k' (0 when no positive is retrieved). A query
    whose positives all lie in its top k scores 1 there whatever k is, npos / k here.
    """

    mean_ap: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    per_query_ap: pd.Series
    excluded_query_ids: tuple[str, ...]
    toolkit_precision_at: dict[int, float] = field(default_factory=dict)

    def as_row(self) -> dict[str, float | int]:
        """Flat record for a metrics table: mAP, mP@k, mP@k_toolkit, mR@k, n_queries, n_excluded."""
        row: dict[str, float | int] = {"mAP": self.mean_ap}
        row.update({f"mP@{k}": value for k, value in self.precision_at.items()})
        row.update({f"mP@{k}_toolkit": value for k, value in self.toolkit_precision_at.items()})
        row.update({f"mR@{k}": value for k, value in self.recall_at.items()})
        row["n_queries"] = len(self.per_query_ap)
        row["n_excluded"] = len(self.excluded_query_ids)
        return row


def _trapezoid_terms(positions: np.ndarray, hit_counts: np.ndarray) -> np.ndarray:
    """AP term of each retrieved positive: (P(p-1) + P(p)) / 2 with P(0) = 1.

    ``positions`` are 1-based positions p of the positives in the junk-free ranking and
    ``hit_counts`` the 1-based count i of positives up to and including p, so
    P(p) = i / p and P(p-1) = (i-1) / (p-1).
    """
    precision_before = np.where(positions > 1, (hit_counts - 1) / np.maximum(positions - 1, 1), 1.0)
    return (precision_before + hit_counts / positions) / 2.0


def average_precision(ranked_db_ids: Sequence[Hashable], positives: Collection, junk: Collection = ()) -> float:
    """AP of one ranked list by the Revisited Oxford/Paris rule.

    Junk images are deleted from the ranking first. With the positives found at 1-based
    positions p_1 < p_2 < ... < p_m of the junk-free list and npos = |positives - junk|:

        AP = 1/npos * sum_{i=1..m} ( P(p_i - 1) + P(p_i) ) / 2,
        P(p) = (positives among the first p) / p,  P(0) = 1,

    i.e. P(p_i) = i / p_i and P(p_i - 1) = (i - 1) / (p_i - 1). Positives absent from
    ``ranked_db_ids`` (e.g. beyond the K retrieved) contribute 0 but count in npos.
    Returns NaN when there is no positive (AP undefined; callers exclude such queries).
    """
    junk = set(junk)
    positives = set(positives) - junk
    if not positives:
        return float("nan")
    kept = [db_id for db_id in ranked_db_ids if db_id not in junk]
    hits = np.fromiter((db_id in positives for db_id in kept), dtype=bool, count=len(kept))
    positions = np.flatnonzero(hits) + 1
    hit_counts = np.arange(1, len(positions) + 1)
    return float(_trapezoid_terms(positions, hit_counts).sum() / len(positives))


def _evaluate(
    sorted_neighbours: pd.DataFrame,
    row_labels: np.ndarray,
    ground_truth: pd.DataFrame,
    positive_labels: Collection[str],
    junk_labels: Collection[str],
    ks: tuple[int, ...],
) -> RetrievalMetrics:
    queries = pd.unique(sorted_neighbours["query_id"])
    n_positives = (
        ground_truth.loc[ground_truth["label"].isin(list(positive_labels)), "query_id"]
        .value_counts()
        .reindex(queries, fill_value=0)
    )
    evaluated = n_positives.index[n_positives.to_numpy() > 0]
    excluded = tuple(str(query) for query in n_positives.index[n_positives.to_numpy() == 0])

    keep = ~pd.Series(row_labels).isin(list(junk_labels)).to_numpy()
    kept = pd.DataFrame(
        {
            "query_id": sorted_neighbours["query_id"].to_numpy()[keep],
            "hit": pd.Series(row_labels[keep]).isin(list(positive_labels)).to_numpy(),
        }
    )
    kept["position"] = positions_in_list(kept) + 1
    kept["hit_count"] = kept.groupby("query_id", sort=False)["hit"].cumsum()
    hits = kept.loc[kept["hit"]]
    terms = pd.Series(
        _trapezoid_terms(hits["position"].to_numpy(), hits["hit_count"].to_numpy()), index=hits["query_id"].to_numpy()
    )
    n_positives = n_positives.loc[evaluated].astype(float)
    per_query_ap = terms.groupby(level=0).sum().reindex(evaluated, fill_value=0.0) / n_positives
    per_query_ap.index.name = "query_id"

    precision_at, recall_at, toolkit_precision_at = {}, {}, {}
    last_hit = hits.groupby("query_id")["position"].max().reindex(evaluated)  # NaN: no positive retrieved
    for k in ks:
        hits_in_top_k = hits.loc[hits["position"] <= k].groupby("query_id").size().reindex(evaluated, fill_value=0)
        precision_at[k] = float((hits_in_top_k / k).mean()) if len(evaluated) else float("nan")
        recall_at[k] = float((hits_in_top_k / n_positives).mean()) if len(evaluated) else float("nan")
        cut = np.minimum(last_hit, k)  # the toolkit's k' = min(k, position of the last positive retrieved)
        within_cut = hits["position"].to_numpy() <= hits["query_id"].map(cut).to_numpy()
        hits_in_cut = hits.loc[within_cut].groupby("query_id").size().reindex(evaluated, fill_value=0)
        toolkit = (hits_in_cut / cut).fillna(0.0)
        toolkit_precision_at[k] = float(toolkit.mean()) if len(evaluated) else float("nan")

    if excluded:
        log.info("%d query(ies) without positives excluded from the means, e.g. %s", len(excluded), list(excluded[:5]))
    return RetrievalMetrics(
        mean_ap=float(per_query_ap.mean()) if len(evaluated) else float("nan"),
        precision_at=precision_at,
        recall_at=recall_at,
        per_query_ap=per_query_ap.rename("ap"),
        excluded_query_ids=excluded,
        toolkit_precision_at=toolkit_precision_at,
    )


def revisited_map(
    neighbours: pd.DataFrame, ground_truth: pd.DataFrame, ks: Iterable[int] = (1, 5, 10, 20)
) -> dict[str, RetrievalMetrics]:
    """mAP, mP@k and mR@k under the Easy, Medium and Hard Revisited Oxford/Paris protocols.

    Easy: positives = easy, junk = junk + hard. Medium: positives = easy + hard, junk = junk.
    Hard: positives = hard, junk = junk + easy. Junk rows are deleted from each ranking
    before any metric (see :func:`average_precision`). After that deletion
    P@k = (positives among the first k) / k and R@k = (positives among the first k) / npos;
    a list left with fewer than k rows counts the missing rows as non-positive. The
    Revisited toolkit's P@k, which divides by min(k, position of the last positive
    retrieved) instead (see :class:`RetrievalMetrics`), is given beside it
    (``toolkit_precision_at``, column ``mP@k_toolkit``). A query with no positive under a
    protocol is excluded from that protocol's means and listed in ``excluded_query_ids``.

    Returns ``{"easy": ..., "medium": ..., "hard": ...}``.
    """
    ranked = sort_neighbours(neighbours)
    ks = check_ks(ks, ranked)
    ground_truth = check_ground_truth(ground_truth, ranked)
    row_labels = labels_of_rows(ranked, ground_truth)
    return {
        protocol: _evaluate(ranked, row_labels, ground_truth, positive_labels, junk_labels, ks)
        for protocol, (positive_labels, junk_labels) in REVISITED_PROTOCOLS.items()
    }


def plain_map(
    neighbours: pd.DataFrame, ground_truth: pd.DataFrame, ks: Iterable[int] = (1, 5, 10, 20)
) -> RetrievalMetrics:
    """mAP, mP@k and mR@k with ``positive`` labels as positives and ``junk`` rows deleted.

    Same definitions as :func:`revisited_map`; queries without positives are excluded.
    """
    ranked = sort_neighbours(neighbours)
    ks = check_ks(ks, ranked)
    ground_truth = check_ground_truth(ground_truth, ranked)
    return _evaluate(ranked, labels_of_rows(ranked, ground_truth), ground_truth, ("positive",), ("junk",), ks)
