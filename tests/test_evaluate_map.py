import numpy as np
import pandas as pd
import pytest

from conftest import neighbours_from
from vprflow.errors import InputError
from vprflow.metrics.average_precision import average_precision, plain_map, revisited_map
from vprflow.metrics.precision import precision_at_k
from vprflow.metrics.recall import rank_changes, recall_curve
from vprflow.metrics.votes import place_vote_accuracy, place_votes


def ground_truth_from(labels: dict[str, dict[str, str]]) -> pd.DataFrame:
    rows = [(query, db_id, label) for query, by_db in labels.items() for db_id, label in by_db.items()]
    return pd.DataFrame(rows, columns=["query_id", "db_id", "label"])


# --------------------------------------------------------------------------- average_precision


def test_ap_removes_interleaved_junk_before_the_trapezoid_rule():
    # junk-free ranking: [a, b, c, d, e]; positives a, c, e at p = 1, 3, 5; npos = 3
    #   p=1, i=1: (P(0)=1   + P(1)=1/1) / 2 = 1
    #   p=3, i=2: (P(2)=1/2 + P(3)=2/3) / 2 = 7/12
    #   p=5, i=3: (P(4)=2/4 + P(5)=3/5) / 2 = 11/20
    # AP = (1 + 7/12 + 11/20) / 3 = (60 + 35 + 33) / 60 / 3 = 32/45
    ranked = ["a", "j1", "b", "c", "j2", "d", "e"]
    assert average_precision(ranked, {"a", "c", "e"}, {"j1", "j2"}) == pytest.approx(32 / 45)


def test_ap_counts_positives_beyond_k_as_not_retrieved():
    # a at p=2 (i=1): (P(1)=0/1 + P(2)=1/2) / 2 = 1/4; b never retrieved; npos = 2 -> AP = 1/8
    assert average_precision(["x", "a", "y"], {"a", "b"}) == pytest.approx(1 / 8)


def test_ap_is_nan_when_every_positive_is_junk():
    assert np.isnan(average_precision(["a", "b"], {"a"}, {"a"}))


def test_ap_of_a_perfect_ranking_is_one():
    assert average_precision(["a", "b", "c"], {"a", "b"}) == pytest.approx(1.0)


# --------------------------------------------------------------------------- plain_map


@pytest.fixture
def plain_case():
    neighbours = neighbours_from(
        {
            "q1": ["a", "j1", "b", "c", "e"],
            "q2": ["x", "y", "p", "z", "w"],
            "q3": ["a", "b", "c", "d", "e"],
            "q4": ["a", "b", "c", "d", "e"],
        }
    )
    ground_truth = ground_truth_from(
        {
            "q1": {"a": "positive", "c": "positive", "e": "positive", "f": "positive", "j1": "junk"},
            "q2": {"p": "positive"},
            "q3": {"b": "junk"},  # only junk: excluded
            # q4: no row at all: excluded
        }
    )
    return neighbours, ground_truth


def test_plain_map_matches_hand_computed_values(plain_case):
    neighbours, ground_truth = plain_case
    metrics = plain_map(neighbours, ground_truth, ks=(1, 3, 5))
    # q1: junk-free [a, b, c, e]; positives at p = 1, 3, 4; f not retrieved; npos = 4
    #   terms: 1, (1/2 + 2/3)/2 = 7/12, (2/3 + 3/4)/2 = 17/24 -> sum 55/24 -> AP = 55/96
    # q2: p at p = 3: (0/2 + 1/3)/2 = 1/6; npos = 1 -> AP = 1/6
    # mAP = (55/96 + 16/96) / 2 = 71/192
    assert metrics.per_query_ap["q1"] == pytest.approx(55 / 96)
    assert metrics.per_query_ap["q2"] == pytest.approx(1 / 6)
    assert metrics.mean_ap == pytest.approx(71 / 192)
    assert metrics.excluded_query_ids == ("q3", "q4")
    # P@1: q1 1, q2 0 -> 1/2.  P@3: q1 [a,b,c] 2/3, q2 [x,y,p] 1/3 -> 1/2.
    # P@5: q1 has only 4 junk-free rows, 3 positives -> 3/5; q2 1/5 -> 2/5
    assert metrics.precision_at == pytest.approx({1: 1 / 2, 3: 1 / 2, 5: 2 / 5})
    # R@1: q1 1/4, q2 0 -> 1/8.  R@3: q1 2/4, q2 1 -> 3/4.  R@5: q1 3/4, q2 1 -> 7/8
    assert metrics.recall_at == pytest.approx({1: 1 / 8, 3: 3 / 4, 5: 7 / 8})
    row = metrics.as_row()
    assert row["n_queries"] == 2 and row["n_excluded"] == 2 and row["mP@3"] == pytest.approx(0.5)


def test_plain_map_is_independent_of_row_order(plain_case):
    neighbours, ground_truth = plain_case
    shuffled = neighbours.sample(frac=1.0, random_state=3)
    assert plain_map(shuffled, ground_truth, ks=(1,)).mean_ap == pytest.approx(71 / 192)


def test_per_query_ap_agrees_with_average_precision(plain_case):
    neighbours, ground_truth = plain_case
    metrics = plain_map(neighbours, ground_truth, ks=(1,))
    expected = average_precision(["a", "j1", "b", "c", "e"], {"a", "c", "e", "f"}, {"j1"})
    assert metrics.per_query_ap["q1"] == pytest.approx(expected)


def test_bad_inputs_are_named(plain_case):
    neighbours, ground_truth = plain_case
    with pytest.raises(InputError, match="label"):
        plain_map(neighbours, ground_truth.assign(label="maybe"), ks=(1,))
    with pytest.raises(InputError, match="score"):
        plain_map(neighbours.drop(columns="score"), ground_truth, ks=(1,))
    with pytest.raises(InputError, match="q9"):
        plain_map(neighbours, pd.concat([ground_truth, ground_truth_from({"q9": {"a": "positive"}})]), ks=(1,))
    with pytest.raises(InputError, match="must be positive"):
        plain_map(neighbours, ground_truth, ks=(0,))
    with pytest.raises(InputError, match="'a'.*'q1'"):
        plain_map(pd.concat([neighbours, neighbours.head(1)]), ground_truth, ks=(1,))


# --------------------------------------------------------------------------- revisited_map


def test_revisited_protocols_match_hand_computed_values():
    neighbours = neighbours_from(
        {
            "q1": ["h1", "e1", "j1", "x", "e2", "h2"],
            "q2": ["e3", "a", "b", "c", "d", "f"],
        }
    )
    ground_truth = ground_truth_from(
        {
            "q1": {"e1": "easy", "e2": "easy", "h1": "hard", "h2": "hard", "h3": "hard", "j1": "junk"},
            "q2": {"e3": "easy"},
        }
    )
    result = revisited_map(neighbours, ground_truth, ks=(1, 5))

    # Easy (junk = j1, h1, h2, h3). q1 junk-free [e1, x, e2]: e at p=1, 3; npos = 2
    #   AP = (1 + (1/2 + 2/3)/2) / 2 = (1 + 7/12) / 2 = 19/24
    #   P@1 = 1, P@5 = 2/5 (3 rows left, 2 positive), R@1 = 1/2, R@5 = 1
    # q2: e3 at p=1 -> AP = 1, P@1 = 1, P@5 = 1/5, R@1 = R@5 = 1
    easy = result["easy"]
    assert easy.per_query_ap["q1"] == pytest.approx(19 / 24)
    assert easy.mean_ap == pytest.approx((19 / 24 + 1) / 2)
    assert easy.precision_at == pytest.approx({1: 1.0, 5: (2 / 5 + 1 / 5) / 2})
    assert easy.recall_at == pytest.approx({1: (1 / 2 + 1) / 2, 5: 1.0})
    assert easy.excluded_query_ids == ()

    # Medium (junk = j1). q1 junk-free [h1, e1, x, e2, h2]; positives at p = 1, 2, 4, 5; npos = 5 (h3 missed)
    #   p=1: (1 + 1)/2 = 1;  p=2: (1/1 + 2/2)/2 = 1;  p=4: (2/3 + 3/4)/2 = 17/24;  p=5: (3/4 + 4/5)/2 = 31/40
    #   sum = 2 + 17/24 + 31/40 = 209/60 -> AP = 209/300
    #   P@1 = 1, P@5 = 4/5, R@1 = 1/5, R@5 = 4/5;  q2 as in Easy
    medium = result["medium"]
    assert medium.per_query_ap["q1"] == pytest.approx(209 / 300)
    assert medium.mean_ap == pytest.approx((209 / 300 + 1) / 2)
    assert medium.precision_at == pytest.approx({1: 1.0, 5: (4 / 5 + 1 / 5) / 2})
    assert medium.recall_at == pytest.approx({1: (1 / 5 + 1) / 2, 5: (4 / 5 + 1) / 2})

    # Hard (junk = j1, e1, e2, e3). q1 junk-free [h1, x, h2]: h at p = 1, 3; npos = 3 (h3 missed)
    #   AP = (1 + 7/12) / 3 = 19/36;  P@1 = 1, P@5 = 2/5, R@1 = 1/3, R@5 = 2/3
    # q2 has no hard positive: excluded from every Hard mean
    hard = result["hard"]
    assert hard.mean_ap == pytest.approx(19 / 36)
    assert hard.precision_at == pytest.approx({1: 1.0, 5: 2 / 5})
    assert hard.recall_at == pytest.approx({1: 1 / 3, 5: 2 / 3})
    assert hard.excluded_query_ids == ("q2",)
    assert list(hard.per_query_ap.index) == ["q1"]


def test_toolkit_precision_divides_by_the_last_positive_retrieved(plain_case):
    """The Revisited toolkit's P@k divides by k' = min(k, position of the last positive retrieved)."""
    neighbours, ground_truth = plain_case
    metrics = plain_map(neighbours, ground_truth, ks=(1, 3, 5))
    # q1: junk-free [a, b, c, e], positives at p = 1, 3, 4 (f not retrieved): p_last = 4
    #   k=1: k'=1 -> 1/1;  k=3: k'=3 -> 2/3;  k=5: k'=4 -> 3/4   (plain P@5 = 3/5)
    # q2: its one positive at p = 3: p_last = 3
    #   k=1: k'=1 -> 0/1;  k=3: k'=3 -> 1/3;  k=5: k'=3 -> 1/3   (plain P@5 = 1/5)
    assert metrics.toolkit_precision_at == pytest.approx({1: 1 / 2, 3: 1 / 2, 5: (3 / 4 + 1 / 3) / 2})
    assert metrics.precision_at[5] == pytest.approx(2 / 5)  # the plain column is unchanged beside it
    row = metrics.as_row()
    assert list(row)[:7] == ["mAP", "mP@1", "mP@3", "mP@5", "mP@1_toolkit", "mP@3_toolkit", "mP@5_toolkit"]


def test_toolkit_precision_of_a_lone_top_positive_and_of_a_miss():
    neighbours = neighbours_from({"q1": ["p", "x", "y", "z"], "q2": ["x", "y", "z", "w"]})
    ground_truth = ground_truth_from({"q1": {"p": "positive"}, "q2": {"p": "positive"}})
    metrics = plain_map(neighbours, ground_truth, ks=(1, 4))
    # q1: one positive at p = 1: the toolkit gives 1 at every k (plain: 1/k); q2 retrieves none: 0 in both
    assert metrics.toolkit_precision_at == pytest.approx({1: 1 / 2, 4: 1 / 2})
    assert metrics.precision_at == pytest.approx({1: 1 / 2, 4: 1 / 8})
    # Revisited protocols too: q1's easy image at p = 2 after its junk is deleted (k' = 2 at k = 4)
    revisited = revisited_map(neighbours_from({"q1": ["j", "x", "e", "y", "z"]}),
                              ground_truth_from({"q1": {"e": "easy", "j": "junk"}}), ks=(1, 4))
    assert revisited["easy"].toolkit_precision_at == pytest.approx({1: 0.0, 4: 1 / 2})
    assert revisited["easy"].precision_at == pytest.approx({1: 0.0, 4: 1 / 4})


# --------------------------------------------------------------------------- precision@k, place vote, recall@N


def test_precision_at_k_follows_rows_through_reordering():
    neighbours = neighbours_from({"q1": ["a", "b", "c", "d"], "q2": ["e", "f", "g", "h"]})
    positive = np.array([True, False, True, True, False, False, False, True])
    # P@2: q1 [a+, b-] 1/2; q2 [e-, f-] 0 -> 1/4.  P@4: q1 3/4, q2 1/4 -> 1/2
    assert precision_at_k(neighbours, positive, 2) == pytest.approx(1 / 4)
    assert precision_at_k(neighbours, positive, 4) == pytest.approx(1 / 2)
    shuffled = neighbours.sample(frac=1.0, random_state=0)
    flags = pd.Series(positive, index=neighbours.index).loc[shuffled.index]
    assert precision_at_k(shuffled, flags, 2) == pytest.approx(1 / 4)


def test_place_vote_takes_the_majority_and_breaks_ties_by_best_rank():
    neighbours = neighbours_from({"q1": ["d1", "d2", "d3", "d4", "d5"], "q2": ["d5", "d2", "d3", "d1", "d4"]})
    db_places = {"d1": "A", "d2": "B", "d3": "B", "d4": "A", "d5": "C"}
    query_places = {"q1": "A", "q2": "B"}
    # q1 top 3: A(d1), B(d2, d3) -> B (wrong).  top 4: A 2 votes best pos 0, B 2 votes best pos 1 -> A (right)
    # q2 top 3: C(d5), B(d2, d3) -> B (right).  top 4: C 1, B 2, A 1 -> B (right)
    assert place_vote_accuracy(neighbours, query_places, db_places, 1) == pytest.approx(1 / 2)  # q1 A, q2 C
    assert place_vote_accuracy(neighbours, query_places, db_places, 3) == pytest.approx(1 / 2)
    assert place_vote_accuracy(neighbours, query_places, db_places, 4) == pytest.approx(1.0)
    votes = place_votes(neighbours, db_places, 4).set_index(["query_id", "place"])
    assert votes.loc[("q1", "A"), "votes"] == 2 and votes.loc[("q1", "A"), "place_rank"] == 0
    with pytest.raises(InputError, match="d5"):
        place_vote_accuracy(neighbours, query_places, {"d1": "A", "d2": "B", "d3": "B", "d4": "A"}, 3)


def test_recall_curve_counts_first_positive_and_skips_queries_without_positives():
    neighbours = neighbours_from(
        {"q1": ["a", "b", "c"], "q2": ["d", "e", "f"], "q3": ["g", "h", "i"], "q4": ["a", "b", "c"]}
    )
    ground_truth = ground_truth_from(
        {
            "q1": {"b": "positive", "c": "positive"},  # first hit at rank 1
            "q2": {"d": "positive"},  # first hit at rank 0
            "q3": {"z": "positive"},  # positive never retrieved
            # q4: no positives -> left out
        }
    )
    # R@1 = 1/3 (q2), R@2 = 2/3 (q1, q2), R@3 = 2/3
    np.testing.assert_allclose(recall_curve(neighbours, ground_truth, 3), [1 / 3, 2 / 3, 2 / 3])
    # Beyond the lists (3 rows each) nothing more is found: R@4 = R@3.
    np.testing.assert_allclose(recall_curve(neighbours, ground_truth, 4), [1 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_rank_changes_compare_the_first_positive_with_the_ranking_re_ranked():
    base = neighbours_from({"q1": ["x", "p", "y"], "q2": ["p", "x"], "q3": ["x", "y"], "q4": ["x", "y"],
                            "q5": ["x", "y"], "q6": ["p", "x"]})
    reranked = neighbours_from({"q1": ["p", "x", "y"],  # first positive 1 -> 0: improved
                                "q2": ["x", "p"],  # 0 -> 1: worse
                                "q3": ["y", "x"],  # none before, none after: unchanged
                                "q4": ["p", "x"],  # none -> 0 (fusion can bring a new image in): improved
                                "q5": ["y", "x"],  # no positive at all: not counted
                                "q6": ["p", "y"]})  # 0 -> 0, the rest reordered: unchanged
    truth = ground_truth_from({q: {"p": "positive"} for q in ("q1", "q2", "q3", "q4", "q6")})
    assert rank_changes(reranked, base, truth) == {"improved": 2, "worse": 1}
    assert rank_changes(base, reranked, truth) == {"improved": 1, "worse": 2}
