"""Pose assignment end to end on a hand-made map: both methods, their error summaries, and
the boundaries (an error exactly at a threshold, a neighbour exactly at the radius)."""

import numpy as np
import pandas as pd
import pytest

from vprflow.datasets import normalise_listing
from vprflow.errors import InputError
from vprflow.pose import assign_poses, consensus_pose, pose_error_summary

#            Q1 (0, 0)                          Q2 (100, 0)          Q3 (no position)
# D1 (3, 4): 5 m from Q1      D3 (6, 0): 5 m from D1      D2 (100, 1), D4 (101, 0): 1.41 m apart
POSITIONS = {"Q1": (0.0, 0.0), "Q2": (100.0, 0.0), "Q3": (np.nan, np.nan),
             "D1": (3.0, 4.0), "D2": (100.0, 1.0), "D3": (6.0, 0.0), "D4": (101.0, 0.0)}


def images() -> pd.DataFrame:
    table = normalise_listing(pd.DataFrame({"path": [f"{i}.jpg" for i in POSITIONS], "role": "both",
                                            "x": [p[0] for p in POSITIONS.values()],
                                            "y": [p[1] for p in POSITIONS.values()],
                                            "yaw": [0, 0, 0, 10, 20, 30, 40]}))
    table.insert(0, "image_id", list(POSITIONS))
    return table


def ranked(lists: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    rows = [(q, rank, d, np.float32(s)) for q, results in lists.items() for rank, (d, s) in enumerate(results)]
    return pd.DataFrame(rows, columns=["query_id", "rank", "db_id", "score"])


NEIGHBOURS = ranked({
    "Q1": [("D1", 0.9), ("D3", 0.8), ("D2", 0.1)],
    "Q2": [("D1", 0.5), ("D2", 0.4), ("D4", 0.3)],  # an aliased top-1, outvoted by D2 + D4
    "Q3": [("D2", 0.9), ("D4", 0.8), ("D1", 0.1)],
})
# Consensus with k = 3, radius 10 m:
#   Q1: D1 and D3 (5 m apart) support each other: 0.9 + 0.8 = 1.7 for both centres, the tie goes
#       to D1 (rank 0); estimate (0.9 (3, 4) + 0.8 (6, 0)) / 1.7 = (7.5, 3.6) / 1.7
#   Q2: centre D1 has 0.5, centres D2 and D4 have 0.4 + 0.3 = 0.7: D2 wins;
#       estimate (0.4 (100, 1) + 0.3 (101, 0)) / 0.7 = (100 + 3/7, 4/7), 5/7 m from Q2
#   Q3: D2 + D4 = 1.7 wins; no true position, so no error
Q1_ESTIMATE = np.array([7.5, 3.6]) / 1.7
Q2_ESTIMATE = np.array([100 + 3 / 7, 4 / 7])
TOP1_ERRORS = [5.0, np.hypot(97.0, 4.0)]  # Q1 -> D1, Q2 -> D1
CONSENSUS_ERRORS = [np.hypot(*Q1_ESTIMATE), 5 / 7]


def test_top1_assigns_the_best_match_and_summarises_queries_with_a_true_position():
    poses, summaries = assign_poses(NEIGHBOURS, images(), "top1", k=3, radius_m=10.0)
    assert list(poses["method"]) == ["top1"] * 3 and list(poses["db_id"]) == ["D1", "D1", "D2"]
    assert poses[["x", "y"]].to_numpy().tolist() == [[3.0, 4.0], [3.0, 4.0], [100.0, 1.0]]
    assert list(poses["yaw"]) == [10, 10, 20] and list(poses["query_path"]) == ["Q1.jpg", "Q2.jpg", "Q3.jpg"]
    np.testing.assert_allclose(poses["error_m"].to_numpy()[:2], TOP1_ERRORS)
    assert np.isnan(poses["error_m"].iloc[2])
    top1, consensus = summaries
    # Q3 has no true position: 2 errors each. Q1's top-1 error is exactly 5 m: within 5 m.
    assert top1 == pytest.approx({"method": "top1", "n": 2, "n_missing": 0, "median_m": np.mean(TOP1_ERRORS),
                                  "p90_m": TOP1_ERRORS[0] + 0.9 * (TOP1_ERRORS[1] - TOP1_ERRORS[0]),
                                  "within_5m": 0.5, "within_10m": 0.5, "within_25m": 0.5})
    assert consensus["method"] == "consensus" and consensus["n"] == 2
    assert consensus["median_m"] == pytest.approx(np.mean(CONSENSUS_ERRORS))
    assert consensus["within_5m"] == 1.0


def test_consensus_replaces_positions_and_errors_and_counts_the_agreeing():
    poses, _ = assign_poses(NEIGHBOURS, images(), "consensus", k=3, radius_m=10.0)
    assert list(poses["method"]) == ["consensus"] * 3
    assert list(poses["db_id"]) == ["D1", "D1", "D2"]  # the source image stays the top-1
    np.testing.assert_allclose(poses[["x", "y"]].to_numpy()[:2], [Q1_ESTIMATE, Q2_ESTIMATE])
    np.testing.assert_allclose(poses[["x", "y"]].to_numpy()[2], [(0.9 * 100 + 0.8 * 101) / 1.7, 0.9 / 1.7])
    np.testing.assert_allclose(poses["error_m"].to_numpy()[:2], CONSENSUS_ERRORS)
    assert list(poses["n_agreeing"]) == [2, 2, 2]
    with pytest.raises(InputError, match="unknown 'median'"):
        assign_poses(NEIGHBOURS, images(), "median", k=3, radius_m=10.0)


def test_a_neighbour_exactly_at_the_radius_agrees():
    # D1 and D3 are exactly 5 m apart (3-4-5): with radius 5 they form one cluster (1.7),
    # with radius 4.99 each stands alone and D1 (0.9) wins on its own.
    xy = pd.DataFrame({"x": [3.0, 6.0], "y": [4.0, 0.0]}, index=["D1", "D3"])
    neighbours = ranked({"Q1": [("D1", 0.9), ("D3", 0.8)]})
    together = consensus_pose(neighbours, xy, k=2, radius_m=5.0).iloc[0]
    assert together["n_agreeing"] == 2 and together[["x", "y"]].tolist() == pytest.approx(list(Q1_ESTIMATE))
    alone = consensus_pose(neighbours, xy, k=2, radius_m=4.99).iloc[0]
    assert alone["n_agreeing"] == 1 and alone[["x", "y"]].tolist() == pytest.approx([3.0, 4.0])


def test_an_error_exactly_at_a_threshold_is_within_it():
    # errors [5, 10, 25.5]: within 5 m 1/3, within 10 m 2/3, within 25 m 2/3
    summary = pose_error_summary([5.0, 10.0, 25.5], thresholds_m=(5, 10, 25))
    assert [summary[f"within_{t}m"] for t in (5, 10, 25)] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert summary["median_m"] == 10.0 and summary["p90_m"] == pytest.approx(10 + 0.8 * 15.5)


def test_output_columns_and_queries_without_any_true_position():
    poses, summaries = assign_poses(NEIGHBOURS[NEIGHBOURS["query_id"] == "Q3"], images(), "top1", k=3, radius_m=10.0)
    assert list(poses.columns) == ["method", "query_id", "query_path", "db_id", "db_path", "score", "x", "y", "lat",
                                   "lon", "yaw", "error_m"]
    assert poses.loc[0, "db_path"] == "D2.jpg" and poses.loc[0, "score"] == pytest.approx(0.9)
    assert summaries == [{"method": "top1", "n": 0}, {"method": "consensus", "n": 0}]  # nothing to summarise


def test_an_empty_error_list_summarises_to_nan():
    summary = pose_error_summary([], thresholds_m=(5,))
    assert summary["n"] == 0 and summary["n_missing"] == 0
    assert all(np.isnan(summary[key]) for key in ("median_m", "p90_m", "within_5m"))


def test_zero_weights_fall_back_to_equal_weights_per_query_and_radius_zero_means_same_spot():
    xy = pd.DataFrame({"x": [0.0, 3.0, 0.0, 10.0], "y": [0.0, 4.0, 0.0, 0.0]}, index=["A", "B", "A2", "C"])
    # P: scores 0 and -1 -> weights (0, 0) -> equal weights; A and B 5 m apart, radius 5: one
    #    cluster, estimate (1.5, 2). R: weights 0.6 and 0.2 (its own, not equal) -> (0.6 A + 0.2 C) / 0.8.
    neighbours = ranked({"P": [("A", 0.0), ("B", -1.0)], "R": [("A", 0.6), ("C", 0.2)]})
    result = consensus_pose(neighbours, xy, k=2, radius_m=10.0).set_index("query_id")
    assert result.loc["P", ["x", "y"]].tolist() == pytest.approx([1.5, 2.0])
    assert result.loc["R", ["x", "y"]].tolist() == pytest.approx([0.2 * 10 / 0.8, 0.0])
    # radius 0: only images at the very same spot agree (A and A2).
    same = consensus_pose(ranked({"S": [("B", 0.3), ("A", 0.2), ("A2", 0.2)]}), xy, k=3, radius_m=0.0).iloc[0]
    assert same["n_agreeing"] == 2 and same[["x", "y"]].tolist() == pytest.approx([0.0, 0.0])


def test_a_position_table_without_y_is_named():
    with pytest.raises(InputError, match=r"db_xy lacks column\(s\) \['y'\]"):
        consensus_pose(ranked({"Q": [("A", 1.0)]}), pd.DataFrame({"x": [0.0]}, index=["A"]), k=1, radius_m=1.0)
