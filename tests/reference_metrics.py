"""Recall@N, AP and P@k written again from their definitions, one plain loop per query.

An independent implementation for the tests to check the library against: it shares no
code with ``vprflow.metrics`` (no pandas, no numpy), so a bug there cannot hide here.
Rankings are ``{query_id: [db_id, ...]}`` best first; labels are
``{query_id: {db_id: label}}`` with the labels of ``vprflow.tables``.
"""

from __future__ import annotations

POSITIVE = ("positive", "easy", "hard")


def mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def rankings_of(neighbours) -> dict[str, list[str]]:
    """``{query_id: [db_id, ...]}`` in rank order, from a neighbours table's rows."""
    rows = sorted(zip(neighbours["query_id"], neighbours["rank"], neighbours["db_id"]), key=lambda r: (r[0], r[1]))
    ranked: dict[str, list[str]] = {}
    for query_id, _, db_id in rows:
        ranked.setdefault(query_id, []).append(db_id)
    return ranked


def labels_of(ground_truth) -> dict[str, dict[str, str]]:
    labels: dict[str, dict[str, str]] = {}
    for query_id, db_id, label in zip(ground_truth["query_id"], ground_truth["db_id"], ground_truth["label"]):
        labels.setdefault(query_id, {})[db_id] = label
    return labels


def recall_at(ranked: dict, labels: dict, n: int, positive=POSITIVE) -> float:
    """Share of the queries with at least one positive whose first n results hold one."""
    found, counted = 0, 0
    for query_id, by_db in labels.items():
        positives = {db_id for db_id, label in by_db.items() if label in positive}
        if not positives:
            continue
        counted += 1
        found += any(db_id in positives for db_id in ranked.get(query_id, [])[:n])
    return found / counted if counted else float("nan")


def average_precision(ranking: list, positives: set, junk: set = frozenset()) -> float:
    """AP by the Revisited Oxford/Paris rule: junk deleted first, then for the i-th positive
    (i = 0, 1, ...) found at 0-based position r, the mean of the precision before it
    (i / r, or 1 at r = 0) and at it ((i + 1) / (r + 1)); summed, divided by the number of
    positives (retrieved or not)."""
    positives = set(positives) - set(junk)
    if not positives:
        return float("nan")
    total, found, position = 0.0, 0, 0
    for db_id in ranking:
        if db_id in junk:
            continue
        if db_id in positives:
            before = found / position if position else 1.0
            total += (before + (found + 1) / (position + 1)) / 2
            found += 1
        position += 1
    return total / len(positives)


def plain_metrics(ranked: dict, labels: dict, ks) -> dict[str, float]:
    """mAP, mP@k and mR@k with ``positive`` as positives and ``junk`` deleted, over the
    queries with a positive; plus n_queries and n_excluded (queries ranked without one)."""
    aps, precision, recall = [], {k: [] for k in ks}, {k: [] for k in ks}
    excluded = 0
    for query_id, ranking in ranked.items():
        by_db = labels.get(query_id, {})
        positives = {db_id for db_id, label in by_db.items() if label == "positive"}
        junk = {db_id for db_id, label in by_db.items() if label == "junk"}
        if not positives:
            excluded += 1
            continue
        aps.append(average_precision(ranking, positives, junk))
        kept = [db_id for db_id in ranking if db_id not in junk]
        for k in ks:
            hits = sum(db_id in positives for db_id in kept[:k])
            precision[k].append(hits / k)
            recall[k].append(hits / len(positives))
    row = {"mAP": mean(aps)}
    row.update({f"mP@{k}": mean(v) for k, v in precision.items()})
    row.update({f"mR@{k}": mean(v) for k, v in recall.items()})
    row.update({"n_queries": len(aps), "n_excluded": excluded})
    return row


def precision_at(ranked: dict, labels: dict, k: int, positive=POSITIVE) -> float:
    """Mean over every ranked query of (positives among its first k) / k; no junk deletion."""
    values = []
    for query_id, ranking in ranked.items():
        by_db = labels.get(query_id, {})
        values.append(sum(by_db.get(db_id) in positive for db_id in ranking[:k]) / k)
    return mean(values)
