"""Shortlists shorter than k are normal: a mask removed a candidate, or k is at or above the
database size. Every metric, curve and picture takes them; a missing row counts as a
non-positive (before: `max_n=(328,) asks beyond the shortlist: the shortest neighbours list has
K=327 rows` stopped the evaluation)."""

import numpy as np
import pandas as pd
import pytest

from conftest import neighbours_from
from vprflow.errors import InputError
from vprflow.metrics.average_precision import plain_map
from vprflow.metrics.precision import precision_at_k
from vprflow.metrics.recall import recall_curve
from vprflow.metrics.votes import place_vote_accuracy
from vprflow.tables import check_ks

# q1 has three results, q2 (one candidate masked) two; positives: q1 <- b, q2 <- y.
LISTS = {"q1": ["a", "b", "c"], "q2": ["y", "x"]}
TRUTH = pd.DataFrame({"query_id": ["q1", "q2"], "db_id": ["b", "y"], "label": "positive"})


def test_ks_beyond_the_shortest_list_are_accepted_and_non_positive_ks_refused():
    ranked = neighbours_from(LISTS)
    assert check_ks([1, 3, 10], ranked) == (1, 3, 10)
    with pytest.raises(InputError, match="must be positive"):
        check_ks([0, 3], ranked)


def test_recall_curve_past_the_shortest_list():
    # q1 finds its positive at position 2, q2 at 1: R@1 = 1/2, R@2.. = 1, also at N = 4 beyond both lists.
    curve = recall_curve(neighbours_from(LISTS), TRUTH, 4)
    np.testing.assert_allclose(curve, [0.5, 1.0, 1.0, 1.0])


def test_precision_counts_missing_rows_as_non_positive():
    neighbours = neighbours_from(LISTS)
    positive = np.array([False, True, False, True, False])  # rows in table order: a b c | y x
    # P@3: q1 1/3, q2 1/3 (two rows, the third missing) -> 1/3.
    assert precision_at_k(neighbours, positive, 3) == pytest.approx(1 / 3)
    # P@5: both lists shorter: q1 1/5, q2 1/5.
    assert precision_at_k(neighbours, positive, 5) == pytest.approx(1 / 5)


def test_map_precision_and_recall_at_k_beyond_the_lists():
    metrics = plain_map(neighbours_from(LISTS), TRUTH, ks=(1, 3))
    # AP: q1 positive at 2: (P(1) + P(2)) / 2 = (0 + 1/2) / 2 = 1/4; q2 at 1: 1. mAP = 5/8.
    assert metrics.mean_ap == pytest.approx(5 / 8)
    assert metrics.precision_at == pytest.approx({1: 0.5, 3: 1 / 3})
    assert metrics.recall_at == pytest.approx({1: 0.5, 3: 1.0})


def test_place_votes_over_a_k_beyond_a_list():
    places = {"a": "A", "b": "B", "c": "B", "x": "X", "y": "Y"}
    # Top 3: q1 votes B (b, c) over A; q2 has two rows, one vote each, y ranked first wins.
    accuracy = place_vote_accuracy(neighbours_from(LISTS), {"q1": "B", "q2": "Y"}, places, 3)
    assert accuracy == 1.0


def evaluate_stage(tmp_path, lists, truth, settings=None):
    from vprflow import stages

    ids = sorted({q for q in lists} | {d for ranked in lists.values() for d in ranked} | set(truth["db_id"]))
    neighbours_from(lists).to_parquet(tmp_path / "neighbours.parquet") if lists else \
        pd.DataFrame({"query_id": pd.Series(dtype=str), "rank": pd.Series(dtype="int64"),
                      "db_id": pd.Series(dtype=str), "score": pd.Series(dtype="float32")}).to_parquet(
            tmp_path / "neighbours.parquet")
    truth.to_parquet(tmp_path / "truth.parquet")
    pd.DataFrame({"image_id": ids, "is_database": [not i.startswith("q") for i in ids],
                  "is_query": [i.startswith("q") for i in ids], "split": "test"}).to_parquet(tmp_path / "split.parquet")
    pd.DataFrame({"image_id": ids, "place": pd.Series([None] * len(ids), dtype="string"),
                  "path": [f"{i}.jpg" for i in ids]}).to_parquet(tmp_path / "manifest.parquet")
    settings = settings or {"recall_at": [1, 5], "map_at": [1, 5], "precision_at": [1, 5]}
    outputs = {name: tmp_path / f"{name}.tsv" for name in ("recall", "map", "precision", "curve")}
    stages.evaluate(neighbours=tmp_path / "neighbours.parquet", truth=tmp_path / "truth.parquet",
                    split=tmp_path / "split.parquet", manifest=tmp_path / "manifest.parquet", settings=settings,
                    model="m", ranking="r", **outputs)
    return {name: pd.read_csv(path, sep="\t") for name, path in outputs.items()}


def test_evaluate_takes_lists_of_different_lengths(tmp_path):
    tables = evaluate_stage(tmp_path, LISTS, TRUTH)
    assert tables["recall"].loc[0, ["R@1", "R@5"]].tolist() == [0.5, 1.0]
    assert tables["curve"]["recall"].tolist() == [0.5, 1.0, 1.0]  # up to the longest list
    assert tables["map"].loc[0, "mP@1"] == 0.5


def test_pictures_of_a_ranking_without_queries(tmp_path):
    """A ranking where masks left no query (min_class_size) still gets its grid and curve."""
    from vprflow import stages

    tables = evaluate_stage(tmp_path, {}, TRUTH.iloc[:0])
    assert tables["recall"].loc[0, "n_queries"] == 0 and len(tables["curve"]) == 0
    stages.pictures(neighbours=tmp_path / "neighbours.parquet", truth=tmp_path / "truth.parquet",
                    curve=tmp_path / "curve.tsv", manifest=tmp_path / "manifest.parquet",
                    settings={"grid_queries": 4, "grid_k": 3, "grid_seed": 0}, root=tmp_path, model="m",
                    ranking="r", grid=tmp_path / "grid.png", sidecar=tmp_path / "grid.tsv",
                    curve_png=tmp_path / "recall.png")
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "recall.png").stat().st_size > 1000
