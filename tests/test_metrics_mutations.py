"""Recall@N at its boundaries: a hit exactly at rank N - 1, several positives per query,
the easy/hard/junk labels, and the validation recall that picks the best epoch.

Each expected value is counted by hand in the comment above it; a one-off bug (``<= n``,
the last hit instead of the first, a label dropped, the anchor left in its own ranking)
changes at least one of them.
"""

import numpy as np
import pandas as pd
import pytest

from conftest import neighbours_from
from vprflow.errors import InputError
from vprflow.metrics.precision import leave_one_out_precision
from vprflow.metrics.recall import chance_recall, first_hit_ranks, recall_at, recall_curve
from vprflow.metrics.votes import place_vote_accuracy
from vprflow.train.pairs import Relations, validation_metrics


def truth_from(labels: dict[str, dict[str, str]]) -> pd.DataFrame:
    rows = [(query, db_id, label) for query, by_db in labels.items() for db_id, label in by_db.items()]
    return pd.DataFrame(rows, columns=["query_id", "db_id", "label"])


RANKED = neighbours_from(
    {
        "q_rank0": ["p", "x1", "x2", "x3", "x4"],
        "q_rank1": ["x1", "p", "x2", "p2", "x4"],  # two positives: the first at rank 1, another at rank 3
        "q_rank2": ["x1", "x2", "p", "x3", "x4"],
        "q_missed": ["x1", "x2", "x3", "x4", "x5"],  # its positive is not among the 5 retrieved
    }
)
TRUTH = truth_from(
    {
        "q_rank0": {"p": "positive"},
        "q_rank1": {"p": "positive", "p2": "positive"},
        "q_rank2": {"p": "positive"},
        "q_missed": {"p": "positive"},
    }
)


def test_recall_counts_a_first_hit_at_rank_n_minus_one_in_r_at_n_and_not_in_r_at_n_minus_one():
    # First hits (0-based): q_rank0 0, q_rank1 1, q_rank2 2, q_missed none; N counts ranks 0..N-1.
    # R@1 = 1/4, R@2 = 2/4, R@3 = 3/4, R@5 = 3/4, over 4 queries with a positive.
    assert recall_at(RANKED, TRUTH, [1, 2, 3, 5]) == {"R@1": 0.25, "R@2": 0.5, "R@3": 0.75, "R@5": 0.75,
                                                      "n_queries": 4}
    # The same numbers from the curve, which finds the first hit by position instead of rank.
    np.testing.assert_allclose(recall_curve(RANKED, TRUTH, 5), [0.25, 0.5, 0.75, 0.75, 0.75])


def test_recall_takes_the_first_of_several_positives():
    # q_rank1's positives sit at ranks 1 and 3: it counts from R@2 on, not from R@4.
    ranks = first_hit_ranks(RANKED, TRUTH)
    assert ranks.to_dict() == {"q_rank0": 0.0, "q_rank1": 1.0, "q_rank2": 2.0, "q_missed": np.inf}
    only = RANKED[RANKED["query_id"] == "q_rank1"]
    assert recall_at(only, TRUTH[TRUTH["query_id"] == "q_rank1"], [1, 2, 3, 4]) == {
        "R@1": 0.0, "R@2": 1.0, "R@3": 1.0, "R@4": 1.0, "n_queries": 1}


def test_recall_counts_easy_and_hard_as_positives_and_never_junk():
    neighbours = neighbours_from(
        {
            "q_hard": ["h", "x1", "x2"],  # its only positive is hard, at rank 0
            "q_easy": ["j", "x1", "e"],  # junk at rank 0 is no hit; easy at rank 2
            "q_junk": ["j", "x1", "x2"],  # only junk: not a query with a positive
        }
    )
    truth = truth_from({"q_hard": {"h": "hard"}, "q_easy": {"j": "junk", "e": "easy"}, "q_junk": {"j": "junk"}})
    # Queries with a positive: q_hard (first hit 0) and q_easy (first hit 2).
    # R@1 = 1/2 (q_hard), R@2 = 1/2, R@3 = 2/2.
    assert recall_at(neighbours, truth, [1, 2, 3]) == {"R@1": 0.5, "R@2": 0.5, "R@3": 1.0, "n_queries": 2}
    # Chance recall counts the same positives: one each among D = 4 -> R@1 = 1/4 for both.
    assert chance_recall(truth, 4, [1])["R@1"] == pytest.approx(0.25)


def test_chance_recall_with_several_positives_matches_the_hypergeometric_count():
    # p = 2 positives among D = 5: P(none in the first 2) = C(3,2)/C(5,2) = 3/10 -> R@2 = 7/10.
    truth = truth_from({"q": {"a": "positive", "b": "easy"}})
    assert chance_recall(truth, 5, [2])["R@2"] == pytest.approx(0.7)


def test_without_any_positive_recall_is_undefined_not_zero():
    # Only junk: no query has a positive, so no mean exists (NaN), and the curve says why.
    truth = truth_from({"q_rank0": {"p": "junk"}})
    result = recall_at(RANKED, truth, [1, 5])
    assert np.isnan(result["R@1"]) and np.isnan(result["R@5"]) and result["n_queries"] == 0
    assert np.isnan(chance_recall(truth, 10, [1])["R@1"])
    with pytest.raises(InputError, match=r"no \['positive'\] rows: recall@N is undefined"):
        recall_curve(RANKED, truth, 3)


# --------------------------------------------------------------------------- validation recall (training)


def unit_vectors_at(degrees) -> np.ndarray:
    radians = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def images_with_places(places) -> pd.DataFrame:
    n = len(places)
    return pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)], "role": [""] * n, "place": places,
                         "x": np.nan, "y": np.nan, "lat": np.nan, "lon": np.nan}).astype({"place": "string"})


def test_validation_metrics_rank_each_anchor_against_the_others_only():
    # Descriptors are unit vectors at these angles, so inner products order by angle difference:
    #   image:  0    1    2    3    4    5
    #   angle:  0   10   25   45   70  100 degrees
    # Places: {0, 2} = P, {3, 4} = Q; 1 and 5 are alone (no positive: not anchors).
    # Ranking of each anchor over the other images, nearest first, and its first positive:
    #   0: 1(10) 2(25) ...            -> 2 at position 1
    #   2: 1(15) 3(20) 0(25) ...      -> 0 at position 2
    #   3: 2(20) 4(25) ...            -> 4 at position 1
    #   4: 3(25) ...                  -> 3 at position 0
    # R@1 = 1/4, R@2 = 3/4, R@3 = 4/4 (anchor 2's hit sits exactly at the last position counted).
    relations = Relations(images_with_places(["P", "x", "P", "Q", "Q", "y"]), 10, 25)
    assert list(relations.anchors()) == [0, 2, 3, 4]
    descriptors = unit_vectors_at([0, 10, 25, 45, 70, 100])
    # One positive each, AP by the Revisited rule (metrics.average_precision): a positive at
    # 1-based position p > 1 gives (P(p-1) + P(p)) / 2 = (0 + 1/p) / 2, at p = 1 it gives 1.
    # Positions 2, 3, 2, 1: (1/4 + 1/6 + 1/4 + 1) / 4 = 5/12.
    found = validation_metrics(descriptors, relations, ns=(1, 2, 3))
    assert found == pytest.approx({"mAP": 5 / 12, "R@1": 0.25, "R@2": 0.75, "R@3": 1.0})
    # Each anchor finds itself first (inner product 1); were it left in, every hit would move
    # one place down: R@1 would be 0.


# --------------------------------------------------------------------------- votes and leave-one-out precision


def test_place_vote_names_queries_without_a_place():
    neighbours = neighbours_from({"q1": ["d1"], "q2": ["d1"]})
    with pytest.raises(InputError, match=r"query_places has no place for 1 query id\(s\), e.g. \['q2'\]"):
        place_vote_accuracy(neighbours, {"q1": "A"}, {"d1": "A"}, 1)


def test_leave_one_out_precision_hand_computed():
    # Unit vectors at 0, 10, 20, 90 and 100 degrees, labels A A B B B (and one unlabelled image at
    # 5 degrees, which takes no part). Nearest other labelled image(s), k = 2:
    #   0: 10(A) 20(B) -> 1/2    10: 0(A) 20(B) -> 1/2    20: 10(A) 0(A) -> 0
    #   90: 100(B) 20(B) -> 1    100: 90(B) 20(B) -> 1     mean = 3/5, over 5 images
    descriptors = unit_vectors_at([0, 10, 20, 90, 100, 5])
    labels = pd.Series(["A", "A", "B", "B", "B", None])
    assert leave_one_out_precision(descriptors, labels, k=2) == (pytest.approx(3 / 5), 5)
    # k above the 4 others is cut to 4, every other image: A's share 1/4 each, B's 2/4 each;
    # mean = (1/4 + 1/4 + 2/4 + 2/4 + 2/4) / 5 = 2/5
    assert leave_one_out_precision(descriptors, labels, k=9) == (pytest.approx(2 / 5), 5)
    value, count = leave_one_out_precision(descriptors, pd.Series(["A", None, None, None, None, None]), k=2)
    assert np.isnan(value) and count == 1  # one labelled image has no other to compare with
