"""Retrieval metrics: mAP (Revisited Oxford/Paris protocols, plain positives), mP@k, mR@k,
precision@k, place-vote accuracy and recall@N curves.

Every metric reads a ``neighbours`` table (``query_id``, ``rank``, ``db_id``, ``score``;
K rows per query) and treats those K rows as the whole ranking: a positive that is not
among a query's K rows counts as *not retrieved* (it adds nothing to AP, precision or
recall, but still counts in the number of positives). Scores at small K are therefore
lower bounds of the scores over the full ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from vprflow.errors import InputError
from vprflow.logs import log

NEIGHBOUR_COLUMNS = ("query_id", "rank", "db_id", "score")
GROUND_TRUTH_COLUMNS = ("query_id", "db_id", "label")
GROUND_TRUTH_LABELS = frozenset({"positive", "easy", "hard", "junk"})

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
    """

    mean_ap: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    per_query_ap: pd.Series
    excluded_query_ids: tuple[str, ...]

    def as_row(self) -> dict[str, float | int]:
        """Flat record for a metrics table: mAP, mP@k, mR@k, n_queries, n_excluded."""
        row: dict[str, float | int] = {"mAP": self.mean_ap}
        row.update({f"mP@{k}": value for k, value in self.precision_at.items()})
        row.update({f"mR@{k}": value for k, value in self.recall_at.items()})
        row["n_queries"] = len(self.per_query_ap)
        row["n_excluded"] = len(self.excluded_query_ids)
        return row


def require_columns(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise InputError naming the table ``name`` and the columns it lacks."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")


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


def _positions(sorted_neighbours: pd.DataFrame) -> np.ndarray:
    """0-based position of each row within its query (ranks need not be contiguous)."""
    return sorted_neighbours.groupby("query_id", sort=False).cumcount().to_numpy()


def _check_ks(ks: Iterable[int], sorted_neighbours: pd.DataFrame, what: str = "ks") -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise InputError(f"{what} must be positive integers, got {ks}")
    shortest = int(sorted_neighbours.groupby("query_id", sort=False).size().min()) if len(sorted_neighbours) else 0
    if ks and max(ks) > shortest:
        raise InputError(f"{what}={ks} asks beyond the shortlist: the shortest neighbours list has K={shortest} rows")
    return ks


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


def _check_ground_truth(ground_truth: pd.DataFrame, sorted_neighbours: pd.DataFrame) -> pd.DataFrame:
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


def _labels_of_rows(sorted_neighbours: pd.DataFrame, ground_truth: pd.DataFrame) -> np.ndarray:
    """The ground-truth label of each neighbours row (NaN where the pair is unlabelled)."""
    labelled = sorted_neighbours[["query_id", "db_id"]].merge(ground_truth, on=["query_id", "db_id"], how="left")
    return labelled["label"].to_numpy(dtype=object)


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
    kept["position"] = _positions(kept) + 1
    kept["hit_count"] = kept.groupby("query_id", sort=False)["hit"].cumsum()
    hits = kept.loc[kept["hit"]]
    terms = pd.Series(
        _trapezoid_terms(hits["position"].to_numpy(), hits["hit_count"].to_numpy()), index=hits["query_id"].to_numpy()
    )
    n_positives = n_positives.loc[evaluated].astype(float)
    per_query_ap = terms.groupby(level=0).sum().reindex(evaluated, fill_value=0.0) / n_positives
    per_query_ap.index.name = "query_id"

    precision_at, recall_at = {}, {}
    for k in ks:
        hits_in_top_k = hits.loc[hits["position"] <= k].groupby("query_id").size().reindex(evaluated, fill_value=0)
        precision_at[k] = float((hits_in_top_k / k).mean()) if len(evaluated) else float("nan")
        recall_at[k] = float((hits_in_top_k / n_positives).mean()) if len(evaluated) else float("nan")

    if excluded:
        log.info("%d query(ies) without positives excluded from the means, e.g. %s", len(excluded), list(excluded[:5]))
    return RetrievalMetrics(
        mean_ap=float(per_query_ap.mean()) if len(evaluated) else float("nan"),
        precision_at=precision_at,
        recall_at=recall_at,
        per_query_ap=per_query_ap.rename("ap"),
        excluded_query_ids=excluded,
    )


def revisited_map(
    neighbours: pd.DataFrame, ground_truth: pd.DataFrame, ks: Iterable[int] = (1, 5, 10, 20)
) -> dict[str, RetrievalMetrics]:
    """mAP, mP@k and mR@k under the Easy, Medium and Hard Revisited Oxford/Paris protocols.

    Easy: positives = easy, junk = junk + hard. Medium: positives = easy + hard, junk = junk.
    Hard: positives = hard, junk = junk + easy. Junk rows are deleted from each ranking
    before any metric (see :func:`average_precision`). After that deletion
    P@k = (positives among the first k) / k and R@k = (positives among the first k) / npos;
    a list left with fewer than k rows counts the missing rows as non-positive.
    (The Revisited toolkit instead divides P@k by min(k, position of the last positive
    retrieved); this module uses the plain definition.) A query with no positive under a
    protocol is excluded from that protocol's means and listed in ``excluded_query_ids``.

    Returns ``{"easy": ..., "medium": ..., "hard": ...}``.
    """
    ranked = sort_neighbours(neighbours)
    ks = _check_ks(ks, ranked)
    ground_truth = _check_ground_truth(ground_truth, ranked)
    row_labels = _labels_of_rows(ranked, ground_truth)
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
    ks = _check_ks(ks, ranked)
    ground_truth = _check_ground_truth(ground_truth, ranked)
    return _evaluate(ranked, _labels_of_rows(ranked, ground_truth), ground_truth, ("positive",), ("junk",), ks)


def precision_at_k(neighbours: pd.DataFrame, is_positive: Sequence[bool] | np.ndarray | pd.Series, k: int) -> float:
    """Mean over all queries of (positive rows among the top k) / k.

    ``is_positive`` has one flag per neighbours row, in the table's row order (a Series
    is aligned on the table's index). Queries without positives count with P@k = 0.
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
    (k,) = _check_ks((k,), ranked, "k")
    in_top_k = ranked["_positive"].to_numpy() & (_positions(ranked) < k)
    hits = pd.Series(in_top_k).groupby(ranked["query_id"].to_numpy(), sort=False).sum()
    return float((hits / k).mean())


def _as_series(mapping: Mapping | pd.Series, name: str) -> pd.Series:
    return mapping if isinstance(mapping, pd.Series) else pd.Series(dict(mapping), name=name, dtype=object)


def place_votes(neighbours: pd.DataFrame, db_places: Mapping | pd.Series, k: int | None = None) -> pd.DataFrame:
    """Place vote over each query's top k (all rows when k is None).

    Returns one row per (query_id, place) with ``votes`` (images of that place),
    ``best_position`` (0-based position of its best-ranked image) and ``place_rank``
    (0 = winner): most votes first, ties broken by the better best position.
    """
    ranked = sort_neighbours(neighbours)
    positions = _positions(ranked)
    if k is not None:
        (k,) = _check_ks((k,), ranked, "k")
        ranked, positions = ranked.loc[positions < k], positions[positions < k]
    places = _as_series(db_places, "place").reindex(ranked["db_id"].to_numpy())
    if places.isna().any():
        missing = sorted(set(ranked["db_id"].to_numpy()[places.isna().to_numpy()]))
        raise InputError(f"db_places has no place for {len(missing)} db_id(s), e.g. {missing[:5]}")
    votes = (
        pd.DataFrame({"query_id": ranked["query_id"].to_numpy(), "place": places.to_numpy(), "position": positions})
        .groupby(["query_id", "place"], sort=False)
        .agg(votes=("position", "size"), best_position=("position", "min"))
        .reset_index()
    )
    votes = votes.sort_values(["query_id", "votes", "best_position"], ascending=[True, False, True], kind="stable")
    votes["place_rank"] = votes.groupby("query_id", sort=False).cumcount()
    return votes.reset_index(drop=True)


def place_vote_accuracy(
    neighbours: pd.DataFrame, query_places: Mapping | pd.Series, db_places: Mapping | pd.Series, k: int
) -> float:
    """Share of queries whose top-k place vote (see :func:`place_votes`) is their own place.

    With k = 1 this is plain top-1 place accuracy.
    """
    winners = place_votes(neighbours, db_places, k).query("place_rank == 0").set_index("query_id")["place"]
    truth = _as_series(query_places, "place").reindex(winners.index)
    if truth.isna().any():
        missing = list(winners.index[truth.isna().to_numpy()])
        raise InputError(f"query_places has no place for {len(missing)} query id(s), e.g. {missing[:5]}")
    return float((winners.to_numpy() == truth.to_numpy()).mean())


def recall_curve(
    neighbours: pd.DataFrame,
    ground_truth: pd.DataFrame,
    max_n: int,
    positive_labels: Collection[str] = ("positive",),
) -> np.ndarray:
    """R@1..R@max_n: share of queries with a positive among their top N (VPR recall@N).

    Only queries with at least one positive in ``ground_truth`` count; no junk removal.
    Returns a float array of length ``max_n`` (index 0 is R@1).
    """
    ranked = sort_neighbours(neighbours)
    (max_n,) = _check_ks((max_n,), ranked, "max_n")
    ground_truth = _check_ground_truth(ground_truth, ranked)
    positive_pairs = ground_truth.loc[ground_truth["label"].isin(list(positive_labels))]
    with_positives = pd.unique(positive_pairs["query_id"])
    if len(with_positives) == 0:
        raise InputError(f"ground truth has no {list(positive_labels)} rows: recall@N is undefined")
    n_without = ranked["query_id"].nunique() - len(with_positives)
    if n_without:
        log.info("recall@N: %d query(ies) without positives left out", n_without)

    hit = pd.notna(_labels_of_rows(ranked, positive_pairs))
    first_hit = (
        pd.Series(np.where(hit, _positions(ranked), np.iinfo(np.int64).max))
        .groupby(ranked["query_id"].to_numpy())
        .min()
        .reindex(with_positives)
        .to_numpy()
    )
    return (first_hit[None, :] < np.arange(1, max_n + 1)[:, None]).mean(axis=1)
